// CPU reference: RMSNorm (Llama) and LayerNorm, forward and backward, in f64.
//   RMSNorm:   rstd = 1/sqrt(mean(x²) + eps),          y = x·rstd·w
//   LayerNorm: mean = mean(x), rstd = 1/sqrt(var + eps), y = (x − mean)·rstd·w + b   (biased variance)

type Num = ArrayLike<number>;

export function rmsnormRef(x: Num, w: Num, N: number, C: number, eps: number): { y: Float64Array; rstd: Float64Array } {
  const y = new Float64Array(N * C);
  const rstd = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[n * C + c]! ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    rstd[n] = r;
    for (let c = 0; c < C; c++) y[n * C + c] = x[n * C + c]! * r * w[c]!;
  }
  return { y, rstd };
}

/** dx = r·(dy·w) − r³/C · x · Σ(dy·w·x);  dw = Σ_rows dy·x·r. */
export function rmsnormBackwardRef(dy: Num, x: Num, w: Num, N: number, C: number, eps: number): { dx: Float64Array; dw: Float64Array } {
  const { rstd } = rmsnormRef(x, w, N, C, eps);
  const dx = new Float64Array(N * C);
  const dw = new Float64Array(C);
  for (let n = 0; n < N; n++) {
    const r = rstd[n]!;
    let s = 0;
    for (let c = 0; c < C; c++) s += dy[n * C + c]! * w[c]! * x[n * C + c]!;
    const k = (r * r * r * s) / C;
    for (let c = 0; c < C; c++) {
      const i = n * C + c;
      dx[i] = r * dy[i]! * w[c]! - k * x[i]!;
      dw[c] += dy[i]! * x[i]! * r;
    }
  }
  return { dx, dw };
}

export function layernormRef(
  x: Num,
  w: Num,
  b: Num,
  N: number,
  C: number,
  eps: number,
): { y: Float64Array; mean: Float64Array; rstd: Float64Array } {
  const y = new Float64Array(N * C);
  const mean = new Float64Array(N);
  const rstd = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    let s = 0;
    for (let c = 0; c < C; c++) s += x[n * C + c]!;
    const m = s / C;
    let v = 0;
    for (let c = 0; c < C; c++) v += (x[n * C + c]! - m) ** 2;
    const r = 1 / Math.sqrt(v / C + eps);
    mean[n] = m;
    rstd[n] = r;
    for (let c = 0; c < C; c++) y[n * C + c] = (x[n * C + c]! - m) * r * w[c]! + b[c]!;
  }
  return { y, mean, rstd };
}

/** xhat = (x − mean)·r, g = dy·w: dx = r·(g − mean(g) − xhat·mean(g·xhat)); dw = Σ dy·xhat; db = Σ dy. */
export function layernormBackwardRef(
  dy: Num,
  x: Num,
  w: Num,
  N: number,
  C: number,
  eps: number,
): { dx: Float64Array; dw: Float64Array; db: Float64Array } {
  const { mean, rstd } = layernormRef(x, w, new Float64Array(C), N, C, eps);
  const dx = new Float64Array(N * C);
  const dw = new Float64Array(C);
  const db = new Float64Array(C);
  for (let n = 0; n < N; n++) {
    const m = mean[n]!;
    const r = rstd[n]!;
    let s1 = 0;
    let s2 = 0;
    for (let c = 0; c < C; c++) {
      const i = n * C + c;
      const g = dy[i]! * w[c]!;
      s1 += g;
      s2 += g * (x[i]! - m) * r;
    }
    for (let c = 0; c < C; c++) {
      const i = n * C + c;
      const xh = (x[i]! - m) * r;
      dx[i] = r * (dy[i]! * w[c]! - s1 / C - (xh * s2) / C);
      dw[c] += dy[i]! * xh;
      db[c] += dy[i]!;
    }
  }
  return { dx, dw, db };
}
