// CPU references in f64 for matmul, linear and LoRA linear (forward and backward).
// Arrays are flat row-major; shapes are passed explicitly. Float64 throughout so that finite
// differences (test/gpu.matmul.test.ts) can check the backward formulas to ~1e-8.

export type Num = ArrayLike<number>;

export interface RefMatmulDims {
  batch: number;
  M: number;
  K: number;
  N: number;
  transA?: boolean; // a stored (K, M) per batch
  transB?: boolean; // b stored (N, K) per batch
  aShared?: boolean; // a is 2-D, broadcast over the batch
  bShared?: boolean; // b is 2-D, broadcast over the batch
}

/** alpha·op(A)·op(B) + (c ?? 0), (batch, M, N). */
export function refMatmul(a: Num, b: Num, d: RefMatmulDims, alpha = 1, c?: Num): Float64Array {
  const { batch, M, K, N, transA = false, transB = false } = d;
  const out = new Float64Array(batch * M * N);
  for (let z = 0; z < batch; z++) {
    const ao = d.aShared ? 0 : z * M * K;
    const bo = d.bShared ? 0 : z * K * N;
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = a[ao + (transA ? k * M + i : i * K + k)]!;
          const bv = b[bo + (transB ? j * K + k : k * N + j)]!;
          s += av * bv;
        }
        const o = z * M * N + i * N + j;
        out[o] = alpha * s + (c ? c[o]! : 0);
      }
    }
  }
  return out;
}

/** y = x·Wᵀ + b: x (n, inF), w (outF, inF), bias (outF) → (n, outF). */
export function refLinear(x: Num, w: Num, bias: Num | null, n: number, inF: number, outF: number): Float64Array {
  const y = refMatmul(x, w, { batch: 1, M: n, K: inF, N: outF, transB: true });
  if (bias) for (let i = 0; i < n; i++) for (let j = 0; j < outF; j++) y[i * outF + j] += bias[j]!;
  return y;
}

/** Column sums of x (rows, cols). */
export function refColSum(x: Num, rows: number, cols: number): Float64Array {
  const out = new Float64Array(cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j] += x[i * cols + j]!;
  return out;
}

/** Gradients of y = x·Wᵀ + b given dy (n, outF): dx = dy·W, dW = dyᵀ·x, db = Σ_rows dy. */
export function refLinearBackward(dy: Num, x: Num, w: Num, n: number, inF: number, outF: number) {
  return {
    dx: refMatmul(dy, w, { batch: 1, M: n, K: outF, N: inF }),
    dw: refMatmul(dy, x, { batch: 1, M: outF, K: n, N: inF, transA: true }),
    db: refColSum(dy, n, outF),
  };
}

export interface RefLora {
  a: Num; // (r, k)
  b: Num; // (d, r)
  scale: number;
  bias?: Num | null; // (d)
}

/** y = x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ + loraBias; h = x·Aᵀ. x (n, k), w (d, k). */
export function refLoraLinear(x: Num, w: Num, bias: Num | null, lora: RefLora, n: number, k: number, d: number, r: number) {
  const h = refMatmul(x, lora.a, { batch: 1, M: n, K: k, N: r, transB: true });
  const y = refLinear(x, w, bias, n, k, d);
  const up = refMatmul(h, lora.b, { batch: 1, M: n, K: r, N: d, transB: true }, lora.scale);
  for (let i = 0; i < n * d; i++) y[i] += up[i]!;
  if (lora.bias) for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) y[i * d + j] += lora.bias[j]!;
  return { y, h };
}

/**
 * Gradients of the LoRA linear for upstream dy (n, d); W and the base bias are frozen, so dW is
 * never formed: dB = s·dyᵀ·h, dh = s·dy·B, dA = dhᵀ·x, dx = dy·W + dh·A, dBias = Σ_rows dy.
 */
export function refLoraLinearBackward(dy: Num, x: Num, w: Num, lora: RefLora, n: number, k: number, d: number, r: number) {
  const h = refMatmul(x, lora.a, { batch: 1, M: n, K: k, N: r, transB: true });
  const dB = refMatmul(dy, h, { batch: 1, M: d, K: n, N: r, transA: true }, lora.scale);
  const dh = refMatmul(dy, lora.b, { batch: 1, M: n, K: d, N: r }, lora.scale);
  const dA = refMatmul(dh, x, { batch: 1, M: r, K: n, N: k, transA: true });
  const dx = refMatmul(dy, w, { batch: 1, M: n, K: d, N: k });
  const dxA = refMatmul(dh, lora.a, { batch: 1, M: n, K: r, N: k });
  for (let i = 0; i < n * k; i++) dx[i] += dxA[i]!;
  return { dx, dA, dB, dBias: refColSum(dy, n, d), dh };
}
