// The one description of each model family (llama, opt, gpt2): Hugging Face tensor names, the
// per-layer linear modules and the role each plays in a decoder layer. The training forward and
// backward (transformer.ts), the decode step (generate.ts, batch-forward.ts), the loaders and
// writers (weights.ts), the COLA module table, PEFT and the knot merge read it instead of
// branching on the family's name. Pure data, no GPU.
import type { ModelConfig } from './config.ts';

export type Family = ModelConfig['arch'];

/** How one family lays out a decoder. Module names are the short names of MODULES below. */
export interface FamilyLayout {
  /** Prefix of layer i's tensors, with the trailing dot. */
  layerPrefix(i: number): string;
  /** Token embedding (also the classifier when tied). */
  embedding: string;
  /** Learned absolute positions, or null (RoPE). */
  positions: string | null;
  /** Final norm (without .weight/.bias). */
  finalNorm: string;
  /** A layer's norms before attention and before the FFN (without .weight/.bias). */
  norms: readonly [string, string];
  /** q, k and v as one fused (N, 3D) projection (GPT-2's c_attn), or null for separate q/k/v. */
  fusedQkv: string | null;
  /** The attention output projection. */
  attnOut: string;
  /** The plain MLP's two projections (in, out); null when the family's FFN is gated (gate/up/down). */
  mlp: readonly [string, string] | null;
  /** Linear weights are stored (in, out) as Conv1D (GPT-2), not PyTorch Linear's (out, in). */
  conv1d: boolean;
}

export const FAMILIES: Readonly<Record<Family, FamilyLayout>> = {
  llama: {
    layerPrefix: (i) => `model.layers.${i}.`,
    embedding: 'model.embed_tokens.weight',
    positions: null,
    finalNorm: 'model.norm',
    norms: ['input_layernorm', 'post_attention_layernorm'],
    fusedQkv: null,
    attnOut: 'o',
    mlp: null,
    conv1d: false,
  },
  opt: {
    layerPrefix: (i) => `model.decoder.layers.${i}.`,
    embedding: 'model.decoder.embed_tokens.weight',
    positions: 'model.decoder.embed_positions.weight',
    finalNorm: 'model.decoder.final_layer_norm',
    norms: ['self_attn_layer_norm', 'final_layer_norm'],
    fusedQkv: null,
    attnOut: 'o',
    mlp: ['fc1', 'fc2'],
    conv1d: false,
  },
  gpt2: {
    layerPrefix: (i) => `transformer.h.${i}.`,
    embedding: 'transformer.wte.weight',
    positions: 'transformer.wpe.weight',
    finalNorm: 'transformer.ln_f',
    norms: ['ln_1', 'ln_2'],
    fusedQkv: 'c_attn',
    attnOut: 'attn.c_proj',
    mlp: ['c_fc', 'mlp.c_proj'],
    conv1d: true,
  },
};

/** The (in, out) modules of a family's plain MLP; throws for a family whose FFN is gated. */
export function plainMlp(arch: Family): readonly [string, string] {
  const m = FAMILIES[arch].mlp;
  if (!m) throw new Error(`${arch} has a gated FFN (gate/up/down), not a plain MLP`);
  return m;
}

/** The layout of a family. */
export function familyOf(arch: Family): FamilyLayout {
  return FAMILIES[arch];
}

/** Short name → HF module path inside a layer, in forward order. */
const MODULES: Record<ModelConfig['arch'], Record<string, string>> = {
  llama: { q: 'self_attn.q_proj', k: 'self_attn.k_proj', v: 'self_attn.v_proj', o: 'self_attn.o_proj', gate: 'mlp.gate_proj', up: 'mlp.up_proj', down: 'mlp.down_proj' },
  opt: { q: 'self_attn.q_proj', k: 'self_attn.k_proj', v: 'self_attn.v_proj', o: 'self_attn.out_proj', fc1: 'fc1', fc2: 'fc2' },
  gpt2: { c_attn: 'attn.c_attn', 'attn.c_proj': 'attn.c_proj', c_fc: 'mlp.c_fc', 'mlp.c_proj': 'mlp.c_proj' },
};

/** HF module path of a short name (without the layer prefix). */
export function hfModulePath(arch: ModelConfig['arch'], short: string): string {
  const p = MODULES[arch][short];
  if (!p) throw new Error(`no linear module ${short} in ${arch}`);
  return p;
}

/** Prefix of layer i's tensors, with the trailing dot. */
export function layerPrefixOf(arch: ModelConfig['arch'], i: number): string {
  return FAMILIES[arch].layerPrefix(i);
}

/** HF tensor name of a module's weight (the bias replaces `.weight` by `.bias`). */
export function moduleWeightName(arch: ModelConfig['arch'], layer: number, short: string): string {
  return `${layerPrefixOf(arch, layer)}${hfModulePath(arch, short)}.weight`;
}

/** Short names of the linear modules of one layer, in forward order. */
export function moduleShorts(arch: ModelConfig['arch']): string[] {
  return Object.keys(MODULES[arch]);
}

/** Whether a layer's linear module `short` has a bias in this model. */
export function hasBias(c: Pick<ModelConfig, 'qkvBias' | 'oBias' | 'mlpBias'>, short: string): boolean {
  if (short === 'q' || short === 'k' || short === 'v' || short === 'c_attn') return c.qkvBias;
  if (short === 'o' || short === 'attn.c_proj') return c.oBias;
  return c.mlpBias;
}
