// CPU reference: rotary position embedding on x (B, T, H, D), in f64.
//
// Position of token t is pos = posOffset + t. Pair k ∈ [0, D/2) rotates by angle pos·theta^(−2k/D),
// or pos·invFreq[k] when the model's inverse frequencies are given (RoPE scaling, src/model/rope.ts):
//   interleaved (llama2.c):        the pair is (2k, 2k+1)
//   rotate_half (HF Llama):        the pair is (k, k + D/2)
//   (a, b) → (a·cos − b·sin, a·sin + b·cos)
// The rotation is orthogonal, so the backward (vector–Jacobian product) is the rotation by −angle
// (`inverse: true`).

export interface RopeOpts {
  theta: number;
  /** Inverse frequencies (D/2); when given, theta is not used. */
  invFreq?: ArrayLike<number>;
  posOffset?: number;
  interleaved: boolean;
  inverse?: boolean;
}

/** The angle of pair k at position pos (f64). */
export function ropeAngle(pos: number, k: number, D: number, theta: number): number {
  return pos * Math.pow(theta, (-2 * k) / D);
}

export function ropeRef(x: ArrayLike<number>, B: number, T: number, H: number, D: number, opts: RopeOpts): Float64Array {
  if (D % 2 !== 0) throw new Error('rope: D must be even');
  if (opts.invFreq && opts.invFreq.length !== D / 2) throw new Error(`rope: ${opts.invFreq.length} inverse frequencies for D = ${D}`);
  const out = new Float64Array(B * T * H * D);
  const half = D / 2;
  const sign = opts.inverse ? -1 : 1;
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++) {
      const pos = (opts.posOffset ?? 0) + t;
      for (let h = 0; h < H; h++) {
        const base = ((b * T + t) * H + h) * D;
        for (let k = 0; k < half; k++) {
          const ang = opts.invFreq ? pos * opts.invFreq[k]! : ropeAngle(pos, k, D, opts.theta);
          const c = Math.cos(ang);
          const s = sign * Math.sin(ang);
          const ia = opts.interleaved ? base + 2 * k : base + k;
          const ib = opts.interleaved ? ia + 1 : ia + half;
          const a = x[ia]!;
          const bb = x[ib]!;
          out[ia] = a * c - bb * s;
          out[ib] = a * s + bb * c;
        }
      }
    }
  return out;
}
