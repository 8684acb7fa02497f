// Bundled models and format detection: loadModelFromPath(path) → { weights, tokenizer }.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ModelLoadError, loadHfWeights, readFileBounded } from './hf.ts';
import { loadLlama2c } from './llama2c.ts';
import { isManifestPath, readManifestTensors } from './snapshots.ts';
import { PICKLE_MESSAGE, SafetensorsError, looksLikePickle, readSafetensorsFile } from './safetensors.ts';
import { type TextTokenizer, loadHfTokenizer, loadLlama2cTokenizer, loadSentencePieceTokenizer, MAX_TOKENIZER_FILE_BYTES } from './tokenizer.ts';
import { type ModelWeights, type WeightsDtype, loadSavedSafetensorsWeights, setWeightsDtype } from './weights.ts';
import { ChatTemplateError, loadChatTemplate, type ChatTemplate } from './chat.ts';

/** Folder of the bundled stories260K model (llama2.c checkpoint + tokenizers). */
export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('../../models/stories260K/', import.meta.url));

export interface ModelEntry {
  name: string;
  /** A folder or checkpoint path accepted by loadModelFromPath. */
  path: string;
  checkpoint: string;
  tokenizer: string;
  license: string;
}

export const DEFAULT_MODEL: ModelEntry = {
  name: 'stories260K',
  path: DEFAULT_MODEL_DIR,
  checkpoint: join(DEFAULT_MODEL_DIR, 'stories260K.bin'),
  tokenizer: join(DEFAULT_MODEL_DIR, 'tok512.bin'),
  license: 'MIT',
};

/** Bundled models by name. */
export const BUNDLED_MODELS: ReadonlyMap<string, ModelEntry> = new Map([[DEFAULT_MODEL.name, DEFAULT_MODEL]]);

export type ModelFormat = 'llama2c' | 'hf' | 'safetensors';

export interface LoadedModel {
  weights: ModelWeights;
  tokenizer: TextTokenizer;
  format: ModelFormat;
  /** The checkpoint (file) or folder that was loaded. */
  source: string;
  /**
   * The tokenizer's chat template (tokenizer_config.json's chat_template, or chat_template.jinja /
   * .json beside the tokenizer); null when there is none; the error when it is unusable (the model
   * still serves completions).
   */
  chat: ChatTemplate | ChatTemplateError | null;
}

/** The chat template of a tokenizer folder, or why it cannot be used. */
export function chatOf(dir: string): ChatTemplate | ChatTemplateError | null {
  try {
    return loadChatTemplate(dir);
  } catch (e) {
    if (e instanceof ChatTemplateError) return e;
    return new ChatTemplateError(`cannot read the chat template in ${dir}: ${(e as Error).message}`);
  }
}

export interface LoadModelOptions {
  /** Explicit tokenizer file (tokenizer.bin, tokenizer.model or tokenizer.json). */
  tokenizerPath?: string;
  /** Largest checkpoint accepted (default 16 GiB). */
  maxFileBytes?: number;
  /** Precision of the weights (weights.ts setWeightsDtype): the checkpoint's own by default ("auto"). */
  dtype?: WeightsDtype;
}

const GiB = 1024 ** 3;

function loadTokenizerFile(path: string, vocabSize: number): TextTokenizer {
  if (path.endsWith('.model')) return loadSentencePieceTokenizer(readFileBounded(path, MAX_TOKENIZER_FILE_BYTES, 'tokenizer'));
  if (path.endsWith('.json')) return loadHfTokenizer(dirname(path));
  return loadLlama2cTokenizer(readFileBounded(path, MAX_TOKENIZER_FILE_BYTES, 'tokenizer'), vocabSize);
}

function checkVocab(w: ModelWeights, t: TextTokenizer, src: string): void {
  if (t.vocabSize > w.config.vocabSize) {
    throw new ModelLoadError(`${src}: the tokenizer has ${t.vocabSize} tokens but the model only ${w.config.vocabSize}`);
  }
}

/** tokenizer.bin / tok*.bin next to a llama2.c checkpoint (or in a folder), else tokenizer.model. */
function findLlama2cTokenizer(dir: string, exclude: string): string {
  const names = readdirSync(dir).sort();
  const bins = names.filter((n) => /^tok.*\.bin$/.test(n) && n !== exclude);
  if (bins.length === 1) return join(dir, bins[0]!);
  if (bins.length > 1) throw new ModelLoadError(`${dir}: several tokenizer files (${bins.join(', ')}); pass tokenizerPath`);
  const models = names.filter((n) => n.endsWith('.model'));
  if (models.length === 1) return join(dir, models[0]!);
  throw new ModelLoadError(`${dir}: no llama2.c tokenizer (tokenizer.bin / tok*.bin) or sentencepiece .model found; pass tokenizerPath`);
}

/**
 * Loads a model and its tokenizer, detecting the format:
 * - a folder with config.json: Hugging Face (model.safetensors or sharded + index; tokenizer.json,
 *   vocab.json + merges.txt, or tokenizer.model);
 * - a folder without config.json: exactly one llama2.c checkpoint `*.bin` plus a `tok*.bin`
 *   tokenizer (or a sentencepiece .model);
 * - a `.safetensors` file written by saveSafetensorsWeights (config in its metadata), tokenizer from
 *   tokenizerPath or found beside it;
 * - a version's `.manifest` (model/snapshots.ts: the same file as per-tensor objects), tokenizer
 *   from tokenizerPath;
 * - any other file: a llama2.c checkpoint, tokenizer found beside it.
 * PyTorch pickle files are refused.
 */
export function loadModelFromPath(path: string = DEFAULT_MODEL_DIR, opts: LoadModelOptions = {}): LoadedModel {
  const m = loadModelAsIs(path, opts);
  setWeightsDtype(m.weights, opts.dtype ?? 'auto');
  return m;
}

function loadModelAsIs(path: string, opts: LoadModelOptions): LoadedModel {
  const maxFile = opts.maxFileBytes ?? 16 * GiB;
  if (!existsSync(path)) throw new ModelLoadError(`model path ${path} does not exist`);
  const st = statSync(path);
  if (st.isDirectory()) {
    if (existsSync(join(path, 'config.json'))) {
      const weights = loadHfWeights(path, { maxFileBytes: maxFile });
      const tokenizer = opts.tokenizerPath
        ? loadTokenizerFile(opts.tokenizerPath, weights.config.vocabSize)
        : loadHfTokenizer(path, { bos: weights.config.bosTokenId, eos: weights.config.eosTokenId });
      checkVocab(weights, tokenizer, path);
      return { weights, tokenizer, format: 'hf', source: path, chat: chatOf(opts.tokenizerPath ? dirname(opts.tokenizerPath) : path) };
    }
    const names = readdirSync(path).sort();
    const ckpts = names.filter((n) => n.endsWith('.bin') && !/^tok.*\.bin$/.test(n));
    if (ckpts.length === 0) {
      if (names.some((n) => n.endsWith('.safetensors'))) throw new ModelLoadError(`${path}: safetensors files without config.json; an HF folder needs config.json`);
      throw new ModelLoadError(`${path}: no config.json (Hugging Face) and no llama2.c checkpoint (*.bin)`);
    }
    if (ckpts.length > 1) throw new ModelLoadError(`${path}: several checkpoints (${ckpts.join(', ')}); pass the file path`);
    return loadModelAsIs(join(path, ckpts[0]!), opts);
  }
  if (isManifestPath(path)) {
    // Each tensor read from its object into the buffer the weights keep (as for a whole file).
    const parsed = readManifestTensors(path);
    const weights = loadSavedSafetensorsWeights(parsed);
    if (!opts.tokenizerPath) throw new ModelLoadError(`${path}: a stored version needs the tokenizer path of its model`);
    const tokenizer = loadTokenizerFile(opts.tokenizerPath, weights.config.vocabSize);
    checkVocab(weights, tokenizer, path);
    return { weights, tokenizer, format: 'safetensors', source: path, chat: chatOf(dirname(opts.tokenizerPath)) };
  }
  if (path.endsWith('.safetensors')) {
    if (st.size > maxFile) throw new ModelLoadError(`checkpoint ${path} is ${st.size} bytes, over the limit of ${maxFile}`);
    // Streamed: each tensor read into the buffer the weights keep (no whole-file copy).
    let parsed;
    try {
      parsed = readSafetensorsFile(path);
    } catch (e) {
      if (e instanceof SafetensorsError && e.message === PICKLE_MESSAGE) throw new ModelLoadError(`${path}: ${PICKLE_MESSAGE}`);
      throw e;
    }
    const weights = loadSavedSafetensorsWeights(parsed);
    const tokPath = opts.tokenizerPath ?? findLlama2cTokenizer(dirname(path), basename(path));
    const tokenizer = loadTokenizerFile(tokPath, weights.config.vocabSize);
    checkVocab(weights, tokenizer, path);
    return { weights, tokenizer, format: 'safetensors', source: path, chat: chatOf(dirname(tokPath)) };
  }
  const bytes = readFileBounded(path, maxFile, 'checkpoint');
  if (looksLikePickle(bytes)) throw new ModelLoadError(`${path}: ${PICKLE_MESSAGE}`);
  const weights = loadLlama2c(bytes);
  const tokPath = opts.tokenizerPath ?? findLlama2cTokenizer(dirname(path), basename(path));
  const tokenizer = loadTokenizerFile(tokPath, weights.config.vocabSize);
  checkVocab(weights, tokenizer, path);
  return { weights, tokenizer, format: 'llama2c', source: path, chat: chatOf(dirname(tokPath)) };
}

/** Loads a bundled model by name (default stories260K). */
export function loadBundledModel(name = DEFAULT_MODEL.name): LoadedModel {
  const m = BUNDLED_MODELS.get(name);
  if (!m) throw new ModelLoadError(`no bundled model named ${JSON.stringify(name)} (have: ${[...BUNDLED_MODELS.keys()].join(', ')})`);
  return loadModelFromPath(m.checkpoint, { tokenizerPath: m.tokenizer });
}
