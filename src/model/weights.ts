// CPU-side model weights keyed by Hugging Face tensor names, for every architecture.
//
// Layout notes (read before using a tensor):
// - Llama / OPT projections are PyTorch Linear weights: (out, in), y = x·Wᵀ + b.
// - GPT-2 uses Conv1D: `attn.c_attn.weight` is (in, out) = (dim, 3·dim), `attn.c_proj.weight`
//   (dim, dim), `mlp.c_fc.weight` (dim, hidden), `mlp.c_proj.weight` (hidden, dim); y = x·W + b.
//   They are stored AS IN THE CHECKPOINT (not transposed), so the names keep their HF meaning and
//   the writer's output is a valid HF file. Use `linearWeight()` to get the (out, in) form.
// - Weights from llama2.c keep wq/wk in llama2.c's interleaved-RoPE layout (config.ropeInterleaved
//   = true); they are not permuted to HF's rotate_half layout.
// - lm_head.weight is absent when config.tiedEmbeddings (use the token embedding).
import type { ModelConfig } from './config.ts';
import { familyOf } from './names.ts';
import { configFromHf, configToHf } from './config.ts';
import { type ParsedSafetensors, type SafeTensor, type TensorToWrite, encodeSafetensors, numelOf, toFloat32 } from './safetensors.ts';
import { fromHalf, halfBits, roundToHalf, type HalfKind } from '../gpu/half.ts';

export interface WeightTensor {
  shape: number[];
  /**
   * The values as f32 (for a 16-bit tensor: exactly the decoded 16-bit values). A tensor made by
   * halfTensor decodes them on first read and from then on holds them as f32 (the caller may
   * change them); until then it holds only `bits` (2 bytes a value on the host).
   */
  data: Float32Array;
  /** A 16-bit tensor's bits while its values were never read as f32 (halfTensor). */
  readonly bits?: Uint16Array;
  /**
   * The precision the values were given in (a bf16/f16 checkpoint, or `"dtype"` on import); absent:
   * f32. The matrices (linear weights, token embedding, classifier) of a 16-bit tensor are stored
   * 16-bit on the device, and the tensor is written 16-bit, whenever its values are still exact in
   * that format (halfBits); a tensor changed in f32 (a merged knot) is kept and written as f32.
   */
  dtype?: HalfKind;
}

/** Precision asked for on import: the checkpoint's own ("auto"), or every tensor converted. */
export type WeightsDtype = 'auto' | 'f32' | 'f16' | 'bf16';

/**
 * Converts weights in place to `dtype`: "f32" forgets the 16-bit precision (the device then holds
 * f32), "f16"/"bf16" round every tensor to nearest even (throws a WeightsError when an f16 value
 * overflows), "auto" keeps what the checkpoint had.
 */
export function setWeightsDtype(w: ModelWeights, dtype: WeightsDtype): ModelWeights {
  if (dtype === 'auto') return w;
  for (const [name, t] of w.tensors) {
    if (dtype === 'f32') {
      delete t.dtype;
      continue;
    }
    if (t.dtype === dtype) continue;
    const r = roundToHalf(t.data, dtype);
    for (let i = 0; i < r.length; i++) {
      if (!Number.isFinite(r[i]!) && Number.isFinite(t.data[i]!)) throw new WeightsError(`tensor ${name} holds ${t.data[i]} at index ${i}, beyond the range of ${dtype}; import it as bf16 or f32`);
    }
    t.data = r;
    t.dtype = dtype;
  }
  return w;
}

/**
 * A 16-bit tensor held as its bits; `data` decodes them once, on first read (the bits are then
 * dropped: whoever read `data` may change it, and halfBitsOf checks what it holds).
 */
export function halfTensor(shape: number[], kind: HalfKind, bits: Uint16Array): WeightTensor {
  let raw: Uint16Array | undefined = bits;
  let f32: Float32Array | null = null;
  return {
    shape,
    dtype: kind,
    get bits() {
      return raw;
    },
    get data(): Float32Array {
      if (!f32) {
        f32 = fromHalf(raw!, kind);
        raw = undefined;
      }
      return f32;
    },
    set data(v: Float32Array) {
      f32 = v;
      raw = undefined;
    },
  };
}

/** Values of a tensor, without decoding a 16-bit one. */
export function numelOfTensor(t: WeightTensor): number {
  return t.bits ? t.bits.length : t.data.length;
}

/** The tensor's 16-bit bits when it is a 16-bit tensor whose values are still exact, else null. */
export function halfBitsOf(t: WeightTensor): Uint16Array | null {
  if (!t.dtype) return null;
  return t.bits ?? halfBits(t.data, t.dtype);
}

/** Index of the first non-finite value (NaN, ±Inf), or -1; a 16-bit tensor is checked on its bits. */
export function firstNonFinite(t: WeightTensor): number {
  const b = t.bits;
  if (b) {
    const exp = t.dtype === 'bf16' ? 0x7f80 : 0x7c00;
    for (let i = 0; i < b.length; i++) if ((b[i]! & exp) === exp) return i;
    return -1;
  }
  const d = t.data;
  for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i]!)) return i;
  return -1;
}

/** The tensor as it is written to a file: 16-bit when halfBitsOf allows it, else F32. */
export function tensorToWrite(t: WeightTensor): TensorToWrite {
  const bits = halfBitsOf(t);
  if (bits) return { dtype: t.dtype === 'bf16' ? 'BF16' : 'F16', shape: t.shape, data: bits };
  return { dtype: 'F32', shape: t.shape, data: t.data };
}

/** Bytes of the weights at their stored precision (2 per value of an exact 16-bit tensor, else 4). */
export function weightBytes(w: ModelWeights): number {
  let n = 0;
  for (const t of w.tensors.values()) n += numelOfTensor(t) * (t.dtype && halfBitsOf(t) ? 2 : 4);
  return n;
}

/** The precision of the weights as a model reports it: "f32", "f16", "bf16" or "mixed". */
export function weightsDtypeOf(w: ModelWeights): 'f32' | 'f16' | 'bf16' | 'mixed' {
  const kinds = new Set<string>();
  for (const t of w.tensors.values()) kinds.add(t.dtype && halfBitsOf(t) ? t.dtype : 'f32');
  return kinds.size === 1 ? (kinds.values().next().value as 'f32' | 'f16' | 'bf16') : 'mixed';
}

export interface ModelWeights {
  config: ModelConfig;
  tensors: Map<string, WeightTensor>;
}

export class WeightsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WeightsError';
  }
}

/** Every tensor the architecture needs, by HF name, with its shape (in the order HF lists them). */
export function expectedTensors(c: ModelConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const D = c.dim, F = c.hiddenDim, V = c.vocabSize;
  const qDim = c.nHeads * c.headDim, kvDim = c.nKvHeads * c.headDim;
  if (c.arch === 'llama') {
    m.set('model.embed_tokens.weight', [V, D]);
    for (let i = 0; i < c.nLayers; i++) {
      const p = `model.layers.${i}.`;
      m.set(`${p}self_attn.q_proj.weight`, [qDim, D]);
      m.set(`${p}self_attn.k_proj.weight`, [kvDim, D]);
      m.set(`${p}self_attn.v_proj.weight`, [kvDim, D]);
      m.set(`${p}self_attn.o_proj.weight`, [D, qDim]);
      if (c.qkvBias) {
        m.set(`${p}self_attn.q_proj.bias`, [qDim]);
        m.set(`${p}self_attn.k_proj.bias`, [kvDim]);
        m.set(`${p}self_attn.v_proj.bias`, [kvDim]);
      }
      if (c.oBias) m.set(`${p}self_attn.o_proj.bias`, [D]);
      m.set(`${p}mlp.gate_proj.weight`, [F, D]);
      m.set(`${p}mlp.up_proj.weight`, [F, D]);
      m.set(`${p}mlp.down_proj.weight`, [D, F]);
      if (c.mlpBias) {
        m.set(`${p}mlp.gate_proj.bias`, [F]);
        m.set(`${p}mlp.up_proj.bias`, [F]);
        m.set(`${p}mlp.down_proj.bias`, [D]);
      }
      m.set(`${p}input_layernorm.weight`, [D]);
      m.set(`${p}post_attention_layernorm.weight`, [D]);
    }
    m.set('model.norm.weight', [D]);
  } else if (c.arch === 'opt') {
    m.set('model.decoder.embed_tokens.weight', [V, D]);
    m.set('model.decoder.embed_positions.weight', [c.maxSeqLen + c.positionOffset, D]);
    for (let i = 0; i < c.nLayers; i++) {
      const p = `model.decoder.layers.${i}.`;
      for (const proj of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) {
        m.set(`${p}self_attn.${proj}.weight`, [D, D]);
        if (proj === 'out_proj' ? c.oBias : c.qkvBias) m.set(`${p}self_attn.${proj}.bias`, [D]);
      }
      m.set(`${p}self_attn_layer_norm.weight`, [D]);
      m.set(`${p}self_attn_layer_norm.bias`, [D]);
      m.set(`${p}fc1.weight`, [F, D]);
      if (c.mlpBias) m.set(`${p}fc1.bias`, [F]);
      m.set(`${p}fc2.weight`, [D, F]);
      if (c.mlpBias) m.set(`${p}fc2.bias`, [D]);
      m.set(`${p}final_layer_norm.weight`, [D]);
      m.set(`${p}final_layer_norm.bias`, [D]);
    }
    m.set('model.decoder.final_layer_norm.weight', [D]);
    m.set('model.decoder.final_layer_norm.bias', [D]);
  } else {
    m.set('transformer.wte.weight', [V, D]);
    m.set('transformer.wpe.weight', [c.maxSeqLen, D]);
    for (let i = 0; i < c.nLayers; i++) {
      const p = `transformer.h.${i}.`;
      m.set(`${p}ln_1.weight`, [D]);
      m.set(`${p}ln_1.bias`, [D]);
      m.set(`${p}attn.c_attn.weight`, [D, 3 * D]); // Conv1D (in, out)
      m.set(`${p}attn.c_attn.bias`, [3 * D]);
      m.set(`${p}attn.c_proj.weight`, [D, D]); // Conv1D (in, out)
      m.set(`${p}attn.c_proj.bias`, [D]);
      m.set(`${p}ln_2.weight`, [D]);
      m.set(`${p}ln_2.bias`, [D]);
      m.set(`${p}mlp.c_fc.weight`, [D, F]); // Conv1D (in, out)
      m.set(`${p}mlp.c_fc.bias`, [F]);
      m.set(`${p}mlp.c_proj.weight`, [F, D]); // Conv1D (in, out)
      m.set(`${p}mlp.c_proj.bias`, [D]);
    }
    m.set('transformer.ln_f.weight', [D]);
    m.set('transformer.ln_f.bias', [D]);
  }
  if (!c.tiedEmbeddings) m.set('lm_head.weight', [V, D]);
  return m;
}

/** Name of the token-embedding tensor (also the classifier when tied). */
export function embeddingName(c: ModelConfig): string {
  return familyOf(c.arch).embedding;
}

/** The classifier matrix (V, D): lm_head.weight, or the token embedding when tied. */
export function classifierWeight(w: ModelWeights): WeightTensor {
  return getTensor(w, w.config.tiedEmbeddings ? embeddingName(w.config) : 'lm_head.weight');
}

export function getTensor(w: ModelWeights, name: string): WeightTensor {
  const t = w.tensors.get(name);
  if (!t) throw new WeightsError(`missing tensor ${name}`);
  return t;
}

/**
 * A weight in PyTorch Linear layout (out, in). For GPT-2 Conv1D weights (names ending in
 * c_attn/c_proj/c_fc .weight) this is a transposed copy; otherwise the stored tensor itself.
 */
export function linearWeight(w: ModelWeights, name: string): WeightTensor {
  const t = getTensor(w, name);
  if (!familyOf(w.config.arch).conv1d || !/\.(c_attn|c_proj|c_fc)\.weight$/.test(name)) return t;
  const [rows, cols] = t.shape as [number, number];
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = t.data[r * cols + c]!;
  return { shape: [cols, rows], data: out, ...(t.dtype ? { dtype: t.dtype } : {}) };
}

/**
 * Checks that the weights hold exactly the tensors of the architecture with the right shapes and
 * data lengths; throws a WeightsError listing what is missing, unexpected or mis-shaped.
 */
export function validateWeights(w: ModelWeights): void {
  const exp = expectedTensors(w.config);
  const missing: string[] = [];
  const bad: string[] = [];
  for (const [name, shape] of exp) {
    const t = w.tensors.get(name);
    if (!t) {
      missing.push(name);
      continue;
    }
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      bad.push(`${name}: shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
    } else if (numelOfTensor(t) !== numelOf(shape)) {
      bad.push(`${name}: ${numelOfTensor(t)} values for shape [${shape.join(', ')}]`);
    }
  }
  const extra = [...w.tensors.keys()].filter((n) => !exp.has(n));
  const msgs: string[] = [];
  const list = (xs: string[]) => xs.slice(0, 8).join(', ') + (xs.length > 8 ? `, … (${xs.length} in all)` : '');
  if (missing.length) {
    let hint = '';
    if (missing.includes('lm_head.weight')) hint = ' (lm_head.weight is required because tie_word_embeddings is false)';
    msgs.push(`missing tensors for ${w.config.arch}: ${list(missing)}${hint}`);
  }
  if (bad.length) msgs.push(`wrong shapes: ${list(bad)}`);
  if (extra.length) msgs.push(`unexpected tensors for ${w.config.arch}: ${list(extra)}`);
  if (msgs.length) throw new WeightsError(msgs.join('; '));
}

/** Buffers some HF checkpoints carry that are not parameters (recomputed by the model). */
const IGNORED = [
  /^transformer\.h\.\d+\.attn\.(bias|masked_bias)$/,
  /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/,
];

/**
 * Maps a checkpoint's tensor name to the canonical HF causal-LM name: adds the base-model prefix
 * that headless checkpoints (GPT2Model, LlamaModel, OPTModel) lack. Returns null for ignored buffers.
 */
export function canonicalName(arch: ModelConfig['arch'], name: string): string | null {
  let n = name;
  if (arch === 'gpt2') {
    if (!n.startsWith('transformer.') && n !== 'lm_head.weight') n = `transformer.${n}`;
  } else if (arch === 'llama') {
    if (!n.startsWith('model.') && n !== 'lm_head.weight') n = `model.${n}`;
  } else {
    if (n.startsWith('decoder.')) n = `model.${n}`;
  }
  return IGNORED.some((re) => re.test(n)) ? null : n;
}

export interface FromSafetensorsOptions {
  /** When the weights are tied but the file also stores lm_head.weight, accept it if identical (default) or drop it. */
  tiedLmHead?: 'check' | 'drop';
}

/**
 * Builds f32 weights from one or more parsed safetensors files (shards), converting F16/BF16/F64,
 * normalising names, and validating the set of tensors against the architecture.
 */
export function weightsFromSafetensors(config: ModelConfig, files: ParsedSafetensors[], opts: FromSafetensorsOptions = {}): ModelWeights {
  const tensors = new Map<string, WeightTensor>();
  const sources = new Map<string, SafeTensor>();
  let lmHead: SafeTensor | null = null;
  for (const f of files) {
    for (const [name, t] of f.tensors) {
      const n = canonicalName(config.arch, name);
      if (n === null) continue;
      if (tensors.has(n) || (n === 'lm_head.weight' && lmHead)) throw new WeightsError(`tensor ${n} appears more than once (as ${name})`);
      if (t.dtype !== 'F32' && t.dtype !== 'F16' && t.dtype !== 'BF16' && t.dtype !== 'F64') {
        throw new WeightsError(`tensor ${name} has dtype ${t.dtype}; only F32, F16, BF16 and F64 weights are supported`);
      }
      if (n === 'lm_head.weight' && config.tiedEmbeddings) {
        lmHead = t;
        continue;
      }
      sources.set(n, t);
      // With `owned` (readSafetensorsFile: one buffer per tensor) the bytes are used in place: an
      // F32 tensor is viewed as a Float32Array, a 16-bit one kept as its bits (no f32 copy).
      const owned = !!f.owned && t.data.byteOffset % 4 === 0;
      if (t.dtype === 'BF16' || t.dtype === 'F16') {
        const n16 = t.data.byteLength / 2;
        const bits = owned ? new Uint16Array(t.data.buffer, t.data.byteOffset, n16) : new Uint16Array(t.data.slice().buffer, 0, n16);
        tensors.set(n, halfTensor(t.shape.slice(), t.dtype === 'BF16' ? 'bf16' : 'f16', bits));
      } else {
        tensors.set(n, { shape: t.shape.slice(), data: toFloat32(t, { copy: !owned }) });
      }
    }
  }
  const w: ModelWeights = { config, tensors };
  if (lmHead && (opts.tiedLmHead ?? 'check') === 'check') {
    const src = sources.get(embeddingName(config));
    const sameBytes = (a: Uint8Array, b: Uint8Array) => a.length === b.length && Buffer.compare(a, b) === 0;
    const same = (): boolean => {
      if (!src) return false;
      if (src.dtype === lmHead!.dtype) return sameBytes(src.data, lmHead!.data);
      const a = toFloat32(src, { copy: true });
      const b = toFloat32(lmHead!, { copy: true });
      return a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
    };
    if (!same()) {
      throw new WeightsError('tie_word_embeddings is true but lm_head.weight differs from the token embedding; set tie_word_embeddings: false');
    }
  }
  validateWeights(w);
  return w;
}

/**
 * The weights as a safetensors file with HF names (names sorted; each tensor F32, or BF16/F16 when
 * it is a 16-bit tensor still exact in that format: tensorToWrite), metadata {format: "pt"} plus the
 * config as JSON under "cola_config" so the file alone can be reloaded.
 */
export function saveSafetensorsWeights(w: ModelWeights, metadata: Record<string, string> = {}): Uint8Array {
  validateWeights(w);
  const out = new Map<string, TensorToWrite>();
  for (const [name, t] of w.tensors) out.set(name, tensorToWrite(t));
  return encodeSafetensors(out, savedMetadata(w, metadata));
}

/** The metadata saveSafetensorsWeights writes (and a version's manifest keeps): format "pt", the config, `extra`. */
export function savedMetadata(w: ModelWeights, extra: Record<string, string> = {}): Record<string, string> {
  return { format: 'pt', cola_config: JSON.stringify(configToHf(w.config)), ...extra };
}

/** Reloads weights written by saveSafetensorsWeights (config from its "cola_config" metadata). */
export function loadSavedSafetensorsWeights(parsed: ParsedSafetensors): ModelWeights {
  const cfg = parsed.metadata.cola_config;
  if (cfg === undefined) throw new WeightsError('safetensors file has no cola_config metadata; load it through an HF folder with config.json');
  let json: unknown;
  try {
    json = JSON.parse(cfg);
  } catch {
    throw new WeightsError('cola_config metadata is not valid JSON');
  }
  return weightsFromSafetensors(configFromHf(json), [parsed]);
}
