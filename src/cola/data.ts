// Training data: examples → token sequences → padded batches, epochs with seeded shuffling.
//
// Sequence layout. An example becomes `seq` = [BOS] + prompt tokens + completion tokens (+ EOS
// when `appendEos`), or [BOS] + text tokens (+ EOS) for `{text}`. BOS (`tok.bos`) is prepended
// here (texts are encoded with `{bos: false}`); a tokenizer without BOS (bos null) gets none, and
// one without EOS gets none appended.
// Prompt/completion boundary (`splitPromptCompletion`): the JOINED text prompt + completion is
// encoded once, and so is the prompt; the prompt tokens are the longest common prefix of the two
// encodings and the completion tokens the rest of the joined encoding. So the model trains on
// exactly the tokens it would see for the whole text — tokenizers that add a dummy-prefix space
// (llama2.c/SentencePiece) or merge across the boundary (a prompt ending in a space, as COPA's
// "… so ") would otherwise produce sequences that never occur in the joined text. Eval scoring
// of a candidate answer should use the same function.
// The model input is `seq` itself (length n ≤ maxSeqLen) and the targets are shifted by one:
// targets[i] = seq[i+1] for i < n-1, targets[n-1] = -1. A target is -1 (ignored by the loss)
// when the token it predicts is a prompt token (completion-only loss), and on padding.
// For `{text}` every next token is a target (the BOS itself is never a target).
// `{messages}` (a chat): the model's chat template renders the conversation (it writes BOS and the
// turn markers itself: no BOS is prepended and no EOS appended); a target counts when the token it
// predicts belongs to an assistant turn (the turn's content and the template's end-of-turn
// marker), located by `EncodeOptions.chat` (src/model/chat.ts). Truncation cuts at the end.
//
// Truncation to maxSeqLen (n ≤ maxSeqLen):
//   {prompt, completion}: the completion is kept. Prompt tokens are dropped from the START of
//     the prompt (BOS stays first), so the text nearest the completion survives (the question
//     at the end of a passage, as in MeZO's head truncation). If BOS + completion (+ EOS) alone is
//     longer than maxSeqLen, the whole prompt is dropped and the completion is cut at its END
//     (EOS included), keeping its beginning.
//   {text}: cut at the end (the beginning is kept).
// Batches are right-padded (real tokens first, as a causal model needs) with `padId` to the
// batch's longest sequence (`pad: 'longest'`) or to maxSeqLen (`pad: 'max'`); `keyMask` is 1 on
// real tokens, 0 on padding.
//
// Epochs. steps per epoch = ceil(n / batchSize) (the last batch of an epoch may be smaller; it
// is not dropped), total steps = epochs × steps per epoch. Epoch e visits the examples in the
// order of a Fisher–Yates permutation drawn from Rng(mixSeed(seed, e, SHUFFLE_STREAM)) (or
// 0 … n-1 without shuffling); batch b of epoch e is positions [b·B, min((b+1)·B, n)) of that
// order. `batchAt(step)` computes any step's batch directly, so a resumed run sees the same data.

import { splitAnswer } from '../model/answer.ts';
import { Rng, mixSeed } from '../util/rng.ts';
import { ColaConfigError, checkInt, describe } from './errors.ts';

/** What the trainer needs from a tokenizer (src/model/tokenizer.ts implements it). */
export interface Tokenizer {
  encode(text: string, opts: { bos: boolean }): number[];
  readonly bos: number;
  readonly eos: number;
}

/** Also accepted by the encoders: a tokenizer that may lack BOS and/or EOS (null). */
export interface TokenizerLike {
  encode(text: string, opts: { bos: boolean }): number[];
  readonly bos: number | null;
  readonly eos: number | null;
}

export interface ChatMessage {
  role: string;
  content: string;
}

export type Example = { text: string } | { prompt: string; completion: string } | { messages: ChatMessage[] };

/** A chat template's encoding of a conversation: its ids and which tokens are assistant turns. */
export interface ChatEncoder {
  encode(messages: readonly ChatMessage[]): { ids: number[]; assistant: boolean[] };
}

export const MAX_CHAT_MESSAGES = 256;

export const MAX_SEQ_LEN = 65_536;
export const MAX_BATCH = 4_096;
export const MAX_EPOCHS = 1_000;
export const MAX_EXAMPLES = 10_000_000;
export const MAX_TEXT_CHARS = 1_000_000;
const SHUFFLE_STREAM = 0x5348_5546; // "SHUF": keeps the data stream apart from LoRA-init streams

export interface EncodeOptions {
  maxSeqLen: number;
  /** Append EOS after the completion / text (teaches the model to stop). Default true. */
  appendEos?: boolean;
  /** The model's chat template, for `{messages}` examples (absent: they are refused). */
  chat?: ChatEncoder | null;
}

export interface EncodedExample {
  /** Model input ids, length n ≤ maxSeqLen. */
  ids: number[];
  /** targets[i] = ids[i+1] or -1 (prompt, last position). */
  targets: number[];
  /** Number of targets ≠ -1 (> 0). */
  lossTokens: number;
  truncated: boolean;
}

/** Checks the shape of one example; throws ColaConfigError naming `path`. */
export function checkExample(x: unknown, path: string): Example {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) {
    throw new ColaConfigError(path, 'must be an object {text}, {prompt, completion} or {messages}');
  }
  const o = x as Record<string, unknown>;
  const str = (k: string, allowEmpty: boolean): string => {
    const v = o[k];
    if (typeof v !== 'string') throw new ColaConfigError(`${path}.${k}`, `must be a string, got ${describe(v)}`);
    if (!allowEmpty && v.length === 0) throw new ColaConfigError(`${path}.${k}`, 'must not be empty');
    if (v.length > MAX_TEXT_CHARS) throw new ColaConfigError(`${path}.${k}`, `longer than ${MAX_TEXT_CHARS} characters`);
    return v;
  };
  if ('messages' in o) {
    if ('text' in o || 'prompt' in o || 'completion' in o) throw new ColaConfigError(path, 'has "messages" and "text"/"prompt"/"completion"');
    const ms = o.messages;
    if (!Array.isArray(ms) || ms.length === 0 || ms.length > MAX_CHAT_MESSAGES) throw new ColaConfigError(`${path}.messages`, `must be an array of 1 to ${MAX_CHAT_MESSAGES} messages`);
    let chars = 0;
    const messages = ms.map((m, i): ChatMessage => {
      const at = `${path}.messages[${i}]`;
      if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new ColaConfigError(at, 'must be an object {role, content}');
      const { role, content } = m as Record<string, unknown>;
      if (typeof role !== 'string' || !/^[a-z_]{1,32}$/.test(role)) throw new ColaConfigError(`${at}.role`, 'must be a role name such as "system", "user" or "assistant"');
      if (typeof content !== 'string') throw new ColaConfigError(`${at}.content`, `must be a string, got ${describe(content)}`);
      chars += content.length;
      return { role, content };
    });
    if (chars > MAX_TEXT_CHARS) throw new ColaConfigError(`${path}.messages`, `longer than ${MAX_TEXT_CHARS} characters in all`);
    if (!messages.some((m) => m.role === 'assistant')) throw new ColaConfigError(`${path}.messages`, 'needs an assistant message to train on');
    return { messages };
  }
  if ('text' in o) {
    if ('prompt' in o || 'completion' in o) throw new ColaConfigError(path, 'has both "text" and "prompt"/"completion"');
    return { text: str('text', false) };
  }
  if ('prompt' in o || 'completion' in o) return { prompt: str('prompt', true), completion: str('completion', false) };
  throw new ColaConfigError(path, 'must have "text", "prompt" and "completion", or "messages"');
}

function checkIds(ids: number[], what: string): number[] {
  for (const t of ids) {
    if (!Number.isInteger(t) || t < 0) throw new Error(`tokenizer returned an invalid id ${t} for ${what}`);
  }
  return ids;
}

/**
 * Token ids of a prompt and its completion as they occur in the joined text (see header): the
 * prompt part is the longest common prefix of encode(prompt) and encode(prompt + completion).
 * Throws ColaConfigError when the completion adds no token.
 */
export function splitPromptCompletion(tok: TokenizerLike, prompt: string, completion: string, path = 'example'): { prompt: number[]; completion: number[] } {
  const s = splitAnswer(tok, prompt, completion); // the one definition of the answer tokens (model/answer.ts)
  checkIds(s.prompt, `${path}.prompt`);
  checkIds(s.completion, `${path}.completion`);
  if (s.completion.length === 0) throw new ColaConfigError(`${path}.completion`, 'encodes to no tokens');
  return s;
}

/** Tokenizes, truncates and builds shifted targets for one example. */
export function encodeExample(tok: TokenizerLike, ex: Example, opts: EncodeOptions, path = 'example'): EncodedExample {
  const maxLen = checkInt('max_seq_len', opts.maxSeqLen, 2, MAX_SEQ_LEN);
  const eos = (opts.appendEos ?? true) && tok.eos !== null ? [tok.eos] : [];
  const head = tok.bos !== null ? [tok.bos] : [];
  let seq: number[];
  let nPrompt: number; // tokens of seq (from the start, BOS included) whose NEXT-token targets are ignored
  let truncated = false;
  if ('messages' in ex) {
    if (!opts.chat) throw new ColaConfigError(`${path}.messages`, 'the model has no chat template (tokenizer_config.json chat_template), so chat examples cannot be rendered; use {prompt, completion}');
    let enc: { ids: number[]; assistant: boolean[] };
    try {
      enc = opts.chat.encode(ex.messages);
    } catch (e) {
      throw new ColaConfigError(`${path}.messages`, (e as Error).message);
    }
    checkIds(enc.ids, `${path}.messages`);
    const n = Math.min(enc.ids.length, maxLen);
    const ids = enc.ids.slice(0, n);
    const targets = new Array<number>(n).fill(-1);
    let lossTokens = 0;
    for (let i = 0; i < n - 1; i++) {
      if (enc.assistant[i + 1]) {
        targets[i] = ids[i + 1]!;
        lossTokens++;
      }
    }
    if (lossTokens === 0) throw new ColaConfigError(path, enc.ids.length > maxLen ? `has no assistant token within the first ${maxLen} tokens` : 'has no assistant token to train on');
    return { ids, targets, lossTokens, truncated: enc.ids.length > maxLen };
  }
  if ('text' in ex) {
    const body = checkIds(tok.encode(ex.text, { bos: false }), `${path}.text`).concat(eos);
    if (body.length === 0) throw new ColaConfigError(`${path}.text`, 'encodes to no tokens');
    seq = [...head, ...body];
    if (seq.length > maxLen) {
      seq = seq.slice(0, maxLen);
      truncated = true;
    }
    nPrompt = 0;
  } else {
    const split = splitPromptCompletion(tok, ex.prompt, ex.completion, path);
    const prompt = split.prompt;
    let comp = split.completion.concat(eos);
    const budget = maxLen - head.length;
    let keptPrompt = prompt;
    if (comp.length >= budget) {
      truncated = prompt.length > 0 || comp.length > budget;
      comp = comp.slice(0, budget);
      keptPrompt = [];
    } else if (prompt.length + comp.length > budget) {
      keptPrompt = prompt.slice(prompt.length - (budget - comp.length));
      truncated = true;
    }
    seq = [...head, ...keptPrompt, ...comp];
    nPrompt = head.length + keptPrompt.length;
  }
  const n = seq.length;
  const targets = new Array<number>(n).fill(-1);
  let lossTokens = 0;
  // Position i predicts seq[i+1]; it counts when seq[i+1] is a completion/text token.
  for (let i = Math.max(0, nPrompt - 1); i < n - 1; i++) {
    targets[i] = seq[i + 1]!;
    lossTokens++;
  }
  if (lossTokens === 0) throw new ColaConfigError(path, 'has no token to train on after truncation');
  return { ids: seq, targets, lossTokens, truncated };
}

export interface Batch {
  /** Rows (examples) and padded length. */
  B: number;
  T: number;
  /** (B, T) row-major. */
  ids: Int32Array;
  /** (B, T), -1 = ignored. */
  targets: Int32Array;
  /** (B, T), 1 = real token, 0 = padding. */
  keyMask: Uint32Array;
  /** Count of targets ≠ -1 (the loss is their mean). */
  lossTokens: number;
  /** Real (non-padding) tokens; B·T counts what the kernels compute. */
  realTokens: number;
}

export interface BatchOptions {
  pad?: 'longest' | 'max';
  maxSeqLen?: number;
  padId?: number;
}

/** Right-pads encoded examples into one batch. */
export function makeBatch(rows: readonly EncodedExample[], opts: BatchOptions = {}): Batch {
  if (rows.length === 0) throw new RangeError('a batch needs at least one example');
  const longest = Math.max(...rows.map((r) => r.ids.length));
  let T = longest;
  if (opts.pad === 'max') {
    if (opts.maxSeqLen === undefined) throw new RangeError("pad: 'max' needs maxSeqLen");
    if (opts.maxSeqLen < longest) throw new RangeError(`a row of ${longest} tokens exceeds maxSeqLen ${opts.maxSeqLen}`);
    T = opts.maxSeqLen;
  }
  const B = rows.length;
  if (B > MAX_BATCH) throw new RangeError(`a batch of ${B} rows exceeds ${MAX_BATCH}`);
  const padId = opts.padId ?? 0;
  if (!Number.isInteger(padId) || padId < 0 || padId > 0x7fffffff) throw new RangeError(`padId must be a non-negative int32, got ${padId}`);
  const ids = new Int32Array(B * T).fill(padId);
  const targets = new Int32Array(B * T).fill(-1);
  const keyMask = new Uint32Array(B * T);
  let lossTokens = 0;
  let realTokens = 0;
  rows.forEach((r, b) => {
    if (r.ids.length !== r.targets.length) throw new RangeError(`row ${b}: ids and targets differ in length`);
    for (let i = 0; i < r.ids.length; i++) {
      ids[b * T + i] = r.ids[i]!;
      targets[b * T + i] = r.targets[i]!;
      keyMask[b * T + i] = 1;
    }
    lossTokens += r.lossTokens;
    realTokens += r.ids.length;
  });
  return { B, T, ids, targets, keyMask, lossTokens, realTokens };
}

export interface EpochConfig {
  /** Number of training examples. */
  n: number;
  batchSize: number;
  epochs: number;
  seed: number;
  shuffle?: boolean; // default true
}

function checkEpochs(c: EpochConfig): void {
  checkInt('train', c.n, 1, MAX_EXAMPLES);
  checkInt('batch_size', c.batchSize, 1, MAX_BATCH);
  checkInt('epochs', c.epochs, 1, MAX_EPOCHS);
  checkInt('seed', c.seed, 0, 2 ** 32 - 1);
}

export function stepsPerEpoch(n: number, batchSize: number): number {
  checkInt('train', n, 1, MAX_EXAMPLES);
  checkInt('batch_size', batchSize, 1, MAX_BATCH);
  return Math.ceil(n / batchSize);
}

export function totalSteps(c: EpochConfig): number {
  checkEpochs(c);
  return c.epochs * stepsPerEpoch(c.n, c.batchSize);
}

/** The order in which epoch `epoch` (0-based) visits the examples. */
export function epochOrder(c: EpochConfig, epoch: number): number[] {
  checkEpochs(c);
  checkInt('epoch', epoch, 0, c.epochs - 1);
  const order = Array.from({ length: c.n }, (_, i) => i);
  if (c.shuffle ?? true) new Rng(mixSeed(c.seed, epoch, SHUFFLE_STREAM)).shuffle(order);
  return order;
}

/** Which examples optimizer step `step` (0 ≤ step < total) trains on, and its epoch. */
export function batchAt(c: EpochConfig, step: number): { epoch: number; indices: number[] } {
  const total = totalSteps(c);
  if (!Number.isInteger(step) || step < 0 || step >= total) throw new RangeError(`step ${step} outside [0, ${total})`);
  const spe = stepsPerEpoch(c.n, c.batchSize);
  const epoch = Math.floor(step / spe);
  const b = step % spe;
  // A trainer asks for consecutive steps: keep the last epoch's order (O(n) to draw) around.
  const key = `${c.n}:${c.seed}:${c.shuffle ?? true}:${epoch}`;
  if (lastOrder?.key !== key) lastOrder = { key, order: epochOrder(c, epoch) };
  return { epoch, indices: lastOrder.order.slice(b * c.batchSize, Math.min((b + 1) * c.batchSize, c.n)) };
}

let lastOrder: { key: string; order: number[] } | null = null;

/** Iterates every step's batch of example indices in order (one permutation per epoch). */
export function* iterateBatches(c: EpochConfig, fromStep = 0): Generator<{ step: number; epoch: number; indices: number[] }> {
  const total = totalSteps(c);
  const spe = stepsPerEpoch(c.n, c.batchSize);
  let order: number[] | null = null;
  let orderEpoch = -1;
  for (let step = fromStep; step < total; step++) {
    const epoch = Math.floor(step / spe);
    if (epoch !== orderEpoch) {
      order = epochOrder(c, epoch);
      orderEpoch = epoch;
    }
    const b = step % spe;
    yield { step, epoch, indices: order!.slice(b * c.batchSize, Math.min((b + 1) * c.batchSize, c.n)) };
  }
}
