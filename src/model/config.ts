// Model configuration shared by the loaders and the architectures, parsed from a Hugging Face
// `config.json` (validated with zod, every number bounded) or from a llama2.c checkpoint header.
import { z } from 'zod';

export type Architecture = 'llama' | 'opt' | 'gpt2';
export type Activation = 'silu' | 'relu' | 'gelu_tanh' | 'gelu';

export interface ModelConfig {
  arch: Architecture;
  /** Model width (hidden_size / n_embd). */
  dim: number;
  nLayers: number;
  nHeads: number;
  /** Key/value heads (grouped-query attention); equals nHeads for OPT and GPT-2. */
  nKvHeads: number;
  /** dim / nHeads. */
  headDim: number;
  /** FFN inner width (intermediate_size / ffn_dim / n_inner). */
  hiddenDim: number;
  vocabSize: number;
  /** Longest sequence: max_position_embeddings / n_positions / llama2.c seq_len. */
  maxSeqLen: number;
  /** RMSNorm (llama) or LayerNorm (opt, gpt2) epsilon. */
  normEps: number;
  norm: 'rmsnorm' | 'layernorm';
  /** 'rope' for llama, 'learned' for opt/gpt2. */
  positions: 'rope' | 'learned';
  /** OPT's learned positions are indexed by position + 2; 0 otherwise. */
  positionOffset: number;
  ropeTheta: number;
  /**
   * RoPE pairing. true: llama2.c, pairs (2i, 2i+1) of each head (its wq/wk are stored in that
   * layout). false: HF Llama "rotate_half", pairs (i, i + headDim/2).
   */
  ropeInterleaved: boolean;
  /** The classifier (lm_head) shares the token embedding matrix. */
  tiedEmbeddings: boolean;
  activation: Activation;
  /** Gated FFN (SwiGLU: gate, up, down) for llama; plain 2-layer FFN otherwise. */
  gatedFfn: boolean;
  /** Biases on q/k/v/o projections. */
  attnBias: boolean;
  /** Biases on FFN projections. */
  mlpBias: boolean;
  /** Biases on norms (LayerNorm). */
  normBias: boolean;
  bosTokenId: number | null;
  eosTokenId: number | null;
  padTokenId: number | null;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

// Bounds: generous for real models (Llama-3-405B: dim 16384, 126 layers, vocab 128256), tight
// enough that a hostile config cannot ask for absurd allocations by itself.
export const LIMITS = {
  dim: 1 << 16,
  layers: 1024,
  heads: 1024,
  hidden: 1 << 18,
  vocab: 1 << 21,
  seqLen: 1 << 20,
} as const;

const int = (min: number, max: number) => z.number().int().min(min).max(max);
const tokenId = z.number().int().min(0).max(LIMITS.vocab).nullable().optional();
const eps = z.number().gt(0).max(0.1);

const llamaSchema = z.object({
  model_type: z.literal('llama'),
  hidden_size: int(1, LIMITS.dim),
  intermediate_size: int(1, LIMITS.hidden),
  num_hidden_layers: int(1, LIMITS.layers),
  num_attention_heads: int(1, LIMITS.heads),
  num_key_value_heads: int(1, LIMITS.heads).nullable().optional(),
  head_dim: int(1, LIMITS.dim).nullable().optional(),
  vocab_size: int(1, LIMITS.vocab),
  max_position_embeddings: int(1, LIMITS.seqLen),
  rms_norm_eps: eps.default(1e-6),
  rope_theta: z.number().gt(0).max(1e10).default(10000),
  rope_scaling: z.null().optional(),
  tie_word_embeddings: z.boolean().default(false),
  hidden_act: z.literal('silu').default('silu'),
  attention_bias: z.boolean().default(false),
  mlp_bias: z.boolean().default(false),
  /** Written by configToHf for llama2.c-derived weights (not an HF key). */
  rope_interleaved: z.boolean().default(false),
  bos_token_id: tokenId,
  eos_token_id: z.union([tokenId, z.array(int(0, LIMITS.vocab)).max(16)]),
  pad_token_id: tokenId,
});

const optSchema = z.object({
  model_type: z.literal('opt'),
  hidden_size: int(1, LIMITS.dim),
  ffn_dim: int(1, LIMITS.hidden),
  num_hidden_layers: int(1, LIMITS.layers),
  num_attention_heads: int(1, LIMITS.heads),
  vocab_size: int(1, LIMITS.vocab),
  max_position_embeddings: int(1, LIMITS.seqLen),
  activation_function: z.literal('relu').default('relu'),
  do_layer_norm_before: z.literal(true, { message: 'post-LayerNorm OPT (do_layer_norm_before: false, e.g. opt-350m) is not supported' }).default(true),
  word_embed_proj_dim: int(1, LIMITS.dim).nullable().optional(),
  enable_bias: z.boolean().default(true),
  layer_norm_elementwise_affine: z.literal(true, { message: 'OPT without LayerNorm affine parameters is not supported' }).default(true),
  tie_word_embeddings: z.boolean().default(true),
  bos_token_id: tokenId,
  eos_token_id: tokenId,
  pad_token_id: tokenId,
});

const gpt2Schema = z.object({
  model_type: z.literal('gpt2'),
  n_embd: int(1, LIMITS.dim),
  n_layer: int(1, LIMITS.layers),
  n_head: int(1, LIMITS.heads),
  n_inner: int(1, LIMITS.hidden).nullable().optional(),
  vocab_size: int(1, LIMITS.vocab),
  n_positions: int(1, LIMITS.seqLen),
  layer_norm_epsilon: eps.default(1e-5),
  activation_function: z.enum(['gelu_new', 'gelu_pytorch_tanh', 'gelu']).default('gelu_new'),
  tie_word_embeddings: z.boolean().default(true),
  scale_attn_weights: z.literal(true, { message: 'GPT-2 with scale_attn_weights: false is not supported' }).default(true),
  scale_attn_by_inverse_layer_idx: z.literal(false, { message: 'GPT-2 with scale_attn_by_inverse_layer_idx is not supported' }).default(false),
  add_cross_attention: z.literal(false, { message: 'GPT-2 with cross-attention is not supported' }).default(false),
  bos_token_id: tokenId,
  eos_token_id: tokenId,
  pad_token_id: tokenId,
});

function zodMessage(e: z.ZodError): string {
  return e.issues
    .slice(0, 5)
    .map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`)
    .join('; ');
}

function checkShape(c: ModelConfig): ModelConfig {
  if (c.dim % c.nHeads !== 0) throw new ConfigError(`dim ${c.dim} is not divisible by nHeads ${c.nHeads}`);
  if (c.nHeads % c.nKvHeads !== 0) throw new ConfigError(`nHeads ${c.nHeads} is not a multiple of nKvHeads ${c.nKvHeads}`);
  if (c.positions === 'rope' && c.headDim % 2 !== 0) throw new ConfigError(`RoPE needs an even head dimension, got ${c.headDim}`);
  for (const [k, v] of [['bosTokenId', c.bosTokenId], ['eosTokenId', c.eosTokenId], ['padTokenId', c.padTokenId]] as const) {
    if (v !== null && v >= c.vocabSize) throw new ConfigError(`${k} ${v} is outside the vocabulary (${c.vocabSize})`);
  }
  return c;
}

/** Parses a Hugging Face config.json object (model_type llama, opt or gpt2). */
export function configFromHf(json: unknown): ModelConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new ConfigError('config.json must be a JSON object');
  const mt = (json as Record<string, unknown>).model_type;
  const first = (v: unknown): number | null => (Array.isArray(v) ? (v[0] ?? null) : (v as number | null | undefined) ?? null);
  if (mt === 'llama') {
    const r = llamaSchema.safeParse(json);
    if (!r.success) throw new ConfigError(`invalid llama config.json: ${zodMessage(r.error)}`);
    const j = r.data;
    const headDim = j.head_dim ?? j.hidden_size / j.num_attention_heads;
    if (!Number.isInteger(headDim)) throw new ConfigError(`hidden_size ${j.hidden_size} is not divisible by num_attention_heads ${j.num_attention_heads}`);
    if (headDim * j.num_attention_heads !== j.hidden_size) {
      throw new ConfigError(`head_dim ${headDim} × num_attention_heads ${j.num_attention_heads} != hidden_size ${j.hidden_size} is not supported`);
    }
    return checkShape({
      arch: 'llama', dim: j.hidden_size, nLayers: j.num_hidden_layers, nHeads: j.num_attention_heads,
      nKvHeads: j.num_key_value_heads ?? j.num_attention_heads, headDim, hiddenDim: j.intermediate_size,
      vocabSize: j.vocab_size, maxSeqLen: j.max_position_embeddings, normEps: j.rms_norm_eps, norm: 'rmsnorm',
      positions: 'rope', positionOffset: 0, ropeTheta: j.rope_theta, ropeInterleaved: j.rope_interleaved,
      tiedEmbeddings: j.tie_word_embeddings, activation: 'silu', gatedFfn: true,
      attnBias: j.attention_bias, mlpBias: j.mlp_bias, normBias: false,
      bosTokenId: j.bos_token_id ?? null, eosTokenId: first(j.eos_token_id), padTokenId: j.pad_token_id ?? null,
    });
  }
  if (mt === 'opt') {
    const r = optSchema.safeParse(json);
    if (!r.success) throw new ConfigError(`invalid opt config.json: ${zodMessage(r.error)}`);
    const j = r.data;
    if (j.word_embed_proj_dim != null && j.word_embed_proj_dim !== j.hidden_size) {
      throw new ConfigError(`OPT with word_embed_proj_dim ${j.word_embed_proj_dim} != hidden_size ${j.hidden_size} (project_in/out, e.g. opt-350m) is not supported`);
    }
    return checkShape({
      arch: 'opt', dim: j.hidden_size, nLayers: j.num_hidden_layers, nHeads: j.num_attention_heads,
      nKvHeads: j.num_attention_heads, headDim: j.hidden_size / j.num_attention_heads, hiddenDim: j.ffn_dim,
      vocabSize: j.vocab_size, maxSeqLen: j.max_position_embeddings, normEps: 1e-5, norm: 'layernorm',
      positions: 'learned', positionOffset: 2, ropeTheta: 0, ropeInterleaved: false,
      tiedEmbeddings: j.tie_word_embeddings, activation: 'relu', gatedFfn: false,
      attnBias: j.enable_bias, mlpBias: j.enable_bias, normBias: true,
      bosTokenId: j.bos_token_id ?? null, eosTokenId: j.eos_token_id ?? null, padTokenId: j.pad_token_id ?? null,
    });
  }
  if (mt === 'gpt2') {
    const r = gpt2Schema.safeParse(json);
    if (!r.success) throw new ConfigError(`invalid gpt2 config.json: ${zodMessage(r.error)}`);
    const j = r.data;
    return checkShape({
      arch: 'gpt2', dim: j.n_embd, nLayers: j.n_layer, nHeads: j.n_head, nKvHeads: j.n_head,
      headDim: j.n_embd / j.n_head, hiddenDim: j.n_inner ?? 4 * j.n_embd, vocabSize: j.vocab_size,
      maxSeqLen: j.n_positions, normEps: j.layer_norm_epsilon, norm: 'layernorm', positions: 'learned',
      positionOffset: 0, ropeTheta: 0, ropeInterleaved: false, tiedEmbeddings: j.tie_word_embeddings,
      activation: j.activation_function === 'gelu' ? 'gelu' : 'gelu_tanh', gatedFfn: false,
      attnBias: true, mlpBias: true, normBias: true,
      bosTokenId: j.bos_token_id ?? null, eosTokenId: j.eos_token_id ?? null, padTokenId: j.pad_token_id ?? null,
    });
  }
  throw new ConfigError(`unsupported model_type ${JSON.stringify(mt)} (supported: llama, opt, gpt2)`);
}

/** The 7 int32 fields of a llama2.c checkpoint header, in file order. */
export interface Llama2cHeader {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  /** Signed as stored: negative means the classifier is stored separately. */
  vocabSize: number;
  seqLen: number;
}

/** llama2.c header → config (theta 10000, eps 1e-5, interleaved RoPE, BOS 1, EOS 2). */
export function configFromLlama2c(h: Llama2cHeader): ModelConfig {
  const check = (name: string, v: number, max: number) => {
    if (!Number.isInteger(v) || v < 1 || v > max) throw new ConfigError(`llama2.c header: ${name} = ${v} is outside [1, ${max}]`);
  };
  check('dim', h.dim, LIMITS.dim);
  check('hidden_dim', h.hiddenDim, LIMITS.hidden);
  check('n_layers', h.nLayers, LIMITS.layers);
  check('n_heads', h.nHeads, LIMITS.heads);
  check('n_kv_heads', h.nKvHeads, LIMITS.heads);
  check('|vocab_size|', Math.abs(h.vocabSize), LIMITS.vocab);
  check('seq_len', h.seqLen, LIMITS.seqLen);
  if (h.dim % h.nHeads !== 0) throw new ConfigError(`llama2.c header: dim ${h.dim} is not divisible by n_heads ${h.nHeads}`);
  if (h.nKvHeads > h.nHeads) throw new ConfigError(`llama2.c header: n_kv_heads ${h.nKvHeads} > n_heads ${h.nHeads}`);
  const vocab = Math.abs(h.vocabSize);
  return checkShape({
    arch: 'llama', dim: h.dim, nLayers: h.nLayers, nHeads: h.nHeads, nKvHeads: h.nKvHeads,
    headDim: h.dim / h.nHeads, hiddenDim: h.hiddenDim, vocabSize: vocab, maxSeqLen: h.seqLen,
    normEps: 1e-5, norm: 'rmsnorm', positions: 'rope', positionOffset: 0, ropeTheta: 10000,
    ropeInterleaved: true, tiedEmbeddings: h.vocabSize > 0, activation: 'silu', gatedFfn: true,
    attnBias: false, mlpBias: false, normBias: false,
    bosTokenId: vocab > 1 ? 1 : null, eosTokenId: vocab > 2 ? 2 : null, padTokenId: null,
  });
}

/**
 * The config a registered model records (the models table): an HF config.json for imports, or the
 * llama2.c header fields of the bundled checkpoint (`format: "llama2c"`). Gives admission the
 * model's shapes without loading its weights; the loaders derive the same config from the files.
 */
export function configFromRegistration(c: Record<string, unknown>): ModelConfig {
  if (c.format !== 'llama2c') return configFromHf(c);
  const n = (k: string) => (typeof c[k] === 'number' ? (c[k] as number) : Number.NaN);
  const vocab = n('vocab_size');
  return configFromLlama2c({
    dim: n('dim'),
    hiddenDim: n('hidden_dim'),
    nLayers: n('n_layers'),
    nHeads: n('n_heads'),
    nKvHeads: n('n_kv_heads'),
    vocabSize: c.shared_classifier === false ? -vocab : vocab,
    seqLen: n('seq_len'),
  });
}

/**
 * A config.json for the config (what the HF writer stores next to model.safetensors). For llama
 * with ropeInterleaved (llama2.c weights), the extra key "rope_interleaved": true records that wq/wk
 * were not permuted to HF's rotate_half layout; HF transformers would ignore it, so such a folder
 * is only correct when loaded by this project.
 */
export function configToHf(c: ModelConfig): Record<string, unknown> {
  const ids = { bos_token_id: c.bosTokenId, eos_token_id: c.eosTokenId, pad_token_id: c.padTokenId };
  if (c.arch === 'llama') {
    return {
      model_type: 'llama', architectures: ['LlamaForCausalLM'], hidden_size: c.dim, intermediate_size: c.hiddenDim,
      num_hidden_layers: c.nLayers, num_attention_heads: c.nHeads, num_key_value_heads: c.nKvHeads,
      vocab_size: c.vocabSize, max_position_embeddings: c.maxSeqLen, rms_norm_eps: c.normEps, rope_theta: c.ropeTheta,
      tie_word_embeddings: c.tiedEmbeddings, hidden_act: 'silu', attention_bias: c.attnBias, mlp_bias: c.mlpBias,
      ...(c.ropeInterleaved ? { rope_interleaved: true } : {}), ...ids,
    };
  }
  if (c.arch === 'opt') {
    return {
      model_type: 'opt', architectures: ['OPTForCausalLM'], hidden_size: c.dim, ffn_dim: c.hiddenDim,
      num_hidden_layers: c.nLayers, num_attention_heads: c.nHeads, vocab_size: c.vocabSize,
      max_position_embeddings: c.maxSeqLen, activation_function: 'relu', do_layer_norm_before: true,
      word_embed_proj_dim: c.dim, enable_bias: c.attnBias, tie_word_embeddings: c.tiedEmbeddings, ...ids,
    };
  }
  return {
    model_type: 'gpt2', architectures: ['GPT2LMHeadModel'], n_embd: c.dim, n_layer: c.nLayers, n_head: c.nHeads,
    n_inner: c.hiddenDim, vocab_size: c.vocabSize, n_positions: c.maxSeqLen, layer_norm_epsilon: c.normEps,
    activation_function: c.activation === 'gelu' ? 'gelu' : 'gelu_new', tie_word_embeddings: c.tiedEmbeddings, ...ids,
  };
}
