// Model import and weights export (the model side of src/services.ts's ModelImporter and
// ExportService.weightsFile).
//
// - import:   loadModelFromPath (HF folder, llama2.c checkpoint, or a saved .safetensors) →
//             validate (shapes by the loader, finite values here) → one object per tensor and a
//             manifest (model/snapshots.ts: the safetensors file with HF names and the config in
//             its metadata), written into a SnapshotStore at storeDir.
//             The tokenizer file(s) are copied into `<storeDir>/tokenizers/<sha256>/` (an upload
//             directory is deleted after the import) and the config records their absolute path
//             under `tokenizer`, which versions.ts's tokenizerPathOf() reads.
// - export:   a manifest version is streamed from its objects (header, then each tensor); a
//             version stored as a whole .safetensors is served as is; any other (the bundled
//             llama2.c base) is converted once into `<exportDir>/<sha256>.safetensors` and reused.

import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { UserInputError, type ExportService, type ImportedModel, type ModelImporter, type ResolvedVersion } from '../services.ts';
import { SnapshotStore } from '../store/snapshot-store.ts';
import { writeFileAtomicSync } from '../util/atomic.ts';
import { isDir, isFile, sha256Hex } from '../util/fs.ts';
import { CHAT_TEMPLATE_FILES } from './chat.ts';
import { ConfigError, configToHf } from './config.ts';
import { ModelLoadError, readFileBounded } from './hf.ts';
import { Llama2cError } from './llama2c.ts';
import { loadModelFromPath, type LoadedModel } from './registry.ts';
import { isManifestPath, manifestStream, saveSnapshot } from './snapshots.ts';
import { SafetensorsError } from './safetensors.ts';
import { loadHfTokenizer, loadLlama2cTokenizer, loadSentencePieceTokenizer, MAX_TOKENIZER_FILE_BYTES, TokenizerError, type TextTokenizer } from './tokenizer.ts';
import { loadVersion, resolvePath } from './versions.ts';
import { firstNonFinite, numelOfTensor, saveSafetensorsWeights, weightBytes, weightsDtypeOf, WeightsError, type ModelWeights } from './weights.ts';

export const GiB = 1024 ** 3;

/** Error classes of the model layer that mean "the input is unusable" (→ UserInputError → 400). */
export const MODEL_INPUT_ERRORS: (abstract new (...a: never[]) => Error)[] = [ModelLoadError, SafetensorsError, WeightsError, ConfigError, Llama2cError, TokenizerError];

/**
 * `e` as a UserInputError (prefixed) when it is one of `inputErrors` (an error with a string
 * `path`, as PeftError has, becomes that field's error); anything else is ours and passes through.
 */
export function asUserError(e: unknown, prefix: string, inputErrors = MODEL_INPUT_ERRORS): unknown {
  if (e instanceof UserInputError) return e;
  if (e instanceof Error && inputErrors.some((C) => e instanceof C)) {
    const p = (e as { path?: unknown }).path;
    const path = typeof p === 'string' ? p : '';
    return new UserInputError(`${prefix}: ${e.message}`, path ? [{ path, message: e.message }] : undefined);
  }
  return e;
}

export function checkPathString(p: unknown, what: string): string {
  if (typeof p !== 'string' || p.length === 0) throw new UserInputError(`${what} must be a non-empty path`);
  if (p.length > 4096 || p.includes('\0')) throw new UserInputError(`${what} is not a usable path`);
  return p;
}

/** Total parameters (each stored tensor once; a tied classifier is the embedding). */
function paramCount(w: ModelWeights): number {
  let n = 0;
  for (const t of w.tensors.values()) n += numelOfTensor(t);
  return n;
}

function checkFinite(w: ModelWeights, what: string): void {
  for (const [name, t] of w.tensors) {
    const i = firstNonFinite(t); // a 16-bit tensor is checked on its bits (not decoded to f32)
    if (i >= 0) throw new UserInputError(`${what}: tensor ${name} holds a non-finite value (${t.bits ? 'a NaN or ±Inf' : t.data[i]}) at index ${i}`);
  }
}

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

// ------------------------------------------------------------------------------------- import

export function createModelImporter(opts: { maxModelFileBytes?: number } = {}): ModelImporter {
  const maxModelFileBytes = opts.maxModelFileBytes ?? 16 * GiB;
  return {
    async import(req) {
      const source = resolve(checkPathString(req.source, 'source'));
      const storeDir = checkPathString(req.storeDir, 'storeDir');
      if (!existsSync(source)) throw new UserInputError(`model path ${source} does not exist`);
      let loaded: LoadedModel;
      try {
        loaded = loadModelFromPath(source, { maxFileBytes: maxModelFileBytes, dtype: req.dtype ?? 'auto' });
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
      // One object per tensor (identical tensors of other imports are shared), then the manifest.
      const obj = await saveSnapshot(new SnapshotStore(storeDir), w);
      const config: Record<string, unknown> = {
        ...configToHf(w.config),
        format: 'safetensors',
        source_format: loaded.format,
        // Precision of the stored weights ("f32", "f16", "bf16", or "mixed" after knots) and their bytes at it.
        weights_dtype: weightsDtypeOf(w),
        weight_bytes: weightBytes(w),
        tokenizer: join(tokDir, tok.main),
        ...(tok.spModel ? { tokenizer_model: join(tokDir, tok.spModel) } : {}),
      };
      const out: ImportedModel = {
        architecture: w.config.family,
        params: paramCount(w),
        config,
        weights: { path: obj.path, sha256: obj.sha256, bytes: obj.bytes, addedBytes: obj.addedBytes, tensors: obj.tensors },
      };
      return out;
    },
  };
}

// ------------------------------------------------------------------------------------- export

/** A file name made of safe characters (Content-Disposition). */
export const safeName = (s: string) => s.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 128);

/** ExportService.weightsFile: the version's safetensors file, converted once when stored otherwise. */
export function createWeightsExporter(opts: { repoRoot: string; exportDir: string; maxModelFileBytes?: number }): ExportService['weightsFile'] {
  const { repoRoot, exportDir } = opts;
  const maxModelFileBytes = opts.maxModelFileBytes ?? 16 * GiB;
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
  return async (v) => {
    const src = resolvePath(repoRoot, v.path);
    if (!isFile(src)) throw new Error(`weights of ${v.model} v${v.version} are missing: ${src}`);
    const filename = `${safeName(v.model)}-v${v.version}.safetensors`;
    if (isManifestPath(src)) {
      const s = manifestStream(src);
      if (s.sha256 !== v.sha256) throw new Error(`manifest ${src} serves ${s.sha256}, but version ${v.model} v${v.version} records ${v.sha256}`);
      return { size: s.size, stream: s.stream, contentType: 'application/octet-stream', filename };
    }
    const path = extname(src) === '.safetensors' ? src : await convert(v, src);
    return { path, contentType: 'application/octet-stream', filename };
  };
}
