// Uploaded PEFT adapters outside training: validation without a model, merge into a version,
// and the adapter archive of a version (the adapter side of src/services.ts's AdapterValidator,
// MergeService and ExportService.adapterFile). The PEFT format itself is cola/peft.ts.
//
// - validate: an uploaded adapter is checked before any model is known: PEFT config fields and
//             bounds (parsePeftConfig, the one config parser), tensor names of one supported
//             architecture, A (r, in) / B (out, r) / bias shapes, floating dtypes, finite values.
//             The merge checks it again against the model (parsePeftAdapter).
// - merge:    W ← W + scale · s · B·A for every adapted module, s = lora_alpha / r (or / √r with
//             rsLoRA), computed per row in f64 and rounded once to f32. GPT-2 Conv1D weights are
//             stored (in, out): the update (out, in) is added transposed. A LoRA bias
//             (bias = "lora_only", PEFT stores the module's full trained bias) is applied as its
//             difference to the base bias, times `scale`. A non-finite result is refused.
//             The merged weights go into the SnapshotStore (only the changed tensors are new
//             objects: model/snapshots.ts); the adapter is kept as a
//             deterministic ZIP under `<storeDir>/adapters/<sha256>.zip`.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { UserInputError, type AdapterValidator, type ExportService, type MergeService } from '../services.ts';
import type { ModelConfig } from '../model/config.ts';
import { readFileBounded } from '../model/hf.ts';
import { asUserError, checkPathString, GiB, MODEL_INPUT_ERRORS, safeName } from '../model/import-export.ts';
import { parseSafetensors, SafetensorsError, toFloat32 } from '../model/safetensors.ts';
import type { LoadedModel } from '../model/registry.ts';
import { loadVersion, resolvePath } from '../model/versions.ts';
import type { ModelWeights } from '../model/weights.ts';
import { SnapshotStore } from '../store/snapshot-store.ts';
import { manifestOrNull, saveSnapshot } from '../model/snapshots.ts';
import { writeFileAtomicSync } from '../util/atomic.ts';
import { isDir, isFile, sha256Hex } from '../util/fs.ts';
import { ColaConfigError } from './errors.ts';
import { FAMILIES, familyOf, hfModulePath, moduleShorts, type Family } from '../model/names.ts';
import { layerModules, layerPrefix, MAX_LAYERS, type ArchConfig } from './modules.ts';
import { CONFIG_FILE, packAdapter, parsePeftAdapter, parsePeftConfig, PeftError, storedPeftConfig, unpackAdapter, WEIGHTS_FILE } from './peft.ts';

/** Errors that mean "the adapter is unusable" (→ UserInputError → 400). */
const ADAPTER_INPUT_ERRORS = [...MODEL_INPUT_ERRORS, PeftError, ColaConfigError];

/** The PEFT view (modules.ts) of a loaded model's config. */
export function archConfigOf(c: ModelConfig): ArchConfig {
  return {
    architecture: c.arch,
    dim: c.dim,
    nLayers: c.nLayers,
    nHeads: c.nHeads,
    nKvHeads: c.nKvHeads,
    hiddenDim: c.hiddenDim,
    vocabSize: c.vocabSize,
    headDim: c.headDim,
  };
}

// ---------------------------------------------------------------------- adapter validation

/** Per family: `<layer prefix>.(\d+).<module path>` of its LoRA-targetable linears (model/names.ts). */
const LORA_LAYER_PATTERNS: { arch: ArchConfig['architecture']; re: RegExp }[] = (Object.keys(FAMILIES) as Family[]).map((arch) => {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const prefix = esc(FAMILIES[arch].layerPrefix(987654321)).replace('987654321', '(\\d+)');
  return { arch, re: new RegExp(`^${prefix}(${moduleShorts(arch).map((s) => esc(hfModulePath(arch, s))).join('|')})$`) };
});

/** Default bound on an adapter's weights file (or ZIP). */
export const MAX_ADAPTER_BYTES = 2 * GiB;

/**
 * Reads adapter_model.safetensors bytes from a file, a folder holding it (POST /adapters stores
 * one), or a ZIP (knot adapters; the ZIP's own config is returned too).
 */
export function readAdapterWeights(p: string, maxBytes: number): { weights: Uint8Array; zipConfig?: unknown } {
  if (isDir(p)) return { weights: readFileBounded(join(p, WEIGHTS_FILE), maxBytes, 'adapter weights') };
  if (p.endsWith('.zip')) {
    const u = unpackAdapter(readFileBounded(p, maxBytes, 'adapter archive'), maxBytes);
    return { weights: u.weights, zipConfig: u.config };
  }
  return { weights: readFileBounded(p, maxBytes, 'adapter weights') };
}

/**
 * Checks an adapter without a model: config fields and bounds, tensor names of one supported
 * architecture matched by target_modules, shapes consistent with r, floating dtypes, finite values.
 * Returns the normalised PEFT config (defaults filled in, unknown keys dropped).
 */
export function validateAdapterStandalone(configJson: unknown, weights: Uint8Array): Record<string, unknown> {
  const pc = parsePeftConfig(configJson);
  const { r, bias } = pc;
  const layersAllowed = pc.layers_to_transform ? new Set(pc.layers_to_transform) : null;
  const matches = pc.selects;

  let parsed;
  try {
    parsed = parseSafetensors(weights);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new PeftError(e.message, WEIGHTS_FILE);
    throw e;
  }
  if (parsed.tensors.size === 0) throw new PeftError('holds no tensors', WEIGHTS_FILE);
  let arch: ArchConfig['architecture'] | null = null;
  const mods = new Map<string, { short: string; a?: number[]; b?: number[]; bias?: number[] }>();
  const shapesByShort = new Map<string, { in: number; out: number }>();
  for (const [rawName, t] of parsed.tensors) {
    const name = rawName.replace(/\.(lora_[AB])\.default\.weight$/, '.$1.weight');
    const m = /^base_model\.model\.(.+)\.(lora_A\.weight|lora_B\.weight|bias)$/.exec(name);
    if (!m) throw new PeftError('not a PEFT LoRA tensor name (base_model.model.<module>.lora_A.weight / lora_B.weight / bias)', rawName);
    const mod = m[1]!;
    const kind = m[2]!;
    const hit = LORA_LAYER_PATTERNS.map((p) => ({ arch: p.arch, m: p.re.exec(mod) })).find((x) => x.m);
    if (!hit) throw new PeftError('not a LoRA-targetable linear layer of llama, opt or gpt2', rawName);
    if (arch && hit.arch !== arch) throw new PeftError(`mixes ${arch} and ${hit.arch} module names`, rawName);
    arch = hit.arch;
    const layer = Number(hit.m![1]);
    if (layer >= MAX_LAYERS) throw new PeftError(`layer index ${layer} is over ${MAX_LAYERS - 1}`, rawName);
    if (layersAllowed && !layersAllowed.has(layer)) throw new PeftError(`layer ${layer} is not in layers_to_transform`, rawName);
    if (!matches(mod)) throw new PeftError('module is not selected by target_modules', rawName);
    if (t.dtype !== 'F32' && t.dtype !== 'F16' && t.dtype !== 'BF16' && t.dtype !== 'F64') throw new PeftError(`dtype ${t.dtype}; expected F32, F16, BF16 or F64`, rawName);
    const x = toFloat32(t);
    for (let i = 0; i < x.length; i++) {
      if (!Number.isFinite(x[i]!)) throw new PeftError(`value ${i} is ${x[i]} (not finite)`, rawName);
    }
    const e = mods.get(mod) ?? { short: hit.m![2]! };
    const slot = kind === 'lora_A.weight' ? 'a' : kind === 'lora_B.weight' ? 'b' : 'bias';
    if (e[slot]) throw new PeftError('appears twice', name);
    if (slot === 'bias') {
      if (bias !== 'lora_only') throw new PeftError('a bias tensor needs bias = "lora_only" in adapter_config.json', rawName);
      if (t.shape.length !== 1) throw new PeftError(`bias must be 1-D, got shape [${t.shape.join(', ')}]`, rawName);
    } else if (t.shape.length !== 2) {
      throw new PeftError(`must be 2-D, got shape [${t.shape.join(', ')}]`, rawName);
    }
    e[slot] = t.shape.slice();
    mods.set(mod, e);
  }
  for (const [mod, e] of mods) {
    const where = `base_model.model.${mod}`;
    if (!e.a || !e.b) throw new PeftError(`needs both lora_A and lora_B (missing ${!e.a ? 'lora_A' : 'lora_B'})`, where);
    const [ra, inF] = e.a as [number, number];
    const [outF, rb] = e.b as [number, number];
    if (ra !== r || rb !== r) throw new PeftError(`lora_A is [${e.a.join(', ')}] and lora_B [${e.b.join(', ')}]; with r = ${r} expected [${r}, in] and [out, ${r}]`, where);
    if (r > Math.min(inF, outF)) throw new PeftError(`rank ${r} exceeds min(in, out) = ${Math.min(inF, outF)}`, where);
    if (e.bias && e.bias[0] !== outF) throw new PeftError(`bias has ${e.bias[0]} values, expected ${outF}`, where);
    const prev = shapesByShort.get(e.short);
    if (prev && (prev.in !== inF || prev.out !== outF)) throw new PeftError(`${e.short} is (${outF}, ${inF}) here but (${prev.out}, ${prev.in}) in another layer`, where);
    shapesByShort.set(e.short, { in: inF, out: outF });
  }
  return { ...storedPeftConfig(pc, { fanInFanOut: arch && familyOf(arch).conv1d ? true : pc.fan_in_fan_out }) };
}

// ------------------------------------------------------------------------------------- merge

/**
 * Safe merge (PEFT's safe_merge refuses non-finite results; finite but absurd ones are refused
 * too): an adapter whose update dwarfs the weights it changes, or pushes a weight past float16's
 * range, yields a model that answers only <unk> with null logprobs. Real LoRA updates are a small
 * fraction of their module's weights.
 */
export const MAX_MERGED_ABS = 65504;
export const MAX_UPDATE_RATIO = 1000;

/**
 * Merges a parsed adapter into the weights in place: W ← W + scale·s·B·A per module (rows in f64,
 * one rounding to f32), LoRA bias deltas times `scale`. Throws UserInputError on a non-finite
 * result, a merged value beyond ±MAX_MERGED_ABS, or an update larger than MAX_UPDATE_RATIO × the
 * module's largest weight (at least 1). The caller discards `w` on error (it may be half merged).
 */
export function mergeAdapterInto(w: ModelWeights, adapter: ReturnType<typeof parsePeftAdapter>, scale: number): void {
  const cfg = w.config;
  const coef = scale * adapter.scale;
  const r = adapter.rank;
  const hfPathOf = new Map(layerModules(archConfigOf(cfg)).map((m) => [m.short, m.hfPath]));
  for (const [key, m] of adapter.modules) {
    const dot = key.indexOf('.');
    const layer = Number(key.slice(0, dot));
    const short = key.slice(dot + 1);
    const hfPath = hfPathOf.get(short);
    if (!hfPath) throw new UserInputError(`adapter module ${short} is not known for ${cfg.arch}`);
    const base = `${layerPrefix(cfg.arch, layer)}.${hfPath}`;
    const W = w.tensors.get(`${base}.weight`);
    if (!W) throw new UserInputError(`the model has no tensor ${base}.weight for adapter module ${key}`);
    const conv1d = familyOf(cfg.arch).conv1d;
    const [d0, d1] = W.shape as [number, number];
    const [outF, inF] = conv1d ? [d1, d0] : [d0, d1];
    if (W.shape.length !== 2 || outF !== m.out || inF !== m.in) {
      throw new UserInputError(`adapter module ${key} is (${m.out}, ${m.in}) but ${base}.weight is [${W.shape.join(', ')}]${conv1d ? ' (Conv1D, stored (in, out))' : ''}`);
    }
    const row = new Float64Array(inF);
    const data = W.data;
    let wMax = 1;
    for (let i = 0; i < data.length; i++) wMax = Math.max(wMax, Math.abs(data[i]!));
    const maxUpdate = MAX_UPDATE_RATIO * wMax;
    const absurd = (what: string, where: string, v: number) =>
      new UserInputError(
        `refusing the merge: the adapter's ${what} in ${where} is ${v.toExponential(3)}, beyond ${what === 'update' ? `${MAX_UPDATE_RATIO}× the module's largest weight (${maxUpdate.toExponential(3)})` : `±${MAX_MERGED_ABS}`}; lower the scale or fix the adapter`,
      );
    for (let o = 0; o < outF; o++) {
      row.fill(0);
      for (let k = 0; k < r; k++) {
        const bk = m.b[o * r + k]!;
        if (bk === 0) continue;
        const aOff = k * inF;
        for (let i = 0; i < inF; i++) row[i]! += bk * m.a[aOff + i]!;
      }
      for (let i = 0; i < inF; i++) {
        const idx = conv1d ? i * outF + o : o * inF + i;
        const u = coef * row[i]!;
        const v = Math.fround(data[idx]! + u);
        if (!Number.isFinite(v)) {
          throw new UserInputError(`merging the adapter gives a non-finite value in ${base}.weight (row ${o}, column ${i}); lower the scale or fix the adapter`);
        }
        if (Math.abs(u) > maxUpdate) throw absurd('update', `${base}.weight (row ${o}, column ${i})`, u);
        if (Math.abs(v) > MAX_MERGED_ABS) throw absurd('merged value', `${base}.weight (row ${o}, column ${i})`, v);
        data[idx] = v;
      }
    }
    if (m.bias) {
      const B = w.tensors.get(`${base}.bias`);
      if (!B || B.data.length !== m.out) throw new UserInputError(`adapter module ${key} has a bias but ${base}.bias is missing or mis-shaped`);
      let bMax = 1;
      for (let i = 0; i < m.out; i++) bMax = Math.max(bMax, Math.abs(B.data[i]!));
      for (let i = 0; i < m.out; i++) {
        const u = scale * m.bias[i]!;
        const v = Math.fround(B.data[i]! + u);
        if (!Number.isFinite(v)) throw new UserInputError(`merging the adapter gives a non-finite value in ${base}.bias (index ${i})`);
        if (Math.abs(u) > MAX_UPDATE_RATIO * bMax || Math.abs(v) > MAX_MERGED_ABS) {
          throw new UserInputError(`refusing the merge: the adapter changes ${base}.bias[${i}] by ${u.toExponential(3)} to ${v.toExponential(3)}, an absurd magnitude; lower the scale or fix the adapter`);
        }
        B.data[i] = v;
      }
    }
  }
}

// ---------------------------------------------------------------------------------- services

export function createAdapterValidator(opts: { maxAdapterBytes?: number } = {}): AdapterValidator {
  const maxAdapterBytes = opts.maxAdapterBytes ?? MAX_ADAPTER_BYTES;
  return {
    async validate(req) {
      const p = checkPathString(req.safetensorsPath, 'safetensorsPath');
      try {
        const weights = readFileBounded(p, maxAdapterBytes, 'adapter_model.safetensors');
        return { config: validateAdapterStandalone(req.config, weights) };
      } catch (e) {
        throw asUserError(e, 'invalid PEFT adapter', ADAPTER_INPUT_ERRORS);
      }
    },
  };
}

export function createMergeService(opts: { repoRoot: string; maxAdapterBytes?: number }): MergeService {
  const repoRoot = opts.repoRoot;
  const maxAdapterBytes = opts.maxAdapterBytes ?? MAX_ADAPTER_BYTES;
  return {
    async mergeAdapter(req) {
      const { target, adapter, scale } = req;
      if (typeof scale !== 'number' || !Number.isFinite(scale) || Math.abs(scale) > 1e6) {
        throw new UserInputError(`scale must be a finite number in [-1e6, 1e6], got ${String(scale)}`);
      }
      const storeDir = checkPathString(req.storeDir, 'storeDir');
      const adapterPath = resolvePath(repoRoot, checkPathString(adapter?.path, 'adapter.path'));
      if (!existsSync(adapterPath)) throw new UserInputError(`adapter ${adapterPath} does not exist`);
      let loaded: LoadedModel;
      try {
        loaded = loadVersion(repoRoot, target);
      } catch (e) {
        // The stored version itself is unreadable: a server-side problem, not the user's.
        throw new Error(`cannot load ${target.model} v${target.version} (${target.path}): ${(e as Error).message}`);
      }
      const w = loaded.weights;
      let parsed: ReturnType<typeof parsePeftAdapter>;
      let weightsBytes: Uint8Array;
      let configJson: unknown;
      try {
        const read = readAdapterWeights(adapterPath, maxAdapterBytes);
        weightsBytes = read.weights;
        configJson = adapter.config && Object.keys(adapter.config).length > 0 ? adapter.config : read.zipConfig;
        const cfg = archConfigOf(w.config);
        parsed = parsePeftAdapter(cfg, configJson, weightsBytes, (layer, short) => baseBiasOf(w, layer, short));
      } catch (e) {
        throw asUserError(e, `adapter does not fit ${target.model} v${target.version} (${w.config.arch})`, ADAPTER_INPUT_ERRORS);
      }
      mergeAdapterInto(w, parsed, scale);
      const store = new SnapshotStore(storeDir);
      // Only the tensors the merge changed are new objects; the rest are the target's (when the
      // target is a manifest; a whole-file target's tensors are all written once).
      const parent = manifestOrNull(resolvePath(repoRoot, target.path));
      const obj = await saveSnapshot(store, w, { parent });
      if (/^[0-9a-f]{64}$/.test(target.sha256) && target.sha256 !== obj.sha256) {
        await store.putLineage({ sha256: obj.sha256, parent: target.sha256, kind: 'merge', model: target.model, rank: parsed.rank }).catch(() => {});
      }
      const zip = packAdapter({ config: configJson as Record<string, unknown>, weights: weightsBytes });
      const zipPath = join(storeDir, 'adapters', `${sha256Hex(zip)}.zip`);
      if (!isFile(zipPath)) writeFileAtomicSync(zipPath, zip);
      return { weights: { path: obj.path, sha256: obj.sha256, bytes: obj.bytes, addedBytes: obj.addedBytes, tensors: obj.tensors }, adapterPath: zipPath };
    },
  };
}

/** ExportService.adapterFile: a knot's ZIP as is; an uploaded adapter's folder packed once into <exportDir>/adapters. */
export function createAdapterExporter(opts: { repoRoot: string; exportDir: string; maxAdapterBytes?: number }): ExportService['adapterFile'] {
  const { repoRoot, exportDir } = opts;
  const maxAdapterBytes = opts.maxAdapterBytes ?? MAX_ADAPTER_BYTES;
  return async (v) => {
    if (!v.adapterPath) return null;
    const p = resolvePath(repoRoot, v.adapterPath);
    const filename = `${safeName(v.model)}-v${v.version}-adapter.zip`;
    if (isFile(p) && p.endsWith('.zip')) return { path: p, contentType: 'application/zip', filename };
    if (isDir(p) && isFile(join(p, WEIGHTS_FILE)) && isFile(join(p, CONFIG_FILE))) {
      // A folder with the two PEFT files: pack it once (deterministic ZIP, content-addressed).
      const weights = readFileBounded(join(p, WEIGHTS_FILE), maxAdapterBytes, 'adapter weights');
      const cfgBytes = readFileBounded(join(p, CONFIG_FILE), 1 << 20, 'adapter config');
      const config = JSON.parse(new TextDecoder().decode(cfgBytes)) as Record<string, unknown>;
      const zip = packAdapter({ config, weights });
      const out = join(exportDir, 'adapters', `${sha256Hex(zip)}.zip`);
      if (!isFile(out)) writeFileAtomicSync(out, zip);
      return { path: out, contentType: 'application/zip', filename };
    }
    return null;
  };
}

/** The base model's bias of an adapted module (needed for bias = "lora_only" adapters). */
export function baseBiasOf(w: ModelWeights, layer: number, short: string): Float32Array | null {
  const m = layerModules(archConfigOf(w.config)).find((x) => x.short === short);
  if (!m) return null;
  return w.tensors.get(`${layerPrefix(w.config.arch, layer)}.${m.hfPath}.bias`)?.data ?? null;
}
