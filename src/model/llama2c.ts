// llama2.c checkpoint loader (legacy "version 0" format written by llama2.c's export.py
// legacy_export / the tinyllamas files): 7 little-endian int32 header
// (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; vocab_size < 0 means the
// classifier is stored separately at the end), then float32 tensors in this order:
//   token_embedding (V, D), rms_att (L, D), wq (L, D, D), wk (L, kvDim, D), wv (L, kvDim, D),
//   wo (L, D, D), rms_ffn (L, D), w1 (L, F, D), w2 (L, D, F), w3 (L, F, D), rms_final (D),
//   freq_cis_real (seq_len, headDim/2), freq_cis_imag (seq_len, headDim/2)  [unused, skipped],
//   wcls (V, D)  [only when vocab_size < 0].
// All matrices are (out, in) like PyTorch Linear. wq/wk rows are in llama2.c's interleaved RoPE
// layout (pairs 2i, 2i+1 in each head); they are kept as they are and config.ropeInterleaved is
// true, rather than permuted into HF's rotate_half layout.
//
// Name mapping: w1 → mlp.gate_proj, w3 → mlp.up_proj, w2 → mlp.down_proj, rms_att →
// input_layernorm, rms_ffn → post_attention_layernorm, rms_final → model.norm, wcls → lm_head.
import { type Llama2cHeader, configFromLlama2c } from './config.ts';
import type { ModelWeights, WeightTensor } from './weights.ts';
import { validateWeights } from './weights.ts';

export class Llama2cError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'Llama2cError';
  }
}

export const LLAMA2C_HEADER_BYTES = 28;

export function parseLlama2cHeader(bytes: Uint8Array): Llama2cHeader {
  if (bytes.length < LLAMA2C_HEADER_BYTES) throw new Llama2cError(`file is ${bytes.length} bytes; a llama2.c checkpoint starts with a 28-byte header`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, LLAMA2C_HEADER_BYTES);
  const v = (i: number) => dv.getInt32(4 * i, true);
  return { dim: v(0), hiddenDim: v(1), nLayers: v(2), nHeads: v(3), nKvHeads: v(4), vocabSize: v(5), seqLen: v(6) };
}

/** Number of f32 values the file must hold after the header, per llama2.c's memory_map_weights. */
export function llama2cFloatCount(h: Llama2cHeader): number {
  const D = h.dim, F = h.hiddenDim, L = h.nLayers, V = Math.abs(h.vocabSize);
  const headDim = D / h.nHeads;
  const kvDim = headDim * h.nKvHeads;
  return V * D + L * D + L * D * D + 2 * L * kvDim * D + L * D * D + L * D + 3 * L * F * D + D + h.seqLen * headDim + (h.vocabSize < 0 ? V * D : 0);
}

/** Parses a llama2.c checkpoint into HF-named f32 weights. The file size must match the header exactly. */
export function loadLlama2c(bytes: Uint8Array): ModelWeights {
  let config;
  const h = parseLlama2cHeader(bytes);
  try {
    config = configFromLlama2c(h);
  } catch (e) {
    throw new Llama2cError(`not a valid llama2.c checkpoint: ${(e as Error).message}`);
  }
  const floats = llama2cFloatCount(h);
  const expected = LLAMA2C_HEADER_BYTES + 4 * floats;
  if (bytes.length !== expected) {
    throw new Llama2cError(
      `llama2.c checkpoint size ${bytes.length} bytes does not match the header (dim ${h.dim}, hidden ${h.hiddenDim}, layers ${h.nLayers}, ` +
        `heads ${h.nHeads}/${h.nKvHeads}, vocab ${h.vocabSize}, seq_len ${h.seqLen}) which implies ${expected} bytes` +
        ' (only the legacy v0 format is supported)',
    );
  }
  // Copy the float section once (handles unaligned input), then slice tensors out of it.
  const all = new Float32Array(floats);
  new Uint8Array(all.buffer).set(bytes.subarray(LLAMA2C_HEADER_BYTES));
  let off = 0;
  const take = (n: number) => {
    const out = all.slice(off, off + n);
    off += n;
    return out;
  };
  const { dim: D, hiddenDim: F, nLayers: L, vocabSize: V, headDim } = config;
  const kvDim = config.nKvHeads * headDim;
  const tensors = new Map<string, WeightTensor>();
  const perLayer = (suffix: string, shape: number[]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const block = take(L * n);
    for (let l = 0; l < L; l++) tensors.set(`model.layers.${l}.${suffix}`, { shape, data: block.slice(l * n, (l + 1) * n) });
  };
  tensors.set('model.embed_tokens.weight', { shape: [V, D], data: take(V * D) });
  perLayer('input_layernorm.weight', [D]);
  perLayer('self_attn.q_proj.weight', [D, D]);
  perLayer('self_attn.k_proj.weight', [kvDim, D]);
  perLayer('self_attn.v_proj.weight', [kvDim, D]);
  perLayer('self_attn.o_proj.weight', [D, D]);
  perLayer('post_attention_layernorm.weight', [D]);
  perLayer('mlp.gate_proj.weight', [F, D]);
  perLayer('mlp.down_proj.weight', [D, F]);
  perLayer('mlp.up_proj.weight', [F, D]);
  tensors.set('model.norm.weight', { shape: [D], data: take(D) });
  off += h.seqLen * headDim; // freq_cis_real + freq_cis_imag (legacy, recomputed from theta)
  if (!config.tiedEmbeddings) tensors.set('lm_head.weight', { shape: [V, D], data: take(V * D) });
  if (off !== floats) throw new Llama2cError(`internal: consumed ${off} of ${floats} floats`);
  const w: ModelWeights = { config, tensors };
  validateWeights(w);
  return w;
}
