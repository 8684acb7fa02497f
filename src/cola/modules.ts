// The LoRA-targetable linear layers of each supported architecture, with their shapes and
// Hugging Face module names. Shared by FLOPs accounting (flops.ts) and the PEFT adapter format
// (peft.ts). Only the per-layer linears are targetable (not embeddings or lm_head).
//
// Shapes follow the PyTorch Linear convention W: (out, in). GPT-2 uses Conv1D (weight stored
// (in, out)), but a LoRA update for it still has A: (r, in) and B: (out, r); PEFT marks such
// modules with fan_in_fan_out = true.

import { ColaConfigError, checkInt } from './errors.ts';
import { familyOf, hfModulePath, layerPrefixOf } from '../model/names.ts';

export type Architecture = 'llama' | 'opt' | 'gpt2';

/** How messages name a family. */
const FAMILY_NAMES: Record<Architecture, string> = { llama: 'Llama', opt: 'OPT', gpt2: 'GPT-2' };

export interface ArchConfig {
  architecture: Architecture;
  /** Model width (hidden_size / n_embd). */
  dim: number;
  nLayers: number;
  nHeads: number;
  /** Key/value heads (grouped-query attention, Llama only); defaults to nHeads. */
  nKvHeads?: number;
  /** Feed-forward width (intermediate_size / ffn_dim / n_inner, default 4·dim for GPT-2). */
  hiddenDim: number;
  vocabSize: number;
  /** Defaults to dim / nHeads. */
  headDim?: number;
}

export interface LinearModule {
  /** Canonical short name used in requests (`lora.targets`), e.g. "q", "down", "c_attn". */
  short: string;
  /** Module path inside one layer, e.g. "self_attn.q_proj", "mlp.down_proj", "attn.c_attn". */
  hfPath: string;
  in: number;
  out: number;
  /** True for GPT-2 Conv1D (weight stored (in, out)). */
  fanInFanOut: boolean;
}

export const MAX_DIM = 1 << 20;
export const MAX_LAYERS = 1024;

export function checkArch(cfg: ArchConfig): Required<ArchConfig> {
  if (cfg.architecture !== 'llama' && cfg.architecture !== 'opt' && cfg.architecture !== 'gpt2') {
    throw new ColaConfigError('architecture', `must be llama, opt or gpt2, got ${JSON.stringify(cfg.architecture)}`);
  }
  const dim = checkInt('config.dim', cfg.dim, 1, MAX_DIM);
  const nLayers = checkInt('config.n_layers', cfg.nLayers, 1, MAX_LAYERS);
  const nHeads = checkInt('config.n_heads', cfg.nHeads, 1, dim);
  const nKvHeads = checkInt('config.n_kv_heads', cfg.nKvHeads ?? nHeads, 1, nHeads);
  if (nHeads % nKvHeads !== 0) throw new ColaConfigError('config.n_kv_heads', `${nKvHeads} must divide n_heads ${nHeads}`);
  if (cfg.architecture !== 'llama' && nKvHeads !== nHeads) {
    throw new ColaConfigError('config.n_kv_heads', `${cfg.architecture} has no grouped-query attention`);
  }
  if (cfg.headDim === undefined && dim % nHeads !== 0) {
    throw new ColaConfigError('config.n_heads', `${nHeads} must divide dim ${dim} (or give head_dim)`);
  }
  const headDim = checkInt('config.head_dim', cfg.headDim ?? dim / nHeads, 1, MAX_DIM);
  const hiddenDim = checkInt('config.hidden_dim', cfg.hiddenDim, 1, 16 * MAX_DIM);
  const vocabSize = checkInt('config.vocab_size', cfg.vocabSize, 1, 1 << 24);
  return { architecture: cfg.architecture, dim, nLayers, nHeads, nKvHeads, hiddenDim, vocabSize, headDim };
}

/** The targetable linear modules of one layer (all layers are alike). */
export function layerModules(cfg: ArchConfig): LinearModule[] {
  const c = checkArch(cfg);
  const q = c.nHeads * c.headDim;
  const kv = c.nKvHeads * c.headDim;
  // Names, roles and the Conv1D layout come from the model's family description (src/model/names.ts).
  const fam = familyOf(c.architecture);
  const m = (short: string, inF: number, outF: number): LinearModule => ({
    short,
    hfPath: hfModulePath(c.architecture, short),
    in: inF,
    out: outF,
    fanInFanOut: fam.conv1d,
  });
  const attention = fam.fusedQkv ? [m(fam.fusedQkv, c.dim, q + 2 * kv)] : [m('q', c.dim, q), m('k', c.dim, kv), m('v', c.dim, kv)];
  const ffn = fam.mlp
    ? [m(fam.mlp[0], c.dim, c.hiddenDim), m(fam.mlp[1], c.hiddenDim, c.dim)]
    : [m('gate', c.dim, c.hiddenDim), m('up', c.dim, c.hiddenDim), m('down', c.hiddenDim, c.dim)];
  return [...attention, m(fam.attnOut, q, c.dim), ...ffn];
}

/** Prefix of layer i's modules inside the HF model (without the PEFT "base_model.model." prefix). */
export function layerPrefix(arch: Architecture, i: number): string {
  return layerPrefixOf(arch, i).slice(0, -1); // without the trailing dot
}

// Accepted aliases per architecture: the HF leaf names and the names other families use.
const ALIASES: Record<Architecture, Record<string, string[]>> = {
  llama: {
    q: ['q', 'q_proj', 'self_attn.q_proj', 'wq'],
    k: ['k', 'k_proj', 'self_attn.k_proj', 'wk'],
    v: ['v', 'v_proj', 'self_attn.v_proj', 'wv'],
    o: ['o', 'o_proj', 'self_attn.o_proj', 'wo'],
    gate: ['gate', 'gate_proj', 'mlp.gate_proj', 'w1'],
    up: ['up', 'up_proj', 'mlp.up_proj', 'w3'],
    down: ['down', 'down_proj', 'mlp.down_proj', 'w2'],
  },
  opt: {
    q: ['q', 'q_proj', 'self_attn.q_proj'],
    k: ['k', 'k_proj', 'self_attn.k_proj'],
    v: ['v', 'v_proj', 'self_attn.v_proj'],
    o: ['o', 'out_proj', 'self_attn.out_proj'],
    fc1: ['fc1', 'up'],
    fc2: ['fc2', 'down'],
  },
  gpt2: {
    // GPT-2 fuses q, k and v into c_attn: asking for any of them targets c_attn.
    c_attn: ['c_attn', 'attn.c_attn', 'q', 'k', 'v', 'qkv'],
    'attn.c_proj': ['attn.c_proj', 'o'],
    c_fc: ['c_fc', 'mlp.c_fc', 'up', 'fc1'],
    'mlp.c_proj': ['mlp.c_proj', 'down', 'fc2'],
  },
};

/**
 * Resolves request targets (short names or HF names) to this architecture's modules, in layer
 * order, without duplicates. Throws ColaConfigError listing the valid names.
 */
export function resolveTargets(cfg: ArchConfig, targets: readonly string[], path = 'lora.targets'): LinearModule[] {
  const mods = layerModules(cfg);
  if (!Array.isArray(targets) || targets.length === 0) throw new ColaConfigError(path, 'must name at least one linear layer');
  if (targets.length > 64) throw new ColaConfigError(path, 'at most 64 entries');
  const aliases = ALIASES[cfg.architecture];
  const chosen = new Set<string>();
  targets.forEach((t, i) => {
    if (typeof t !== 'string') throw new ColaConfigError(`${path}[${i}]`, 'must be a string');
    const hit = Object.entries(aliases).find(([, names]) => names.includes(t));
    if (!hit) {
      // A leaf name two modules share (GPT-2's c_proj): ask for the full path.
      const sharing = mods.filter((m) => m.hfPath.split('.').pop() === t);
      if (sharing.length > 1) {
        throw new ColaConfigError(`${path}[${i}]`, `${FAMILY_NAMES[cfg.architecture]} has ${sharing.length === 2 ? 'two' : sharing.length} ${t} layers: say ${sharing.map((m) => JSON.stringify(m.hfPath)).join(' or ')}`);
      }
      const valid = Object.values(aliases).map((n) => n.slice(0, 2).join('|'));
      throw new ColaConfigError(`${path}[${i}]`, `unknown layer ${JSON.stringify(t)} for ${cfg.architecture}; valid: ${valid.join(', ')}`);
    }
    chosen.add(hit[0]);
  });
  return mods.filter((m) => chosen.has(m.short));
}
