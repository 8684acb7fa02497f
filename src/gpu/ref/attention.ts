// CPU reference for causal grouped-query attention, forward and backward, in f64 (or whatever
// precision the caller's arrays hold: Float64Array for finite differences).
//
// Layouts (row-major): q, out, dOut (B,T,H,D); k, v (B,T,Hkv,D); keyMask (B,T), 0 = padding key.
// Query head h reads kv head floor(h / (H/Hkv)) (the HF Llama `repeat_kv` convention).
// A query row whose every visible key is masked has output 0 and contributes no gradient.
export type Arr = Float64Array | Float32Array | number[];

export interface AttnDims {
  B: number;
  T: number;
  H: number;
  Hkv: number;
  D: number;
}

export interface AttnRefOpts {
  scale?: number;
  keyMask?: ArrayLike<number> | null;
}

function checkDims(q: Arr, k: Arr, v: Arr, { B, T, H, Hkv, D }: AttnDims): void {
  if (H % Hkv !== 0) throw new Error(`H ${H} not a multiple of Hkv ${Hkv}`);
  if (q.length !== B * T * H * D || k.length !== B * T * Hkv * D || v.length !== B * T * Hkv * D) throw new Error('attentionRef: bad sizes');
}

/** Probabilities P[b,h,t,j] (B,H,T,T), zero above the diagonal and at masked keys. */
export function attentionProbsRef(q: Arr, k: Arr, dims: AttnDims, opts: AttnRefOpts = {}): Float64Array {
  const { B, T, H, Hkv, D } = dims;
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const G = H / Hkv;
  const P = new Float64Array(B * H * T * T);
  const s = new Float64Array(T);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const hk = Math.floor(h / G);
      for (let t = 0; t < T; t++) {
        let m = -Infinity;
        for (let j = 0; j <= t; j++) {
          if (opts.keyMask && opts.keyMask[b * T + j] === 0) {
            s[j] = -Infinity;
            continue;
          }
          let acc = 0;
          const qo = ((b * T + t) * H + h) * D;
          const ko = ((b * T + j) * Hkv + hk) * D;
          for (let d = 0; d < D; d++) acc += q[qo + d]! * k[ko + d]!;
          s[j] = acc * scale;
          if (s[j]! > m) m = s[j]!;
        }
        if (m === -Infinity) continue; // every visible key masked: the row stays zero
        let sum = 0;
        const po = ((b * H + h) * T + t) * T;
        for (let j = 0; j <= t; j++) {
          const p = s[j] === -Infinity ? 0 : Math.exp(s[j]! - m);
          P[po + j] = p;
          sum += p;
        }
        for (let j = 0; j <= t; j++) P[po + j]! /= sum;
      }
    }
  return P;
}

/** out (B,T,H,D) = softmax(scale·q·kᵀ + causal/pad mask)·v. */
export function attentionRef(q: Arr, k: Arr, v: Arr, dims: AttnDims, opts: AttnRefOpts = {}): Float64Array {
  checkDims(q, k, v, dims);
  const { B, T, H, Hkv, D } = dims;
  const G = H / Hkv;
  const P = attentionProbsRef(q, k, dims, opts);
  const out = new Float64Array(B * T * H * D);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const hk = Math.floor(h / G);
      for (let t = 0; t < T; t++) {
        const po = ((b * H + h) * T + t) * T;
        const oo = ((b * T + t) * H + h) * D;
        for (let j = 0; j <= t; j++) {
          const p = P[po + j]!;
          if (p === 0) continue;
          const vo = ((b * T + j) * Hkv + hk) * D;
          for (let d = 0; d < D; d++) out[oo + d]! += p * v[vo + d]!;
        }
      }
    }
  return out;
}

/**
 * Gradients of attentionRef with the full probability matrix (the textbook softmax backward):
 *   dV_j = Σ_t P_tj dO_t;  dP_tj = dO_t·V_j;  dS_tj = P_tj (dP_tj − Σ_j' P_tj' dP_tj');
 *   dQ_t = scale Σ_j dS_tj K_j;  dK_j = scale Σ_t dS_tj Q_t;
 * dK/dV of a kv head sum over the H/Hkv query heads that read it.
 */
export function attentionBackwardRef(
  dOut: Arr,
  q: Arr,
  k: Arr,
  v: Arr,
  dims: AttnDims,
  opts: AttnRefOpts = {},
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  checkDims(q, k, v, dims);
  const { B, T, H, Hkv, D } = dims;
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const G = H / Hkv;
  const P = attentionProbsRef(q, k, dims, opts);
  const dq = new Float64Array(q.length);
  const dk = new Float64Array(k.length);
  const dv = new Float64Array(v.length);
  const dP = new Float64Array(T);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const hk = Math.floor(h / G);
      for (let t = 0; t < T; t++) {
        const po = ((b * H + h) * T + t) * T;
        const qo = ((b * T + t) * H + h) * D;
        let rowDot = 0;
        for (let j = 0; j <= t; j++) {
          const vo = ((b * T + j) * Hkv + hk) * D;
          let acc = 0;
          for (let d = 0; d < D; d++) acc += dOut[qo + d]! * v[vo + d]!;
          dP[j] = acc;
          rowDot += P[po + j]! * acc;
        }
        for (let j = 0; j <= t; j++) {
          const p = P[po + j]!;
          if (p === 0) continue;
          const ko = ((b * T + j) * Hkv + hk) * D;
          const ds = p * (dP[j]! - rowDot);
          for (let d = 0; d < D; d++) {
            dq[qo + d]! += scale * ds * k[ko + d]!;
            dk[ko + d]! += scale * ds * q[qo + d]!;
            dv[ko + d]! += p * dOut[qo + d]!;
          }
        }
      }
    }
  return { dq, dk, dv };
}

/**
 * One decode step: query (B,1,H,D) against caches (B,maxT,Hkv,D), keys 0..pos-1 visible
 * (optionally minus masked ones, keyMask (B,maxT)). Returns (B,1,H,D).
 */
export function attentionDecodeRef(
  q: Arr,
  kCache: Arr,
  vCache: Arr,
  dims: { B: number; maxT: number; H: number; Hkv: number; D: number },
  pos: number,
  opts: AttnRefOpts = {},
): Float64Array {
  const { B, maxT, H, Hkv, D } = dims;
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const G = H / Hkv;
  const out = new Float64Array(B * H * D);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const hk = Math.floor(h / G);
      const s: number[] = [];
      let m = -Infinity;
      for (let j = 0; j < pos; j++) {
        if (opts.keyMask && opts.keyMask[b * maxT + j] === 0) {
          s.push(-Infinity);
          continue;
        }
        let acc = 0;
        for (let d = 0; d < D; d++) acc += q[(b * H + h) * D + d]! * kCache[((b * maxT + j) * Hkv + hk) * D + d]!;
        s.push(acc * scale);
        m = Math.max(m, acc * scale);
      }
      if (m === -Infinity) continue;
      let sum = 0;
      const p = s.map((x) => (x === -Infinity ? 0 : Math.exp(x - m)));
      for (const x of p) sum += x;
      for (let j = 0; j < pos; j++) {
        if (p[j] === 0) continue;
        for (let d = 0; d < D; d++) out[(b * H + h) * D + d]! += (p[j]! / sum) * vCache[((b * maxT + j) * Hkv + hk) * D + d]!;
      }
    }
  return out;
}
