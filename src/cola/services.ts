// CPU implementations of the model-side services the HTTP layer calls (src/services.ts):
// model import, PEFT adapter validation, adapter merge and safetensors/adapter export.
//
// - import:   loadModelFromPath (HF folder, llama2.c checkpoint, or a saved .safetensors) →
//             validate (shapes by the loader, finite values here) → one safetensors file with HF
//             names and the config in its metadata, written into a SnapshotStore at storeDir.
//             The tokenizer file(s) are copied into `<storeDir>/tokenizers/<sha256>/` (an upload
//             directory is deleted after the import) and the config records their absolute path
//             under `tokenizer`, which versions.ts's tokenizerPathOf() reads.
// - validate: an uploaded adapter is checked before any model is known: PEFT config fields and
//             bounds, tensor names of one supported architecture, A (r, in) / B (out, r) / bias
//             shapes, floating dtypes, finite values. The merge checks it again against the model.
// - merge:    W ← W + scale · s · B·A for every adapted module, s = lora_alpha / r (or / √r with
//             rsLoRA), computed per row in f64 and rounded once to f32. GPT-2 Conv1D weights are
//             stored (in, out): the update (out, in) is added transposed. A LoRA bias
//             (bias = "lora_only", PEFT stores the module's full trained bias) is applied as its
//             difference to the base bias, times `scale`. A non-finite result is refused.
//             The merged weights go into the SnapshotStore; the adapter is kept as a
//             deterministic ZIP under `<storeDir>/adapters/<sha256>.zip`.
// - export:   a version stored as .safetensors is served as is; any other (the bundled llama2.c
//             base) is converted once into `<exportDir>/<sha256>.safetensors` and reused.

import { createHash, randomBytes } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { writeFileAtomicSync } from '../util/atomic.ts';
import {
  UserInputError,
  type AdapterValidator,
  type ExportService,
  type ImportedModel,
  type MergeService,
  type ModelImporter,
  type ResolvedVersion,
} from '../services.ts';
import { CHAT_TEMPLATE_FILES } from '../model/chat.ts';
import { ConfigError, configToHf, type ModelConfig } from '../model/config.ts';
import { ModelLoadError, readFileBounded } from '../model/hf.ts';
import { Llama2cError } from '../model/llama2c.ts';
import { loadModelFromPath, type LoadedModel } from '../model/registry.ts';
import { parseSafetensors, SafetensorsError, toFloat32 } from '../model/safetensors.ts';
import {
  loadHfTokenizer,
  loadLlama2cTokenizer,
  loadSentencePieceTokenizer,
  MAX_TOKENIZER_FILE_BYTES,
  TokenizerError,
  type TextTokenizer,
} from '../model/tokenizer.ts';
import { loadVersion, resolvePath } from '../model/versions.ts';
import { saveSafetensorsWeights, WeightsError, type ModelWeights } from '../model/weights.ts';
import { ColaConfigError } from './errors.ts';
import { layerModules, layerPrefix, MAX_LAYERS, type ArchConfig } from './modules.ts';
import { CONFIG_FILE, packAdapter, parsePeftAdapter, parsePeftConfig, PeftError, storedPeftConfig, unpackAdapter, WEIGHTS_FILE } from './peft.ts';
import { SnapshotStore } from './snapshot-store.ts';

const GiB = 1024 ** 3;

export interface ModelServicesOptions {
  /** Repository root: relative version paths (the bundled model) are resolved against it. */
  repoRoot: string;
  /** Where converted safetensors exports are cached (default `<repoRoot>/data/exports`). */
  exportDir?: string;
  /** Largest model checkpoint file accepted by import (default 16 GiB). */
  maxModelFileBytes?: number;
  /** Largest adapter_model.safetensors (or adapter ZIP) accepted (default 2 GiB). */
  maxAdapterBytes?: number;
}

export interface ModelServices {
  importer: ModelImporter;
  adapterValidator: AdapterValidator;
  merge: MergeService;
  exporter: ExportService;
}

/** Errors that mean "the input is unusable" (→ UserInputError → 400); anything else is ours. */
const INPUT_ERRORS = [ModelLoadError, SafetensorsError, WeightsError, ConfigError, Llama2cError, TokenizerError, PeftError, ColaConfigError];

function asUserError(e: unknown, prefix: string): unknown {
  if (e instanceof UserInputError) return e;
  if (INPUT_ERRORS.some((C) => e instanceof C)) {
    const path = e instanceof PeftError || e instanceof ColaConfigError ? e.path : '';
    const msg = (e as Error).message;
    return new UserInputError(`${prefix}: ${msg}`, path ? [{ path, message: msg }] : undefined);
  }
  return e;
}

function checkPathString(p: unknown, what: string): string {
  if (typeof p !== 'string' || p.length === 0) throw new UserInputError(`${what} must be a non-empty path`);
  if (p.length > 4096 || p.includes('\0')) throw new UserInputError(`${what} is not a usable path`);
  return p;
}

// ------------------------------------------------------------------------------------ helpers

function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** Total parameters (each stored tensor once; a tied classifier is the embedding). */
function paramCount(w: ModelWeights): number {
  let n = 0;
  for (const t of w.tensors.values()) n += t.data.length;
  return n;
}

function checkFinite(w: ModelWeights, what: string): void {
  for (const [name, t] of w.tensors) {
    const d = t.data;
    for (let i = 0; i < d.length; i++) {
      if (!Number.isFinite(d[i]!)) throw new UserInputError(`${what}: tensor ${name} holds a non-finite value (${d[i]}) at index ${i}`);
    }
  }
}

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

// ----------------------------------------------------------------------------------- tokenizer

/** HF tokenizer files copied with a model (the loader reads only these). */
const HF_TOKENIZER_FILES = ['tokenizer.json', 'vocab.json', 'merges.txt', 'tokenizer.model', 'tokenizer_config.json', 'special_tokens_map.json', ...CHAT_TEMPLATE_FILES];

interface TokenizerFiles {
  /** Files to copy (absolute). */
  files: string[];
  /** Basename of the file to record as `tokenizer` (what loadModelFromPath's tokenizerPath takes). */
  main: string;
  /** A sentencepiece .model kept beside a llama2.c tokenizer.bin (recorded as tokenizer_model). */
  spModel?: string;
}

/** The tokenizer files loadModelFromPath used for `source` (same rules as registry.ts). */
function tokenizerFilesOf(source: string, loaded: LoadedModel): TokenizerFiles {
  if (loaded.format === 'hf') {
    const files = HF_TOKENIZER_FILES.filter((n) => isFile(join(source, n))).map((n) => join(source, n));
    const has = (n: string) => files.some((f) => basename(f) === n);
    // The recorded file must make loadModelFromPath pick the same tokenizer: any `.json` makes it
    // call loadHfTokenizer(dir), which prefers tokenizer.json, then vocab.json + merges.txt.
    const main = has('tokenizer.json') ? 'tokenizer.json' : has('vocab.json') && has('merges.txt') ? 'vocab.json' : has('tokenizer.model') ? 'tokenizer.model' : null;
    if (!main) throw new UserInputError(`${source}: no tokenizer.json, vocab.json + merges.txt, or tokenizer.model`);
    return { files, main };
  }
  const dir = isDir(source) ? source : dirname(source);
  const ckpt = isDir(source) ? loaded.source : source;
  const names = readdirSync(dir).sort();
  const bins = names.filter((n) => /^tok.*\.bin$/.test(n) && join(dir, n) !== ckpt);
  const models = names.filter((n) => n.endsWith('.model'));
  if (bins.length === 1) {
    const spModel = models.length === 1 ? models[0] : undefined;
    return { files: [join(dir, bins[0]!), ...(spModel ? [join(dir, spModel)] : [])], main: bins[0]!, spModel };
  }
  if (bins.length === 0 && models.length === 1) return { files: [join(dir, models[0]!)], main: models[0]! };
  throw new UserInputError(`${dir}: cannot tell which tokenizer file belongs to the checkpoint`);
}

/** Loads a tokenizer file the way loadModelFromPath's tokenizerPath does. */
function loadTokenizerLike(path: string, vocabSize: number): TextTokenizer {
  if (path.endsWith('.model')) return loadSentencePieceTokenizer(readFileBounded(path, MAX_TOKENIZER_FILE_BYTES, 'tokenizer'));
  if (path.endsWith('.json')) return loadHfTokenizer(dirname(path));
  return loadLlama2cTokenizer(readFileBounded(path, MAX_TOKENIZER_FILE_BYTES, 'tokenizer'), vocabSize);
}

/**
 * Copies the tokenizer files into `<storeDir>/tokenizers/<sha256 of names + contents>/`
 * (a fresh temporary folder renamed into place; an existing identical folder is reused).
 */
function storeTokenizer(storeDir: string, t: TokenizerFiles): string {
  const h = createHash('sha256');
  const contents: [string, Uint8Array][] = [];
  for (const f of [...t.files].sort()) {
    const bytes = readFileBounded(f, MAX_TOKENIZER_FILE_BYTES, 'tokenizer file');
    h.update(basename(f)).update('\0').update(String(bytes.length)).update('\0').update(bytes);
    contents.push([basename(f), bytes]);
  }
  const root = join(storeDir, 'tokenizers');
  const dir = join(root, h.digest('hex'));
  if (!isDir(dir)) {
    mkdirSync(root, { recursive: true });
    const tmp = join(root, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    mkdirSync(tmp);
    try {
      for (const [name, bytes] of contents) writeFileAtomicSync(join(tmp, name), bytes);
      try {
        renameSync(tmp, dir);
      } catch (e) {
        // Another import installed the same folder first: identical content, keep theirs.
        if (!isDir(dir)) throw e;
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }
  return dir;
}

// ---------------------------------------------------------------------- adapter validation

const LORA_LAYER_PATTERNS: { arch: ArchConfig['architecture']; re: RegExp }[] = [
  { arch: 'llama', re: /^model\.layers\.(\d+)\.(self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)$/ },
  { arch: 'opt', re: /^model\.decoder\.layers\.(\d+)\.(self_attn\.(?:q|k|v|out)_proj|fc1|fc2)$/ },
  { arch: 'gpt2', re: /^transformer\.h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)$/ },
];

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
    const [, mod, kind] = m as unknown as [string, string, string];
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
  return { ...storedPeftConfig(pc, { fanInFanOut: arch === 'gpt2' ? true : pc.fan_in_fan_out }) };
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
    const conv1d = cfg.arch === 'gpt2';
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

// ----------------------------------------------------------------------------------- factory

/**
 * The CPU model services. Wire as
 * `createModelServices({ repoRoot: config.repoRoot, exportDir: path.join(config.dataDir, 'exports') })`.
 */
export function createModelServices(opts: ModelServicesOptions): ModelServices {
  const repoRoot = resolve(opts.repoRoot);
  const exportDir = resolve(opts.exportDir ?? join(repoRoot, 'data', 'exports'));
  const maxModelFileBytes = opts.maxModelFileBytes ?? 16 * GiB;
  const maxAdapterBytes = opts.maxAdapterBytes ?? MAX_ADAPTER_BYTES;

  const importer: ModelImporter = {
    async import(req) {
      const source = resolve(checkPathString(req.source, 'source'));
      const storeDir = checkPathString(req.storeDir, 'storeDir');
      if (!existsSync(source)) throw new UserInputError(`model path ${source} does not exist`);
      let loaded: LoadedModel;
      try {
        loaded = loadModelFromPath(source, { maxFileBytes: maxModelFileBytes });
      } catch (e) {
        throw asUserError(e, `cannot import ${source}`);
      }
      const w = loaded.weights;
      checkFinite(w, `cannot import ${source}`);
      let tokDir: string;
      let tok: TokenizerFiles;
      try {
        tok = tokenizerFilesOf(source, loaded);
        tokDir = storeTokenizer(storeDir, tok);
        // The stored copy must give the tokenizer the loader found in the source.
        const again = loadTokenizerLike(join(tokDir, tok.main), w.config.vocabSize);
        if (again.vocabSize !== loaded.tokenizer.vocabSize) {
          throw new UserInputError(`${source}: the copied tokenizer has ${again.vocabSize} tokens, the source's ${loaded.tokenizer.vocabSize}`);
        }
      } catch (e) {
        throw asUserError(e, `cannot import the tokenizer of ${source}`);
      }
      const bytes = saveSafetensorsWeights(w);
      const obj = await new SnapshotStore(storeDir).put(bytes);
      const config: Record<string, unknown> = {
        ...configToHf(w.config),
        format: 'safetensors',
        source_format: loaded.format,
        tokenizer: join(tokDir, tok.main),
        ...(tok.spModel ? { tokenizer_model: join(tokDir, tok.spModel) } : {}),
      };
      const out: ImportedModel = {
        architecture: w.config.family,
        params: paramCount(w),
        config,
        weights: { path: obj.path, sha256: obj.sha256, bytes: obj.bytes },
      };
      return out;
    },
  };

  const adapterValidator: AdapterValidator = {
    async validate(req) {
      const p = checkPathString(req.safetensorsPath, 'safetensorsPath');
      try {
        const weights = readFileBounded(p, maxAdapterBytes, 'adapter_model.safetensors');
        return { config: validateAdapterStandalone(req.config, weights) };
      } catch (e) {
        throw asUserError(e, 'invalid PEFT adapter');
      }
    },
  };

  const merge: MergeService = {
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
        throw asUserError(e, `adapter does not fit ${target.model} v${target.version} (${w.config.arch})`);
      }
      mergeAdapterInto(w, parsed, scale);
      const store = new SnapshotStore(storeDir);
      const obj = await store.put(saveSafetensorsWeights(w));
      if (/^[0-9a-f]{64}$/.test(target.sha256) && target.sha256 !== obj.sha256) {
        await store.putLineage({ sha256: obj.sha256, parent: target.sha256, kind: 'merge', model: target.model, rank: parsed.rank }).catch(() => {});
      }
      const zip = packAdapter({ config: configJson as Record<string, unknown>, weights: weightsBytes });
      const zipPath = join(storeDir, 'adapters', `${sha256Hex(zip)}.zip`);
      if (!isFile(zipPath)) writeFileAtomicSync(zipPath, zip);
      return { weights: { path: obj.path, sha256: obj.sha256, bytes: obj.bytes }, adapterPath: zipPath };
    },
  };

  const inFlight = new Map<string, Promise<string>>();
  const convert = async (v: ResolvedVersion, src: string): Promise<string> => {
    if (!/^[0-9a-f]{64}$/.test(v.sha256)) throw new Error(`version ${v.model} v${v.version} has no valid sha256`);
    const out = join(exportDir, `${v.sha256}.safetensors`);
    if (isFile(out)) return out;
    const running = inFlight.get(v.sha256);
    if (running) return running;
    const job = (async () => {
      const raw = readFileBounded(src, maxModelFileBytes, 'weights file');
      const actual = sha256Hex(raw);
      if (actual !== v.sha256) throw new Error(`${src} hashes to ${actual}, but version ${v.model} v${v.version} records ${v.sha256}`);
      const loaded = loadVersion(repoRoot, v);
      writeFileAtomicSync(out, saveSafetensorsWeights(loaded.weights));
      return out;
    })();
    inFlight.set(v.sha256, job);
    try {
      return await job;
    } finally {
      inFlight.delete(v.sha256);
    }
  };

  const safeName = (s: string) => s.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 128);

  const exporter: ExportService = {
    async weightsFile(v) {
      const src = resolvePath(repoRoot, v.path);
      if (!isFile(src)) throw new Error(`weights of ${v.model} v${v.version} are missing: ${src}`);
      const path = extname(src) === '.safetensors' ? src : await convert(v, src);
      return { path, contentType: 'application/octet-stream', filename: `${safeName(v.model)}-v${v.version}.safetensors` };
    },
    async adapterFile(v) {
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
    },
  };

  return { importer, adapterValidator, merge, exporter };
}

/** The base model's bias of an adapted module (needed for bias = "lora_only" adapters). */
export function baseBiasOf(w: ModelWeights, layer: number, short: string): Float32Array | null {
  const m = layerModules(archConfigOf(w.config)).find((x) => x.short === short);
  if (!m) return null;
  return w.tensors.get(`${layerPrefix(w.config.arch, layer)}.${m.hfPath}.bias`)?.data ?? null;
}
