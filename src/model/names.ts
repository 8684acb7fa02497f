// Hugging Face names of each architecture's per-layer linear modules: the one table of them (the
// GPU model, the COLA module table, PEFT and the weight writers all use it). Pure data, no GPU.
import type { ModelConfig } from './config.ts';

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
  return arch === 'llama' ? `model.layers.${i}.` : arch === 'opt' ? `model.decoder.layers.${i}.` : `transformer.h.${i}.`;
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
