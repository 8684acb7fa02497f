// RoPE inverse frequencies of a model, computed once on the CPU exactly as Hugging Face computes
// them in float32 (transformers' modeling_rope_utils: _compute_default_rope_parameters,
// _compute_linear_scaling_rope_parameters, _compute_dynamic_ntk_parameters,
// _compute_llama3_parameters). Every RoPE kernel (training, batch-1 generation, the paged cache,
// the fused decoders) reads these D/2 values, so a scaling changes all of them at once.
//
// f32 emulation: every tensor operation of HF's code rounds to float32 (Math.fround after each
// step); Python scalars stay float64 (`2 * math.pi`, `old_context_len / low_freq_factor`, the
// dynamic base). With a scalar operand torch converts the scalar to float32 first, and `a / t` is
// `t.reciprocal() * a`. llama2.c computes the same default frequencies: `1.0f / powf(theta, i / (float)D)`.
import type { ModelConfig, RopeScaling } from './config.ts';

const f = Math.fround;

/** HF's default inverse frequencies: 1 / base^(2i/D), i < D/2, in float32. */
export function defaultInvFreq(base: number, D: number): Float32Array {
  const out = new Float32Array(D / 2);
  // torch: arange(0, D, 2).float() / D, then (float32 base) ** that, then reciprocal.
  for (let i = 0; i < D / 2; i++) out[i] = f(1 / f(Math.pow(f(base), f((2 * i) / D))));
  return out;
}

/**
 * Inverse frequencies (D/2, float32) for head dimension D, RoPE base theta and a scaling.
 * `seqLen` matters for dynamic scaling only: HF's frequencies for a sequence of that many
 * positions (they equal the default ones up to max_position_embeddings).
 */
export function ropeInvFreq(D: number, theta: number, scaling: RopeScaling | null, maxPositionEmbeddings: number, seqLen?: number): Float32Array {
  if (!Number.isInteger(D) || D < 2 || D % 2 !== 0) throw new RangeError(`RoPE head dim ${D} must be even`);
  if (!(theta > 0)) throw new RangeError(`RoPE theta ${theta}`);
  if (scaling === null) return defaultInvFreq(theta, D);
  switch (scaling.type) {
    case 'linear': {
      const inv = defaultInvFreq(theta, D);
      const fac = f(scaling.factor);
      for (let i = 0; i < inv.length; i++) inv[i] = f(inv[i]! / fac); // inv_freq /= factor
      return inv;
    }
    case 'dynamic': {
      // Python floats (f64) up to the base; seq_len defaults to max_position_embeddings.
      const L = seqLen !== undefined && seqLen > maxPositionEmbeddings ? seqLen : maxPositionEmbeddings;
      const fac = scaling.factor;
      const base = theta * Math.pow((fac * L) / maxPositionEmbeddings - (fac - 1), D / (D - 2));
      return defaultInvFreq(base, D);
    }
    case 'llama3': {
      const inv = defaultInvFreq(theta, D);
      const fac = scaling.factor;
      const old = scaling.originalMaxPositionEmbeddings;
      // Python floats, compared with the f32 tensor as f32 (torch casts the scalar to the tensor's dtype)
      const lowWavelen = f(old / scaling.lowFreqFactor);
      const highWavelen = f(old / scaling.highFreqFactor);
      const out = new Float32Array(inv.length);
      for (let i = 0; i < inv.length; i++) {
        const x = inv[i]!;
        const wavelen = f(f(1 / x) * f(2 * Math.PI)); // 2π / inv_freq = inv_freq.reciprocal() * 2π
        // torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        const llama = wavelen > lowWavelen ? f(x / f(fac)) : x;
        const smooth = f(f(f(f(f(1 / wavelen) * f(old)) - f(scaling.lowFreqFactor))) / f(scaling.highFreqFactor - scaling.lowFreqFactor));
        // (1 - smooth) * llama / factor + smooth * llama, left to right
        const smoothed = f(f(f(f(1 - smooth) * llama) / f(fac)) + f(smooth * llama));
        const medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
        out[i] = medium ? smoothed : llama;
      }
      return out;
    }
  }
}

/** The model's RoPE inverse frequencies (D/2); null for learned positions. */
export function modelInvFreq(c: ModelConfig): Float32Array | null {
  if (c.positions !== 'rope') return null;
  return ropeInvFreq(c.headDim, c.ropeTheta, c.ropeScaling, c.maxPositionEmbeddings);
}
