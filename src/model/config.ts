// Model configuration shared by the loaders and the architectures, parsed from a Hugging Face
// `config.json` (validated with zod, every number bounded) or from a llama2.c checkpoint header.
import { z } from 'zod';

/** Tensor layout (names, blocks): Qwen2 and Mistral checkpoints use Llama's. */
export type Architecture = 'llama' | 'opt' | 'gpt2';
/** The Hugging Face model_type a config came from (what configToHf writes back). */
export type Family = 'llama' | 'qwen2' | 'mistral' | 'opt' | 'gpt2';
export type Activation = 'silu' | 'relu' | 'gelu_tanh' | 'gelu';

/**
 * RoPE frequency scaling (HF `rope_scaling`), applied to the inverse frequencies (src/model/rope.ts).
 * dynamic: HF's dynamic NTK changes the frequencies only once a sequence is longer than
 * max_position_embeddings; this service never runs past that length, so within it the frequencies
 * are HF's (those of plain RoPE) and longer sequences are refused.
 */
export type RopeScaling =
  | { type: 'linear'; factor: number }
  | { type: 'dynamic'; factor: number }
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number };

/** One description per family: the layout it loads into and the HF names it is written back with. */
export const FAMILIES: Record<Family, { arch: Architecture; hfClass: string }> = {
  llama: { arch: 'llama', hfClass: 'LlamaForCausalLM' },
  qwen2: { arch: 'llama', hfClass: 'Qwen2ForCausalLM' },
  mistral: { arch: 'llama', hfClass: 'MistralForCausalLM' },
  opt: { arch: 'opt', hfClass: 'OPTForCausalLM' },
  gpt2: { arch: 'gpt2', hfClass: 'GPT2LMHeadModel' },
};

export interface ModelConfig {
  /** Tensor layout and block structure. */
  arch: Architecture;
  /** HF model_type (Qwen2 and Mistral have arch 'llama'). */
  family: Family;
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
  /**
   * Longest sequence this service runs: max_position_embeddings / n_positions / llama2.c seq_len,
   * or a smaller sliding attention window (see slidingWindow).
   */
  maxSeqLen: number;
  /** max_position_embeddings as the config states it (≥ maxSeqLen). */
  maxPositionEmbeddings: number;
  /** RMSNorm (llama) or LayerNorm (opt, gpt2) epsilon. */
  normEps: number;
  norm: 'rmsnorm' | 'layernorm';
  /** 'rope' for llama, 'learned' for opt/gpt2. */
  positions: 'rope' | 'learned';
  /** OPT's learned positions are indexed by position + 2; 0 otherwise. */
  positionOffset: number;
  ropeTheta: number;
  /** RoPE scaling (HF rope_scaling); null = plain RoPE. */
  ropeScaling: RopeScaling | null;
  /**
   * Sliding-window attention of the checkpoint (Mistral `sliding_window`, Qwen2 with
   * `use_sliding_window` from layer `fromLayer` on). The window is not implemented: maxSeqLen is
   * capped at `size`, where a window of `size` positions sees every earlier key, so results are
   * exactly those of the windowed model; longer sequences are refused.
   */
  slidingWindow: { size: number; fromLayer: number } | null;
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
  /** Biases on the q, k and v projections (Qwen2; Llama attention_bias; OPT). */
  qkvBias: boolean;
  /** Bias on the attention output projection (Llama attention_bias; OPT). */
  oBias: boolean;
  /** Biases on FFN projections. */
  mlpBias: boolean;
  /** Biases on norms (LayerNorm). */
  normBias: boolean;
  bosTokenId: number | null;
  eosTokenId: number | null;
  /** Every id config.json names as end of sequence (eosTokenId first); generation stops at any. */
  eosTokenIds: number[];
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

// HF rope_scaling / rope_parameters (transformers v5): unknown keys are ignored, as HF does.
const ropeScalingSchema = z
  .object({
    rope_type: z.string().max(32).optional(),
    type: z.string().max(32).optional(),
    rope_theta: z.number().gt(0).max(1e10).optional(),
    factor: z.number().gt(0).max(1e6).optional(),
    low_freq_factor: z.number().gt(0).max(1e6).optional(),
    high_freq_factor: z.number().gt(0).max(1e6).optional(),
    original_max_position_embeddings: int(1, LIMITS.seqLen).optional(),
    partial_rotary_factor: z.number().gt(0).max(1).optional(),
  })
  .nullable()
  .optional();

// Llama and the families that share its layout (Qwen2: q/k/v biases; Mistral: sliding window).
const llamaLikeFields = {
  hidden_size: int(1, LIMITS.dim),
  intermediate_size: int(1, LIMITS.hidden),
  num_hidden_layers: int(1, LIMITS.layers),
  num_attention_heads: int(1, LIMITS.heads),
  num_key_value_heads: int(1, LIMITS.heads).nullable().optional(),
  head_dim: int(1, LIMITS.dim).nullable().optional(),
  vocab_size: int(1, LIMITS.vocab),
  max_position_embeddings: int(1, LIMITS.seqLen),
  rms_norm_eps: eps.default(1e-6),
  rope_theta: z.number().gt(0).max(1e10).optional(),
  rope_scaling: ropeScalingSchema,
  rope_parameters: ropeScalingSchema,
  partial_rotary_factor: z.literal(1, { message: 'partial RoPE (partial_rotary_factor < 1) is not supported' }).optional(),
  tie_word_embeddings: z.boolean().default(false),
  hidden_act: z.literal('silu', { message: 'only hidden_act "silu" (SwiGLU) is supported' }).default('silu'),
  bos_token_id: tokenId,
  eos_token_id: z.union([tokenId, z.array(int(0, LIMITS.vocab)).max(16)]),
  pad_token_id: tokenId,
};

const llamaSchema = z.object({
  model_type: z.literal('llama'),
  ...llamaLikeFields,
  attention_bias: z.boolean().default(false),
  mlp_bias: z.boolean().default(false),
  /** Written by configToHf for llama2.c-derived weights (not an HF key; SmolLM2 configs carry it as false). */
  rope_interleaved: z.boolean().default(false),
});

const qwen2Schema = z.object({
  model_type: z.literal('qwen2'),
  ...llamaLikeFields,
  use_sliding_window: z.boolean().default(false),
  sliding_window: int(1, LIMITS.seqLen).nullable().default(4096),
  max_window_layers: int(0, LIMITS.layers).default(28),
});

const mistralSchema = z.object({
  model_type: z.literal('mistral'),
  ...llamaLikeFields,
  sliding_window: int(1, LIMITS.seqLen).nullable().default(4096),
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
  for (const [k, v] of [['bosTokenId', c.bosTokenId], ['eosTokenId', c.eosTokenId], ['padTokenId', c.padTokenId], ...c.eosTokenIds.map((id) => ['eos_token_id', id] as const)] as const) {
    if (v !== null && v >= c.vocabSize) throw new ConfigError(`${k} ${v} is outside the vocabulary (${c.vocabSize})`);
  }
  return c;
}

type RopeJson = z.infer<typeof ropeScalingSchema>;

/** rope_scaling (or v5 rope_parameters) → RopeScaling; refuses the kinds not implemented. */
function parseRopeScaling(raw: RopeJson, where: string): RopeScaling | null {
  if (raw == null) return null;
  const kind = raw.rope_type ?? raw.type ?? 'default';
  if (raw.partial_rotary_factor !== undefined && raw.partial_rotary_factor !== 1) throw new ConfigError(`${where}: partial RoPE (partial_rotary_factor < 1) is not supported`);
  const need = <T>(v: T | undefined, key: string): T => {
    if (v === undefined) throw new ConfigError(`${where}: rope_type "${kind}" needs "${key}"`);
    return v;
  };
  switch (kind) {
    case 'default':
      return null;
    case 'linear':
    case 'dynamic':
      return { type: kind, factor: need(raw.factor, 'factor') };
    case 'llama3': {
      const r = {
        type: 'llama3' as const,
        factor: need(raw.factor, 'factor'),
        lowFreqFactor: need(raw.low_freq_factor, 'low_freq_factor'),
        highFreqFactor: need(raw.high_freq_factor, 'high_freq_factor'),
        originalMaxPositionEmbeddings: need(raw.original_max_position_embeddings, 'original_max_position_embeddings'),
      };
      if (!(r.highFreqFactor > r.lowFreqFactor)) throw new ConfigError(`${where}: high_freq_factor ${r.highFreqFactor} must be greater than low_freq_factor ${r.lowFreqFactor}`);
      return r;
    }
    default:
      throw new ConfigError(`${where}: rope_type ${JSON.stringify(kind)} is not supported (supported: default, linear, dynamic, llama3)`);
  }
}

type LlamaLike = z.infer<typeof llamaSchema> | z.infer<typeof qwen2Schema> | z.infer<typeof mistralSchema>;

/** The shared part of Llama, Qwen2 and Mistral configs. */
function llamaLikeConfig(
  family: 'llama' | 'qwen2' | 'mistral',
  j: LlamaLike,
  o: { nKvHeadsDefault: number | null; qkvBias: boolean; oBias: boolean; mlpBias: boolean; interleaved: boolean; window: { size: number; fromLayer: number } | null },
): ModelConfig {
  const first = (v: unknown): number | null => (Array.isArray(v) ? (v[0] ?? null) : (v as number | null | undefined) ?? null);
  const headDim = j.head_dim ?? j.hidden_size / j.num_attention_heads;
  if (!Number.isInteger(headDim)) throw new ConfigError(`hidden_size ${j.hidden_size} is not divisible by num_attention_heads ${j.num_attention_heads}`);
  if (headDim * j.num_attention_heads !== j.hidden_size) {
    throw new ConfigError(`head_dim ${headDim} × num_attention_heads ${j.num_attention_heads} != hidden_size ${j.hidden_size} is not supported`);
  }
  if (j.rope_scaling != null && j.rope_parameters != null) throw new ConfigError('config.json has both rope_scaling and rope_parameters');
  const rope = j.rope_scaling ?? j.rope_parameters;
  const ropeScaling = parseRopeScaling(rope, j.rope_scaling != null ? 'rope_scaling' : 'rope_parameters');
  const ropeTheta = j.rope_theta ?? j.rope_parameters?.rope_theta ?? 10000;
  // HF: an absent num_key_value_heads takes the class default (Mistral 8, Qwen2 32), null the head count.
  const nKv = j.num_key_value_heads === undefined ? (o.nKvHeadsDefault ?? j.num_attention_heads) : (j.num_key_value_heads ?? j.num_attention_heads);
  const window = o.window !== null && o.window.size < j.max_position_embeddings ? o.window : null;
  const eosIds = Array.isArray(j.eos_token_id) ? j.eos_token_id : j.eos_token_id != null ? [j.eos_token_id] : [];
  return checkShape({
    arch: 'llama', family, dim: j.hidden_size, nLayers: j.num_hidden_layers, nHeads: j.num_attention_heads,
    nKvHeads: nKv, headDim, hiddenDim: j.intermediate_size, vocabSize: j.vocab_size,
    maxSeqLen: window ? window.size : j.max_position_embeddings, maxPositionEmbeddings: j.max_position_embeddings,
    normEps: j.rms_norm_eps, norm: 'rmsnorm', positions: 'rope', positionOffset: 0, ropeTheta, ropeScaling, slidingWindow: window,
    ropeInterleaved: o.interleaved, tiedEmbeddings: j.tie_word_embeddings, activation: 'silu', gatedFfn: true,
    qkvBias: o.qkvBias, oBias: o.oBias, mlpBias: o.mlpBias, normBias: false,
    bosTokenId: j.bos_token_id ?? null, eosTokenId: first(j.eos_token_id), eosTokenIds: eosIds, padTokenId: j.pad_token_id ?? null,
  });
}

/** Parses a Hugging Face config.json object (model_type llama, qwen2, mistral, opt or gpt2). */
export function configFromHf(json: unknown): ModelConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new ConfigError('config.json must be a JSON object');
  const mt = (json as Record<string, unknown>).model_type;
  const parse = <S extends z.ZodType>(schema: S): z.infer<S> => {
    const r = schema.safeParse(json);
    if (!r.success) throw new ConfigError(`invalid ${String(mt)} config.json: ${zodMessage(r.error)}`);
    return r.data;
  };
  if (mt === 'llama') {
    const j = parse(llamaSchema);
    return llamaLikeConfig('llama', j, { nKvHeadsDefault: null, qkvBias: j.attention_bias, oBias: j.attention_bias, mlpBias: j.mlp_bias, interleaved: j.rope_interleaved, window: null });
  }
  if (mt === 'qwen2') {
    const j = parse(qwen2Schema);
    const window = j.use_sliding_window && j.sliding_window !== null && j.max_window_layers < j.num_hidden_layers ? { size: j.sliding_window, fromLayer: j.max_window_layers } : null;
    return llamaLikeConfig('qwen2', j, { nKvHeadsDefault: 32, qkvBias: true, oBias: false, mlpBias: false, interleaved: false, window });
  }
  if (mt === 'mistral') {
    const j = parse(mistralSchema);
    const window = j.sliding_window !== null ? { size: j.sliding_window, fromLayer: 0 } : null;
    return llamaLikeConfig('mistral', j, { nKvHeadsDefault: 8, qkvBias: false, oBias: false, mlpBias: false, interleaved: false, window });
  }
  if (mt === 'opt') {
    const j = parse(optSchema);
    if (j.word_embed_proj_dim != null && j.word_embed_proj_dim !== j.hidden_size) {
      throw new ConfigError(`OPT with word_embed_proj_dim ${j.word_embed_proj_dim} != hidden_size ${j.hidden_size} (project_in/out, e.g. opt-350m) is not supported`);
    }
    return checkShape({
      arch: 'opt', family: 'opt', dim: j.hidden_size, nLayers: j.num_hidden_layers, nHeads: j.num_attention_heads,
      nKvHeads: j.num_attention_heads, headDim: j.hidden_size / j.num_attention_heads, hiddenDim: j.ffn_dim,
      vocabSize: j.vocab_size, maxSeqLen: j.max_position_embeddings, maxPositionEmbeddings: j.max_position_embeddings, normEps: 1e-5, norm: 'layernorm',
      positions: 'learned', positionOffset: 2, ropeTheta: 0, ropeScaling: null, slidingWindow: null, ropeInterleaved: false,
      tiedEmbeddings: j.tie_word_embeddings, activation: 'relu', gatedFfn: false,
      qkvBias: j.enable_bias, oBias: j.enable_bias, mlpBias: j.enable_bias, normBias: true,
      bosTokenId: j.bos_token_id ?? null, eosTokenId: j.eos_token_id ?? null, eosTokenIds: j.eos_token_id != null ? [j.eos_token_id] : [], padTokenId: j.pad_token_id ?? null,
    });
  }
  if (mt === 'gpt2') {
    const j = parse(gpt2Schema);
    return checkShape({
      arch: 'gpt2', family: 'gpt2', dim: j.n_embd, nLayers: j.n_layer, nHeads: j.n_head, nKvHeads: j.n_head,
      headDim: j.n_embd / j.n_head, hiddenDim: j.n_inner ?? 4 * j.n_embd, vocabSize: j.vocab_size,
      maxSeqLen: j.n_positions, maxPositionEmbeddings: j.n_positions, normEps: j.layer_norm_epsilon, norm: 'layernorm', positions: 'learned',
      positionOffset: 0, ropeTheta: 0, ropeScaling: null, slidingWindow: null, ropeInterleaved: false, tiedEmbeddings: j.tie_word_embeddings,
      activation: j.activation_function === 'gelu' ? 'gelu' : 'gelu_tanh', gatedFfn: false,
      qkvBias: true, oBias: true, mlpBias: true, normBias: true,
      bosTokenId: j.bos_token_id ?? null, eosTokenId: j.eos_token_id ?? null, eosTokenIds: j.eos_token_id != null ? [j.eos_token_id] : [], padTokenId: j.pad_token_id ?? null,
    });
  }
  throw new ConfigError(`unsupported model_type ${JSON.stringify(mt)} (supported: llama, qwen2, mistral, opt, gpt2)`);
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
    arch: 'llama', family: 'llama', dim: h.dim, nLayers: h.nLayers, nHeads: h.nHeads, nKvHeads: h.nKvHeads,
    headDim: h.dim / h.nHeads, hiddenDim: h.hiddenDim, vocabSize: vocab, maxSeqLen: h.seqLen, maxPositionEmbeddings: h.seqLen,
    normEps: 1e-5, norm: 'rmsnorm', positions: 'rope', positionOffset: 0, ropeTheta: 10000, ropeScaling: null, slidingWindow: null,
    ropeInterleaved: true, tiedEmbeddings: h.vocabSize > 0, activation: 'silu', gatedFfn: true,
    qkvBias: false, oBias: false, mlpBias: false, normBias: false,
    bosTokenId: vocab > 1 ? 1 : null, eosTokenId: vocab > 2 ? 2 : null, eosTokenIds: vocab > 2 ? [2] : [], padTokenId: null,
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

/** rope_scaling as HF writes it (null for plain RoPE). */
function ropeScalingToHf(r: RopeScaling | null): Record<string, unknown> | null {
  if (r === null) return null;
  if (r.type !== 'llama3') return { rope_type: r.type, factor: r.factor };
  return {
    rope_type: 'llama3', factor: r.factor, low_freq_factor: r.lowFreqFactor, high_freq_factor: r.highFreqFactor,
    original_max_position_embeddings: r.originalMaxPositionEmbeddings,
  };
}

/**
 * A config.json for the config (what the HF writer stores next to model.safetensors), with the
 * family's own model_type and keys. For llama with ropeInterleaved (llama2.c weights), the extra
 * key "rope_interleaved": true records that wq/wk were not permuted to HF's rotate_half layout; HF
 * transformers would ignore it, so such a folder is only correct when loaded by this project.
 */
export function configToHf(c: ModelConfig): Record<string, unknown> {
  const eos = c.eosTokenIds.length > 1 ? c.eosTokenIds : c.eosTokenId;
  const ids = { bos_token_id: c.bosTokenId, eos_token_id: eos, pad_token_id: c.padTokenId };
  if (c.arch === 'llama') {
    const common = {
      model_type: c.family, architectures: [FAMILIES[c.family].hfClass], hidden_size: c.dim, intermediate_size: c.hiddenDim,
      num_hidden_layers: c.nLayers, num_attention_heads: c.nHeads, num_key_value_heads: c.nKvHeads, head_dim: c.headDim,
      vocab_size: c.vocabSize, max_position_embeddings: c.maxPositionEmbeddings, rms_norm_eps: c.normEps, rope_theta: c.ropeTheta,
      rope_scaling: ropeScalingToHf(c.ropeScaling), tie_word_embeddings: c.tiedEmbeddings, hidden_act: 'silu',
    };
    if (c.family === 'qwen2') {
      const w = c.slidingWindow;
      return { ...common, use_sliding_window: w !== null, sliding_window: w?.size ?? null, max_window_layers: w?.fromLayer ?? c.nLayers, ...ids };
    }
    if (c.family === 'mistral') return { ...common, sliding_window: c.slidingWindow?.size ?? null, ...ids };
    return {
      ...common, attention_bias: c.qkvBias, mlp_bias: c.mlpBias,
      ...(c.ropeInterleaved ? { rope_interleaved: true } : {}), ...ids,
    };
  }
  if (c.arch === 'opt') {
    return {
      model_type: 'opt', architectures: ['OPTForCausalLM'], hidden_size: c.dim, ffn_dim: c.hiddenDim,
      num_hidden_layers: c.nLayers, num_attention_heads: c.nHeads, vocab_size: c.vocabSize,
      max_position_embeddings: c.maxSeqLen, activation_function: 'relu', do_layer_norm_before: true,
      word_embed_proj_dim: c.dim, enable_bias: c.qkvBias, tie_word_embeddings: c.tiedEmbeddings, ...ids,
    };
  }
  return {
    model_type: 'gpt2', architectures: ['GPT2LMHeadModel'], n_embd: c.dim, n_layer: c.nLayers, n_head: c.nHeads,
    n_inner: c.hiddenDim, vocab_size: c.vocabSize, n_positions: c.maxSeqLen, layer_norm_epsilon: c.normEps,
    activation_function: c.activation === 'gelu' ? 'gelu' : 'gelu_new', tie_word_embeddings: c.tiedEmbeddings, ...ids,
  };
}

/**
 * Why a model's context is maxSeqLen tokens, for the message that refuses a longer sequence:
 * the sliding window or dynamic RoPE scaling when they set it, else nothing.
 */
export function contextLimitNote(c: ModelConfig): string {
  if (c.slidingWindow) {
    return ` (${c.family}'s sliding_window ${c.slidingWindow.size} < max_position_embeddings ${c.maxPositionEmbeddings}: sliding-window attention is not implemented, so sequences stay within one window, where it equals full attention)`;
  }
  if (c.ropeScaling?.type === 'dynamic') {
    return ` (rope_scaling "dynamic": HF rescales RoPE only past max_position_embeddings, which this service does not run)`;
  }
  return '';
}
