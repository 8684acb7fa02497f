// PEFT (Hugging Face `peft`) LoRA adapter format: export a link's update, import and validate an
// uploaded adapter against a model, pack/unpack both files as a ZIP archive.
//
// Files: `adapter_config.json` + `adapter_model.safetensors`.
// Tensor names (PEFT strips the adapter name when saving; `.default.` infixes are accepted on import):
//   Llama  base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight          A: (r, in)
//          base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight          B: (out, r)
//          (mlp.gate_proj / mlp.up_proj / mlp.down_proj, self_attn.{k,v,o}_proj likewise)
//   OPT    base_model.model.model.decoder.layers.{i}.self_attn.q_proj.lora_A.weight (out_proj, fc1, fc2)
//   GPT-2  base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight              (attn.c_proj, mlp.c_fc,
//          mlp.c_proj); GPT-2's Conv1D stores W as (in, out), hence fan_in_fan_out = true, but A is
//          still (r, in) and B (out, r) and ΔW = s·B·A in the (out, in) convention.
// Scale: s = lora_alpha / r (or lora_alpha / √r with use_rslora).
// LoRA bias: PEFT's bias = "lora_only" trains the adapted module's OWN bias and saves its full
// value as `<module>.bias`. Our LoRA bias is a delta added to the base bias, so export writes
// base bias + delta and import subtracts the base bias again (both need the base biases).
// Archive: ZIP (fflate), files stored at the archive root, fixed timestamps, so the same adapter
// always packs to the same bytes. Tensors are written as F32; F32/F16/BF16/F64 are accepted.

import { unzipSync, zipSync } from 'fflate';
import { z } from 'zod';
import { encodeSafetensors, parseSafetensors, SafetensorsError, toFloat32, type TensorToWrite } from '../model/safetensors.ts';
import { describe } from './errors.ts';
import { compileModulePattern, MAX_PATTERN_LENGTH, PatternError } from './module-pattern.ts';
import { checkArch, layerModules, layerPrefix, MAX_LAYERS, type ArchConfig, type LinearModule } from './modules.ts';
import { MAX_RANK } from './schedule.ts';
import { familyOf } from '../model/names.ts';

export class PeftError extends Error {
  override name = 'PeftError';
  constructor(
    message: string,
    /** Where: "adapter_config.json.r", a tensor name, or "archive". */
    readonly path = '',
  ) {
    super(path ? `${path}: ${message}` : message);
  }
}

/** One link's update, keyed `${layer}.${short}` (short names from modules.ts). */
export interface AdapterWeights {
  rank: number;
  alpha: number;
  /** Whether `scale` is alpha/√r (rsLoRA) rather than alpha/r. */
  rslora?: boolean;
  modules: Map<string, { in: number; out: number; a: Float32Array /* (r,in) */; b: Float32Array /* (out,r) */; bias?: Float32Array /* (out) delta */ }>;
}

export interface PeftConfig {
  peft_type: 'LORA';
  task_type: 'CAUSAL_LM';
  r: number;
  lora_alpha: number;
  lora_dropout: number;
  target_modules: string | string[];
  bias: 'none' | 'lora_only';
  fan_in_fan_out: boolean;
  base_model_name_or_path: string | null;
  inference_mode: boolean;
  init_lora_weights: boolean;
  use_rslora: boolean;
  modules_to_save: null;
  layers_to_transform: number[] | null;
  rank_pattern: Record<string, never>;
  alpha_pattern: Record<string, never>;
}

export const MAX_ALPHA = 1e6;
export const MAX_ARCHIVE_BYTES = 4 * 1024 ** 3;
export const CONFIG_FILE = 'adapter_config.json';
export const WEIGHTS_FILE = 'adapter_model.safetensors';
export const MAX_TARGET_ENTRIES = 64;
const MAX_TARGET_NAME = 200;

// ------------------------------------------------------------------ adapter_config.json

const int = (lo: number, hi: number) => {
  const error = `must be an integer in [${lo}, ${hi}]`;
  return z.number({ error }).int({ error }).min(lo, { error }).max(hi, { error });
};
const bool = () => z.boolean({ error: 'must be a boolean' });
const unsupported = (what: string) => ({ error: `${what} are not supported` });
const emptyOr = (what: string) =>
  z.record(z.string(), z.unknown(), unsupported(what)).refine((v) => Object.keys(v).length === 0, unsupported(what));
const alphaError = `must be a number in (0, ${MAX_ALPHA}]`;
const targetsError = `must be a non-empty list of module names (at most ${MAX_TARGET_ENTRIES}, each at most ${MAX_TARGET_NAME} characters) or a regex string of at most ${MAX_PATTERN_LENGTH} characters`;

/**
 * The one schema of a PEFT LoRA adapter_config.json (upload, merge, init_adapter). Unknown keys
 * (revision, loftq_config, …) are dropped; null means "PEFT's default", as in PEFT.
 */
const LoraConfigSchema = z.object({
  peft_type: z.literal('LORA', { error: (i) => `must be "LORA", got ${describe(i.input)}` }),
  task_type: z.literal('CAUSAL_LM', { error: (i) => `must be "CAUSAL_LM", got ${describe(i.input)}` }).optional(),
  r: int(1, MAX_RANK),
  lora_alpha: z.number({ error: alphaError }).gt(0, { error: alphaError }).max(MAX_ALPHA, { error: alphaError }).default(8), // PEFT's default
  lora_dropout: z.number({ error: 'must be a number in [0, 1)' }).min(0, { error: 'must be a number in [0, 1)' }).lt(1, { error: 'must be a number in [0, 1)' }).default(0),
  use_rslora: bool().default(false),
  fan_in_fan_out: bool().default(false),
  bias: z
    .enum(['none', 'lora_only'], { error: (i) => `must be "none" or "lora_only" (training every bias, "all", is not supported), got ${describe(i.input)}` })
    .default('none'),
  target_modules: z.union(
    [
      z.string().min(1, { error: targetsError }).max(MAX_PATTERN_LENGTH, { error: targetsError }),
      z
        .array(z.string({ error: targetsError }).min(1, { error: targetsError }).max(MAX_TARGET_NAME, { error: targetsError }))
        .min(1, { error: targetsError })
        .max(MAX_TARGET_ENTRIES, { error: targetsError }),
    ],
    { error: targetsError },
  ),
  layers_to_transform: z
    .union([int(0, MAX_LAYERS - 1), z.array(int(0, MAX_LAYERS - 1)).min(1).max(MAX_LAYERS)], { error: 'must be null, a layer index or a non-empty list of them' })
    .optional(),
  rank_pattern: emptyOr('per-module ranks/alphas').optional(),
  alpha_pattern: emptyOr('per-module ranks/alphas').optional(),
  modules_to_save: z.array(z.unknown(), unsupported('full-module copies (modules_to_save)')).max(0, unsupported('full-module copies (modules_to_save)')).optional(),
  use_dora: z.literal(false, unsupported('use_dora adapters (not plain LoRA)')).optional(),
  use_qalora: z.literal(false, unsupported('use_qalora adapters (not plain LoRA)')).optional(),
  base_model_name_or_path: z.string().max(1024).optional(),
});

/** A validated PEFT LoRA config (defaults filled in) with its module selection. */
export interface ParsedPeftConfig {
  r: number;
  lora_alpha: number;
  lora_dropout: number;
  use_rslora: boolean;
  fan_in_fan_out: boolean;
  bias: 'none' | 'lora_only';
  target_modules: string | string[];
  /** Sorted layer indices, or null for every layer. */
  layers_to_transform: number[] | null;
  base_model_name_or_path: string | null;
  /**
   * PEFT's selection of a module by its full name without "base_model.model."
   * (e.g. "model.layers.3.self_attn.q_proj"): a list entry matches the name or a dotted suffix of
   * it; a string must match the whole name (re.fullmatch), run by module-pattern.ts, not RegExp.
   */
  selects(moduleName: string): boolean;
}

/** Parses adapter_config.json; throws PeftError with the field's path (adapter_config.json.<field>). */
export function parsePeftConfig(json: unknown): ParsedPeftConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new PeftError('must be a JSON object', CONFIG_FILE);
  const present = Object.fromEntries(Object.entries(json).filter(([, v]) => v !== null));
  const r = LoraConfigSchema.safeParse(present);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new PeftError(i.message, [CONFIG_FILE, ...i.path.map(String)].join('.'));
  }
  const c = r.data;
  const tm = c.target_modules;
  let selects: (name: string) => boolean;
  if (typeof tm === 'string') {
    let pattern: ReturnType<typeof compileModulePattern>;
    try {
      pattern = compileModulePattern(tm);
    } catch (e) {
      if (e instanceof PatternError) throw new PeftError(e.message, `${CONFIG_FILE}.target_modules`);
      throw e;
    }
    selects = (name) => pattern.test(name);
  } else {
    selects = (name) => tm.some((e) => name === e || name.endsWith(`.${e}`));
  }
  const lt = c.layers_to_transform;
  return {
    r: c.r,
    lora_alpha: c.lora_alpha,
    lora_dropout: c.lora_dropout,
    use_rslora: c.use_rslora,
    fan_in_fan_out: c.fan_in_fan_out,
    bias: c.bias,
    target_modules: typeof tm === 'string' ? tm : [...tm],
    layers_to_transform: lt === undefined ? null : [...new Set(typeof lt === 'number' ? [lt] : lt)].sort((a, b) => a - b),
    base_model_name_or_path: c.base_model_name_or_path ?? null,
    selects,
  };
}

/** The normalised adapter_config.json stored with an adapter (PEFT field names, defaults explicit). */
export function storedPeftConfig(c: ParsedPeftConfig, opts: { fanInFanOut?: boolean } = {}): PeftConfig {
  return {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    r: c.r,
    lora_alpha: c.lora_alpha,
    lora_dropout: c.lora_dropout,
    target_modules: c.target_modules,
    bias: c.bias,
    fan_in_fan_out: opts.fanInFanOut ?? c.fan_in_fan_out,
    base_model_name_or_path: c.base_model_name_or_path,
    inference_mode: true,
    init_lora_weights: true,
    use_rslora: c.use_rslora,
    modules_to_save: null,
    layers_to_transform: c.layers_to_transform,
    rank_pattern: {},
    alpha_pattern: {},
  };
}

export function scaleOf(rank: number, alpha: number, rslora = false): number {
  return rslora ? alpha / Math.sqrt(rank) : alpha / rank;
}

/** The targeted modules of an adapter, in layer order, checked against the model. */
function adapterModules(cfg: ArchConfig, w: AdapterWeights): LinearModule[] {
  const shorts = new Set([...w.modules.keys()].map((k) => k.slice(k.indexOf('.') + 1)));
  const mods = layerModules(cfg).filter((m) => shorts.has(m.short));
  if (mods.length !== shorts.size) {
    const known = new Set(layerModules(cfg).map((m) => m.short));
    throw new PeftError(`unknown modules ${[...shorts].filter((s) => !known.has(s)).join(', ')} for ${cfg.architecture}`);
  }
  return mods;
}

/** adapter_config.json for an adapter on `cfg` (target_modules are the HF leaf names). */
export function buildPeftConfig(cfg: ArchConfig, w: AdapterWeights, baseModel: string | null): PeftConfig {
  const mods = adapterModules(cfg, w);
  const hasBias = [...w.modules.values()].some((m) => m.bias !== undefined);
  // Leaf names, except where two modules of the family share one (GPT-2's attn.c_proj and
  // mlp.c_proj): those need their parent to be told apart.
  const leaf = (p: string) => p.split('.').pop()!;
  const leafCount = new Map<string, number>();
  for (const m of layerModules(cfg)) leafCount.set(leaf(m.hfPath), (leafCount.get(leaf(m.hfPath)) ?? 0) + 1);
  const names = mods.map((m) => ((leafCount.get(leaf(m.hfPath)) ?? 0) > 1 ? m.hfPath : leaf(m.hfPath)));
  return {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    r: w.rank,
    lora_alpha: w.alpha,
    lora_dropout: 0,
    target_modules: names,
    bias: hasBias ? 'lora_only' : 'none',
    fan_in_fan_out: familyOf(cfg.architecture).conv1d,
    base_model_name_or_path: baseModel,
    inference_mode: true,
    init_lora_weights: true,
    use_rslora: w.rslora ?? false,
    modules_to_save: null,
    layers_to_transform: null,
    rank_pattern: {},
    alpha_pattern: {},
  };
}

export function peftTensorName(cfg: ArchConfig, layer: number, m: LinearModule, which: 'lora_A' | 'lora_B' | 'bias'): string {
  const mod = `base_model.model.${layerPrefix(cfg.architecture, layer)}.${m.hfPath}`;
  return which === 'bias' ? `${mod}.bias` : `${mod}.${which}.weight`;
}

type BiasLookup = (layer: number, short: string) => Float32Array | null | undefined;

/**
 * adapter_model.safetensors bytes (F32). `baseBias` gives the base model's bias of a module; it is
 * required when the adapter has a LoRA bias (PEFT stores the full bias, see header).
 */
export function encodePeftWeights(cfg: ArchConfig, w: AdapterWeights, baseBias?: BiasLookup): Uint8Array {
  const c = checkArch(cfg);
  checkWeights(cfg, w);
  const mods = adapterModules(cfg, w);
  const tensors: Record<string, TensorToWrite> = {};
  for (let layer = 0; layer < c.nLayers; layer++) {
    for (const m of mods) {
      const t = w.modules.get(`${layer}.${m.short}`);
      if (!t) throw new PeftError(`missing layer ${layer} module ${m.short}: every layer needs the same modules`);
      tensors[peftTensorName(cfg, layer, m, 'lora_A')] = { dtype: 'F32', shape: [w.rank, m.in], data: t.a };
      tensors[peftTensorName(cfg, layer, m, 'lora_B')] = { dtype: 'F32', shape: [m.out, w.rank], data: t.b };
      if (t.bias) {
        const base = baseBias?.(layer, m.short);
        if (!base) throw new PeftError(`layer ${layer} ${m.hfPath} has a LoRA bias but no base bias was given; PEFT stores the full bias`);
        if (base.length !== m.out) throw new PeftError(`base bias of layer ${layer} ${m.hfPath} has ${base.length} values, expected ${m.out}`);
        const full = new Float32Array(m.out);
        for (let i = 0; i < m.out; i++) full[i] = base[i]! + t.bias[i]!;
        tensors[peftTensorName(cfg, layer, m, 'bias')] = { dtype: 'F32', shape: [m.out], data: full };
      }
    }
  }
  return encodeSafetensors(tensors, { format: 'pt' });
}

function checkWeights(cfg: ArchConfig, w: AdapterWeights): void {
  const c = checkArch(cfg);
  if (!Number.isInteger(w.rank) || w.rank < 1 || w.rank > MAX_RANK) throw new PeftError(`rank must be an integer in [1, ${MAX_RANK}], got ${w.rank}`);
  if (!(Number.isFinite(w.alpha) && w.alpha > 0 && w.alpha <= MAX_ALPHA)) throw new PeftError(`alpha must be in (0, ${MAX_ALPHA}], got ${w.alpha}`);
  const shapes = new Map(layerModules(cfg).map((m) => [m.short, m]));
  for (const [key, t] of w.modules) {
    const dot = key.indexOf('.');
    const layer = Number(key.slice(0, dot));
    const m = shapes.get(key.slice(dot + 1));
    if (!m || !Number.isInteger(layer) || layer < 0 || layer >= c.nLayers) throw new PeftError(`bad module key ${JSON.stringify(key)}`);
    if (t.a.length !== w.rank * m.in || t.b.length !== m.out * w.rank || (t.bias && t.bias.length !== m.out)) {
      throw new PeftError(`module ${key}: A must have ${w.rank}×${m.in} values, B ${m.out}×${w.rank}${t.bias ? `, bias ${m.out}` : ''}`);
    }
  }
}

/** Both files of an adapter as a ZIP archive (deterministic bytes). */
export function packAdapter(files: { config: PeftConfig | Record<string, unknown>; weights: Uint8Array; extra?: Record<string, Uint8Array> }): Uint8Array {
  const cfgBytes = new TextEncoder().encode(JSON.stringify(files.config, null, 2) + '\n');
  const mtime = new Date(Date.UTC(1980, 0, 1, 12)); // fixed: identical adapters pack to identical bytes
  return zipSync(
    {
      [CONFIG_FILE]: [cfgBytes, { level: 6, mtime }],
      [WEIGHTS_FILE]: [files.weights, { level: 0, mtime }],
      ...Object.fromEntries(Object.entries(files.extra ?? {}).map(([k, v]) => [k, [v, { level: 0, mtime }] as const])),
    },
    { mtime },
  );
}

/**
 * Reads the two files out of a ZIP archive. They may sit at the root or in one folder; other
 * files (README.md, …) are ignored. Refuses archives whose declared uncompressed size exceeds
 * `maxBytes` before inflating anything.
 */
export function unpackAdapter(zip: Uint8Array, maxBytes = MAX_ARCHIVE_BYTES): { config: unknown; weights: Uint8Array } {
  let total = 0;
  let files: Record<string, Uint8Array>;
  try {
    files = unzipSync(zip, {
      filter: (f) => {
        const base = f.name.split('/').pop();
        if (base !== CONFIG_FILE && base !== WEIGHTS_FILE) return false;
        total += f.originalSize;
        if (total > maxBytes) throw new PeftError(`archive expands to more than ${maxBytes} bytes`, 'archive');
        return true;
      },
    });
  } catch (e) {
    if (e instanceof PeftError) throw e;
    throw new PeftError(`not a readable ZIP archive (${(e as Error).message})`, 'archive');
  }
  const pick = (name: string): Uint8Array => {
    const hits = Object.keys(files).filter((k) => k.split('/').pop() === name);
    if (hits.length === 0) throw new PeftError(`missing ${name}`, 'archive');
    if (hits.length > 1) throw new PeftError(`${name} appears ${hits.length} times`, 'archive');
    return files[hits[0]!]!;
  };
  const cfgBytes = pick(CONFIG_FILE);
  let config: unknown;
  try {
    config = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(cfgBytes));
  } catch (e) {
    throw new PeftError(`not valid UTF-8 JSON (${(e as Error).message})`, CONFIG_FILE);
  }
  return { config, weights: pick(WEIGHTS_FILE) };
}

export interface ImportedAdapter extends AdapterWeights {
  scale: number;
  /** Short names of the targeted modules, layer order. */
  targets: string[];
  baseModel: string | null;
}

/**
 * Parses and validates an uploaded adapter against a model: config fields and bounds, target
 * modules known to the architecture, exactly the expected tensor names for every layer (no
 * extras, none missing), shapes A (r, in) / B (out, r) / bias (out), floating dtypes, finite
 * values. `baseBias` is needed only for adapters with bias = "lora_only" (see header).
 */
/** A PEFT tensor name with a ".default" adapter-name infix (older/other PEFT saves) dropped. */
export function peftTensorKey(name: string): string {
  return name.replace(/\.(lora_[AB])\.default\.weight$/, '.$1.weight');
}

/**
 * The one check of an adapter tensor's values (upload without a model, and against a model): a
 * floating dtype and finite values. Returns them as f32 (a copy with `copy`).
 */
export function adapterTensorValues(t: Parameters<typeof toFloat32>[0], where: string, opts: { copy?: boolean } = {}): Float32Array {
  if (t.dtype !== 'F32' && t.dtype !== 'F16' && t.dtype !== 'BF16' && t.dtype !== 'F64') throw new PeftError(`dtype ${t.dtype}; expected F32, F16, BF16 or F64`, where);
  const x = toFloat32(t, opts);
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i]!)) throw new PeftError(`value ${i} is ${x[i]} (not finite)`, where);
  }
  return x;
}

export function parsePeftAdapter(cfg: ArchConfig, configJson: unknown, weights: Uint8Array, baseBias?: BiasLookup): ImportedAdapter {
  const c = checkArch(cfg);
  const P = CONFIG_FILE;
  const pc = parsePeftConfig(configJson);
  const { r, bias } = pc;
  const alpha = pc.lora_alpha;
  const rslora = pc.use_rslora;
  const layers = selectLayers(pc.layers_to_transform, c.nLayers, `${P}.layers_to_transform`);
  const pairs = selectModules(cfg, pc, layers, `${P}.target_modules`);
  const mods = layerModules(cfg).filter((m) => pairs.some((p) => p.m.short === m.short));
  for (const m of mods) {
    if (r > Math.min(m.in, m.out)) throw new PeftError(`rank ${r} exceeds min(in, out) = ${Math.min(m.in, m.out)} of ${m.hfPath}`, `${P}.r`);
  }

  let parsed;
  try {
    parsed = parseSafetensors(weights);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new PeftError(e.message, WEIGHTS_FILE);
    throw e;
  }
  // Normalise names: drop a ".default" adapter-name infix (older/other PEFT saves).
  const byName = new Map<string, (typeof parsed.tensors extends Map<string, infer T> ? T : never)>();
  for (const [name, t] of parsed.tensors) {
    const n = peftTensorKey(name);
    if (byName.has(n)) throw new PeftError(`tensor ${n} appears twice`, WEIGHTS_FILE);
    byName.set(n, t);
  }
  const modules: AdapterWeights['modules'] = new Map();
  const used = new Set<string>();
  const take = (name: string, shape: number[], optional = false): Float32Array | undefined => {
    const t = byName.get(name);
    if (!t) {
      if (optional) return undefined;
      throw new PeftError(`missing tensor ${name}`, WEIGHTS_FILE);
    }
    used.add(name);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new PeftError(`shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`, name);
    }
    return adapterTensorValues(t, name, { copy: true });
  };
  for (const { layer, m } of pairs) {
    const a = take(peftTensorName(cfg, layer, m, 'lora_A'), [r, m.in])!;
    const b = take(peftTensorName(cfg, layer, m, 'lora_B'), [m.out, r])!;
    let delta: Float32Array | undefined;
    if (bias === 'lora_only') {
      const full = take(peftTensorName(cfg, layer, m, 'bias'), [m.out], true);
      if (full) {
        const base = baseBias?.(layer, m.short);
        if (!base) throw new PeftError('the adapter stores a bias but the model has no bias on this layer', peftTensorName(cfg, layer, m, 'bias'));
        if (base.length !== m.out) throw new PeftError(`base bias has ${base.length} values, expected ${m.out}`, peftTensorName(cfg, layer, m, 'bias'));
        delta = new Float32Array(m.out);
        for (let i = 0; i < m.out; i++) delta[i] = full[i]! - base[i]!;
      }
    }
    modules.set(`${layer}.${m.short}`, { in: m.in, out: m.out, a, b, bias: delta });
  }
  const extra = [...byName.keys()].filter((n) => !used.has(n));
  if (extra.length > 0) {
    throw new PeftError(
      `${extra.length} tensor(s) do not belong to this ${cfg.architecture} adapter's target modules, e.g. ${extra.slice(0, 3).join(', ')}`,
      WEIGHTS_FILE,
    );
  }
  return { rank: r, alpha, rslora, scale: scaleOf(r, alpha, rslora), modules, targets: mods.map((m) => m.short), baseModel: pc.base_model_name_or_path };
}

function selectLayers(list: number[] | null, nLayers: number, path: string): number[] {
  if (list === null) return Array.from({ length: nLayers }, (_, i) => i);
  const out = list.find((x) => x >= nLayers);
  if (out !== undefined) throw new PeftError(`layer ${out} outside [0, ${nLayers})`, path);
  return list;
}

/**
 * PEFT matching (ParsedPeftConfig.selects) over every (layer, module) of the chosen layers, by
 * the module's full name, e.g. "model.layers.3.self_attn.q_proj". A list entry that matches no
 * module is refused (a typo would otherwise silently train or merge less than asked).
 */
function selectModules(cfg: ArchConfig, pc: ParsedPeftConfig, layers: number[], path: string): { layer: number; m: LinearModule }[] {
  const mods = layerModules(cfg);
  const all = layers.flatMap((layer) => mods.map((m) => ({ layer, m, name: `${layerPrefix(cfg.architecture, layer)}.${m.hfPath}` })));
  const tm = pc.target_modules;
  if (Array.isArray(tm)) {
    const hit = (name: string, e: string) => name === e || name.endsWith(`.${e}`);
    const unknown = tm.filter((e) => !all.some((x) => hit(x.name, e)));
    if (unknown.length > 0) {
      throw new PeftError(
        `${unknown.map((u) => JSON.stringify(u)).join(', ')} match no linear layer of ${cfg.architecture}; its layers: ${mods.map((m) => m.hfPath).join(', ')}`,
        path,
      );
    }
  }
  const chosen = all.filter((x) => pc.selects(x.name));
  if (chosen.length === 0) throw new PeftError('matches no linear layer', path);
  return chosen.map(({ layer, m }) => ({ layer, m }));
}

/** Export: the PEFT files of an adapter, packed. */
export function exportPeftAdapter(cfg: ArchConfig, w: AdapterWeights, opts: { baseModel: string | null; baseBias?: BiasLookup; extra?: Record<string, Uint8Array> }): Uint8Array {
  return packAdapter({ config: buildPeftConfig(cfg, w, opts.baseModel), weights: encodePeftWeights(cfg, w, opts.baseBias), extra: opts.extra });
}

/**
 * A knot's ZIP may carry, next to the PEFT files, the optimizer state a partial reset kept for the
 * next link (optimizer.reset_keep > 0), so a resumed job continues from it; PEFT readers ignore it.
 */
export const OPTIMIZER_STATE_FILE = 'optimizer_state.safetensors';

/** One extra file of a ZIP by its name at the root, or null. */
export function unpackExtra(zip: Uint8Array, name: string): Uint8Array | null {
  let files: Record<string, Uint8Array>;
  try {
    files = unzipSync(zip, { filter: (f) => f.name === name });
  } catch (e) {
    throw new PeftError(`not a readable ZIP archive (${(e as Error).message})`, 'archive');
  }
  return files[name] ?? null;
}

/** Import: unpack a ZIP and validate it against the model. */
export function importPeftAdapter(cfg: ArchConfig, zip: Uint8Array, baseBias?: BiasLookup): ImportedAdapter {
  const { config, weights } = unpackAdapter(zip);
  return parsePeftAdapter(cfg, config, weights, baseBias);
}
