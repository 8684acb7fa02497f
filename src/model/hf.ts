// Hugging Face folder loader: config.json + model.safetensors, or sharded safetensors with
// model.safetensors.index.json. PyTorch pickle files are refused. All reads are size-bounded.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { type ModelConfig, configFromHf, configToHf } from './config.ts';
import { PICKLE_MESSAGE, SafetensorsError, type TensorToWrite, encodeSafetensors, readSafetensorsFile, type ParsedSafetensors } from './safetensors.ts';
import { type ModelWeights, WeightsError, saveSafetensorsWeights, tensorToWrite, weightsFromSafetensors } from './weights.ts';

export class ModelLoadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelLoadError';
  }
}

export interface HfLoadOptions {
  /** Largest accepted weight file (default 16 GiB). */
  maxFileBytes?: number;
  /** Largest accepted JSON file (config, index; default 16 MiB). */
  maxJsonBytes?: number;
  /** Most shards accepted in an index (default 1024). */
  maxShards?: number;
}

const GiB = 1024 ** 3;

/** Reads a regular file after checking its size against `max`. */
export function readFileBounded(path: string, max: number, what = 'file'): Uint8Array {
  let st;
  try {
    st = statSync(path);
  } catch {
    throw new ModelLoadError(`${what} ${path} does not exist`);
  }
  if (!st.isFile()) throw new ModelLoadError(`${what} ${path} is not a regular file`);
  if (st.size > max) throw new ModelLoadError(`${what} ${path} is ${st.size} bytes, over the limit of ${max}`);
  const b = readFileSync(path);
  // A plain Uint8Array view (Buffer's slice() would alias instead of copying).
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

export function readJsonBounded(path: string, max: number, what: string): unknown {
  const bytes = readFileBounded(path, max, what);
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    throw new ModelLoadError(`${what} ${path} is not valid UTF-8 JSON: ${(e as Error).message}`);
  }
}

function parseFile(path: string, max: number): ParsedSafetensors {
  let st;
  try {
    st = statSync(path);
  } catch {
    throw new ModelLoadError(`weights file ${path} does not exist`);
  }
  if (!st.isFile()) throw new ModelLoadError(`weights file ${path} is not a regular file`);
  if (st.size > max) throw new ModelLoadError(`weights file ${path} is ${st.size} bytes, over the limit of ${max}`);
  try {
    // Streamed, one buffer per tensor kept by the weights (no whole-file copy; bench/load-rss.ts).
    return readSafetensorsFile(path);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new SafetensorsError(`${basename(path)}: ${e.message}`);
    throw e;
  }
}

/**
 * Validates a model.safetensors.index.json object and returns the shard file names (sorted) and
 * the weight map. Shard names must be plain file names in the folder ending in .safetensors.
 */
export function parseShardIndex(json: unknown, dir: string, maxShards = 1024): { shards: string[]; weightMap: Map<string, string> } {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new ModelLoadError('model.safetensors.index.json must be a JSON object');
  const wm = (json as Record<string, unknown>).weight_map;
  if (typeof wm !== 'object' || wm === null || Array.isArray(wm)) throw new ModelLoadError('model.safetensors.index.json: weight_map must be an object');
  const weightMap = new Map<string, string>();
  const shards = new Set<string>();
  for (const [tensor, file] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof file !== 'string') throw new ModelLoadError(`index: weight_map[${JSON.stringify(tensor)}] must be a file name`);
    if (file.length === 0 || file.length > 255 || file.includes('/') || file.includes('\\') || file.includes('\0') || file === '.' || file === '..' || file.startsWith('.')) {
      throw new ModelLoadError(`index: shard name ${JSON.stringify(file)} must be a plain file name inside the model folder (no paths)`);
    }
    if (!file.endsWith('.safetensors')) throw new ModelLoadError(`index: shard ${JSON.stringify(file)} is not a .safetensors file`);
    weightMap.set(tensor, file);
    shards.add(file);
  }
  if (weightMap.size === 0) throw new ModelLoadError('index: weight_map is empty');
  if (shards.size > maxShards) throw new ModelLoadError(`index lists ${shards.size} shards, over the limit of ${maxShards}`);
  for (const s of shards) {
    const p = join(dir, s);
    if (!existsSync(p) || !statSync(p).isFile()) throw new ModelLoadError(`index: shard ${s} is not in the model folder ${dir}`);
  }
  return { shards: [...shards].sort(), weightMap };
}

/** Loads an HF model folder's config.json. */
export function loadHfConfig(dir: string, opts: HfLoadOptions = {}): ModelConfig {
  const p = join(dir, 'config.json');
  if (!existsSync(p)) throw new ModelLoadError(`${dir} has no config.json`);
  return configFromHf(readJsonBounded(p, opts.maxJsonBytes ?? 16 * 1024 * 1024, 'config'));
}

/** Loads config + weights from an HF folder (single file or sharded), converting to f32. */
export function loadHfWeights(dir: string, opts: HfLoadOptions = {}): ModelWeights {
  const config = loadHfConfig(dir, opts);
  const maxFile = opts.maxFileBytes ?? 16 * GiB;
  const single = join(dir, 'model.safetensors');
  const index = join(dir, 'model.safetensors.index.json');
  let files: ParsedSafetensors[];
  if (existsSync(index)) {
    const { shards, weightMap } = parseShardIndex(readJsonBounded(index, opts.maxJsonBytes ?? 16 * 1024 * 1024, 'index'), dir, opts.maxShards);
    files = [];
    const seen = new Set<string>();
    for (const s of shards) {
      const f = parseFile(join(dir, s), maxFile);
      for (const name of f.tensors.keys()) {
        const listed = weightMap.get(name);
        if (listed !== s) {
          throw new ModelLoadError(listed === undefined ? `shard ${s} holds tensor ${name}, which the index does not list` : `tensor ${name} is in shard ${s} but the index says ${listed}`);
        }
        seen.add(name);
      }
      files.push(f);
    }
    for (const name of weightMap.keys()) if (!seen.has(name)) throw new ModelLoadError(`index lists tensor ${name} in ${weightMap.get(name)}, but that shard does not hold it`);
  } else if (existsSync(single)) {
    files = [parseFile(single, maxFile)];
  } else {
    const names = safeList(dir);
    const pickles = names.filter((n) => /\.(bin|pt|pth|ckpt)$/.test(n));
    if (pickles.length) throw new ModelLoadError(`${dir}: only ${pickles.join(', ')} found — ${PICKLE_MESSAGE}`);
    throw new ModelLoadError(`${dir} has neither model.safetensors nor model.safetensors.index.json`);
  }
  try {
    return weightsFromSafetensors(config, files);
  } catch (e) {
    if (e instanceof WeightsError) throw new WeightsError(`${dir}: ${e.message}`);
    throw e;
  }
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** The files of an HF folder for the weights: config.json text and model.safetensors bytes. */
export function hfFolderFiles(w: ModelWeights): { 'config.json': string; 'model.safetensors': Uint8Array } {
  return { 'config.json': JSON.stringify(configToHf(w.config), null, 2), 'model.safetensors': saveSafetensorsWeights(w) };
}

/**
 * Splits weights into shards of at most `maxShardBytes` data bytes each (tensors in sorted name
 * order, a tensor never split), returning the shard files and the index JSON, as
 * transformers' save_pretrained(max_shard_size) does.
 */
export function shardWeights(w: ModelWeights, maxShardBytes: number): { files: Map<string, Uint8Array>; index: Record<string, unknown> } {
  const names = [...w.tensors.keys()].sort();
  const groups: string[][] = [];
  let cur: string[] = [];
  let size = 0;
  for (const n of names) {
    const b = tensorToWrite(w.tensors.get(n)!).data.byteLength;
    if (cur.length && size + b > maxShardBytes) {
      groups.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(n);
    size += b;
  }
  if (cur.length) groups.push(cur);
  const files = new Map<string, Uint8Array>();
  const weightMap: Record<string, string> = {};
  let total = 0;
  groups.forEach((g, i) => {
    const fname = `model-${String(i + 1).padStart(5, '0')}-of-${String(groups.length).padStart(5, '0')}.safetensors`;
    const m = new Map<string, TensorToWrite>();
    for (const n of g) {
      const t = tensorToWrite(w.tensors.get(n)!);
      m.set(n, t);
      weightMap[n] = fname;
      total += t.data.byteLength;
    }
    files.set(fname, encodeSafetensors(m, { format: 'pt' }));
  });
  return { files, index: { metadata: { total_size: total }, weight_map: weightMap } };
}

