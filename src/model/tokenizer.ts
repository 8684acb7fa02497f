// Tokenizers behind one interface:
// - llama2.c `tokenizer.bin` (e.g. tok512.bin): the BPE of llama2.c's `encode()` reproduced exactly
//   (dummy-prefix " " token, per-UTF-8-character lookup with byte fallback <0xXX> = byte + 3, then
//   repeatedly merge the adjacent pair whose merged piece has the highest score, leftmost on ties).
// - sentencepiece `tokenizer.model` (BPE models only): the protobuf is read here (bounded), its
//   pieces are turned into the same vocabulary llama2.c's export script writes ('▁' → ' ') and
//   encoded with the same BPE. This reproduces llama2.c, not every sentencepiece normalisation
//   rule (no NFKC, no whitespace collapsing).
// - Hugging Face `tokenizer.json` and GPT-2 `vocab.json` + `merges.txt`, through
//   @huggingface/tokenizers (a tokenizer.json object is built in memory for vocab/merges).
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

export class TokenizerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TokenizerError';
  }
}

export interface EncodeOptions {
  /** Prepend BOS. Default: true for llama2.c/sentencepiece; the tokenizer's own rule for HF. */
  bos?: boolean;
  /** Append EOS (default false). */
  eos?: boolean;
}

/** Incremental decoder for streaming: returns only complete UTF-8 characters. */
export interface StreamDecoder {
  /** Text made complete by this token ('' while a multi-byte character is still partial). */
  decodeToken(id: number): string;
  /** Whatever is still buffered (incomplete bytes become U+FFFD). */
  flush(): string;
}

export interface TextTokenizer {
  readonly kind: 'llama2c' | 'sentencepiece' | 'hf';
  readonly vocabSize: number;
  readonly bos: number | null;
  readonly eos: number | null;
  encode(text: string, opts?: EncodeOptions): number[];
  /** Text of the ids, skipping BOS/EOS (control) tokens. */
  decode(ids: readonly number[]): string;
  /**
   * A streaming decoder. `context`: ids already emitted before (e.g. the prompt), used only for
   * context (leading-space rule, partial characters) — their text is not returned.
   */
  createStreamDecoder(opts?: { context?: readonly number[] }): StreamDecoder;
  /** The vocabulary entry of an id (for debugging), or undefined. */
  idToPiece(id: number): string | undefined;
}

/** Default bound on encode input: 1 Mi UTF-16 code units. */
export const DEFAULT_MAX_INPUT_CHARS = 1 << 20;
/** Bound on tokenizer files read from disk (64 MiB). */
export const MAX_TOKENIZER_FILE_BYTES = 64 << 20;
/** Largest vocabulary accepted. */
export const MAX_VOCAB = 1 << 21;

function checkInput(text: string, max: number): void {
  if (typeof text !== 'string') throw new TokenizerError('text must be a string');
  if (text.length > max) throw new TokenizerError(`text is ${text.length} characters, over the limit of ${max}`);
}

function checkIds(ids: readonly number[], vocab: number): void {
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new TokenizerError(`token id ${id} is outside the vocabulary (0..${vocab - 1})`);
  }
}

/** Bytes as a string of code units 0..255 (a Map key for byte strings). */
function binary(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]!);
  return s;
}

// ---------------------------------------------------------------------------------------------
// llama2.c-style scored BPE

export interface ScoredVocab {
  pieces: Uint8Array[];
  scores: Float32Array;
  bos: number | null;
  eos: number | null;
  /** Id of <0x00>; byte b falls back to id byteBase + b. null: unknown bytes map to `unk`. */
  byteBase: number | null;
  unk: number;
}

const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;

/** Binary max-heap keyed by (score desc, left position asc). */
class PairHeap {
  private score: number[] = [];
  private left: number[] = [];
  private right: number[] = [];
  private merged: number[] = [];
  get size(): number {
    return this.score.length;
  }
  private before(i: number, j: number): boolean {
    const a = this.score[i]!, b = this.score[j]!;
    return a > b || (a === b && this.left[i]! < this.left[j]!);
  }
  private swap(i: number, j: number): void {
    for (const arr of [this.score, this.left, this.right, this.merged]) {
      const t = arr[i]!;
      arr[i] = arr[j]!;
      arr[j] = t;
    }
  }
  push(score: number, left: number, right: number, merged: number): void {
    this.score.push(score);
    this.left.push(left);
    this.right.push(right);
    this.merged.push(merged);
    let i = this.score.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }
  /** Removes and returns the best entry. */
  pop(): { left: number; right: number; merged: number } {
    const out = { left: this.left[0]!, right: this.right[0]!, merged: this.merged[0]! };
    const last = this.score.length - 1;
    this.swap(0, last);
    this.score.pop();
    this.left.pop();
    this.right.pop();
    this.merged.pop();
    let i = 0;
    const n = this.score.length;
    for (;;) {
      const l = 2 * i + 1, r = l + 1;
      let m = i;
      if (l < n && this.before(l, m)) m = l;
      if (r < n && this.before(r, m)) m = r;
      if (m === i) break;
      this.swap(i, m);
      i = m;
    }
    return out;
  }
}

export class ScoredBpeTokenizer implements TextTokenizer {
  readonly vocabSize: number;
  readonly bos: number | null;
  readonly eos: number | null;
  private readonly keys: string[];
  private readonly lookup = new Map<string, number>();
  private readonly byteOf: Int16Array; // byte value of a <0xXX> piece, -1 otherwise
  private readonly spaceId: number | undefined;
  private readonly maxInputChars: number;

  constructor(readonly kind: 'llama2c' | 'sentencepiece', private readonly v: ScoredVocab, opts: { maxInputChars?: number } = {}) {
    const n = v.pieces.length;
    if (n === 0 || n > MAX_VOCAB) throw new TokenizerError(`vocabulary size ${n} is outside 1..${MAX_VOCAB}`);
    if (v.byteBase !== null && (v.byteBase < 0 || v.byteBase + 256 > n)) throw new TokenizerError(`byte fallback ids ${v.byteBase}..${v.byteBase + 255} are outside the vocabulary`);
    this.vocabSize = n;
    this.bos = v.bos;
    this.eos = v.eos;
    this.maxInputChars = opts.maxInputChars ?? DEFAULT_MAX_INPUT_CHARS;
    this.keys = v.pieces.map(binary);
    this.byteOf = new Int16Array(n).fill(-1);
    for (let i = 0; i < n; i++) {
      // llama2.c sorts the vocabulary and binary-searches it; with duplicate pieces the id found
      // is unspecified there. Here the first id wins.
      if (!this.lookup.has(this.keys[i]!)) this.lookup.set(this.keys[i]!, i);
      const m = BYTE_PIECE.exec(this.keys[i]!);
      if (m) this.byteOf[i] = parseInt(m[1]!, 16);
    }
    this.spaceId = this.lookup.get(' ');
  }

  idToPiece(id: number): string | undefined {
    const p = this.v.pieces[id];
    return p ? new TextDecoder().decode(p) : undefined;
  }

  /** Score of an id (the merge priority). */
  score(id: number): number {
    return this.v.scores[id]!;
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    checkInput(text, this.maxInputChars);
    const bytes = new TextEncoder().encode(text);
    const toks: number[] = [];
    if ((opts.bos ?? true) && this.bos !== null) toks.push(this.bos);
    const start = toks.length;
    // llama2.c: add_dummy_prefix — the " " token before non-empty text.
    if (bytes.length > 0 && this.spaceId !== undefined) toks.push(this.spaceId);
    let buf: number[] = [];
    for (let i = 0; i < bytes.length; i++) {
      const c = bytes[i]!;
      if ((c & 0xc0) !== 0x80) buf = [];
      buf.push(c);
      const next = i + 1 < bytes.length ? bytes[i + 1]! : 0;
      if ((next & 0xc0) === 0x80 && buf.length < 4) continue;
      const id = this.lookup.get(String.fromCharCode(...buf));
      if (id !== undefined) toks.push(id);
      else for (const b of buf) toks.push(this.v.byteBase !== null ? this.v.byteBase + b : this.v.unk);
      buf = [];
    }
    const merged = this.merge(toks.slice(start));
    const out = toks.slice(0, start).concat(merged);
    if (opts.eos && this.eos !== null) out.push(this.eos);
    return out;
  }

  /** Repeatedly merges the adjacent pair with the best merged score (leftmost on ties). */
  private merge(tok: number[]): number[] {
    const n = tok.length;
    if (n < 2) return tok;
    const next = new Int32Array(n), prev = new Int32Array(n);
    const alive = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new PairHeap();
    const cur = tok.slice();
    const cand = (l: number, r: number) => {
      if (l < 0 || r < 0) return;
      const id = this.lookup.get(this.keys[cur[l]!]! + this.keys[cur[r]!]!);
      // llama2.c starts from best_score = -1e10 and requires a strictly greater score.
      if (id !== undefined && this.v.scores[id]! > -1e10) heap.push(this.v.scores[id]!, l, r, id);
    };
    for (let i = 0; i + 1 < n; i++) cand(i, i + 1);
    while (heap.size > 0) {
      const { left, right, merged } = heap.pop();
      // Stale entry: one side was merged away or changed since it was pushed.
      if (!alive[left] || !alive[right] || next[left] !== right) continue;
      const expect = this.lookup.get(this.keys[cur[left]!]! + this.keys[cur[right]!]!);
      if (expect !== merged) continue;
      cur[left] = merged;
      alive[right] = 0;
      next[left] = next[right]!;
      if (next[right]! >= 0) prev[next[right]!] = left;
      cand(prev[left]!, left);
      cand(left, next[left]!);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0 && i < n; i = next[i]!) out.push(cur[i]!);
    return out;
  }

  private isControl(id: number): boolean {
    return id === this.bos || id === this.eos;
  }

  /** Bytes of `id` following `prev` (null: start of text), as llama2.c's decode(). */
  tokenBytes(prev: number | null, id: number): Uint8Array {
    if (this.isControl(id)) return new Uint8Array(0);
    const b = this.byteOf[id]!;
    if (b >= 0) return Uint8Array.of(b);
    const p = this.v.pieces[id]!;
    // The dummy-prefix space is dropped at the start of a text (after BOS, or first token).
    if ((prev === null || prev === this.bos) && p[0] === 0x20) return p.subarray(1);
    return p;
  }

  decode(ids: readonly number[]): string {
    checkIds(ids, this.vocabSize);
    const chunks: Uint8Array[] = [];
    let total = 0;
    let prev: number | null = null;
    for (const id of ids) {
      const b = this.tokenBytes(prev, id);
      chunks.push(b);
      total += b.length;
      prev = id;
    }
    const all = new Uint8Array(total);
    let o = 0;
    for (const c of chunks) {
      all.set(c, o);
      o += c.length;
    }
    return new TextDecoder().decode(all);
  }

  createStreamDecoder(opts: { context?: readonly number[] } = {}): StreamDecoder {
    const td = new TextDecoder();
    let prev: number | null = null;
    const push = (id: number) => {
      checkIds([id], this.vocabSize);
      const s = td.decode(this.tokenBytes(prev, id), { stream: true });
      prev = id;
      return s;
    };
    for (const id of opts.context ?? []) push(id);
    return { decodeToken: push, flush: () => td.decode() };
  }
}

// ---------------------------------------------------------------------------------------------
// llama2.c tokenizer.bin

/**
 * Parses llama2.c's tokenizer.bin: int32 max_token_length, then per token float32 score, int32
 * length, bytes. The vocabulary size is not stored: it is `vocabSize` (from the checkpoint), or,
 * when omitted, however many entries the file holds (which must end exactly at the end).
 */
export function loadLlama2cTokenizer(bytes: Uint8Array, vocabSize?: number, opts: { maxInputChars?: number } = {}): ScoredBpeTokenizer {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 4) throw new TokenizerError('tokenizer.bin is shorter than its 4-byte header');
  const maxLen = dv.getInt32(0, true);
  if (maxLen < 1 || maxLen > 1024) throw new TokenizerError(`tokenizer.bin: max_token_length ${maxLen} is outside 1..1024`);
  if (vocabSize !== undefined && (!Number.isInteger(vocabSize) || vocabSize < 1 || vocabSize > MAX_VOCAB)) throw new TokenizerError(`vocabulary size ${vocabSize} is out of range`);
  const pieces: Uint8Array[] = [];
  const scores: number[] = [];
  let o = 4;
  while (vocabSize === undefined ? o < bytes.length : pieces.length < vocabSize) {
    if (pieces.length >= MAX_VOCAB) throw new TokenizerError(`tokenizer.bin holds more than ${MAX_VOCAB} tokens`);
    if (o + 8 > bytes.length) throw new TokenizerError(`tokenizer.bin is truncated at token ${pieces.length}`);
    const score = dv.getFloat32(o, true);
    const len = dv.getInt32(o + 4, true);
    o += 8;
    if (len < 0 || len > maxLen) throw new TokenizerError(`tokenizer.bin: token ${pieces.length} has length ${len}, outside 0..max_token_length ${maxLen}`);
    if (o + len > bytes.length) throw new TokenizerError(`tokenizer.bin is truncated at token ${pieces.length}`);
    pieces.push(bytes.slice(o, o + len));
    scores.push(score);
    o += len;
  }
  if (o !== bytes.length) throw new TokenizerError(`tokenizer.bin has ${bytes.length - o} bytes after ${pieces.length} tokens (vocabulary size mismatch?)`);
  if (pieces.length < 259) throw new TokenizerError(`tokenizer.bin has ${pieces.length} tokens; llama2.c needs <unk>, <s>, </s> and 256 byte tokens`);
  return new ScoredBpeTokenizer('llama2c', { pieces, scores: Float32Array.from(scores), bos: 1, eos: 2, byteBase: 3, unk: 0 }, opts);
}

// ---------------------------------------------------------------------------------------------
// sentencepiece tokenizer.model (protobuf)

class ProtoReader {
  pos: number;
  constructor(private readonly b: Uint8Array, start: number, readonly end: number) {
    this.pos = start;
  }
  done(): boolean {
    return this.pos >= this.end;
  }
  varint(): bigint {
    let v = 0n;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new TokenizerError('tokenizer.model: truncated varint');
      const c = this.b[this.pos++]!;
      v |= BigInt(c & 0x7f) << BigInt(7 * i);
      if (!(c & 0x80)) return v;
    }
    throw new TokenizerError('tokenizer.model: varint longer than 10 bytes');
  }
  tag(): { field: number; wire: number } {
    const t = this.varint();
    if (t > 0xffffffffn) throw new TokenizerError('tokenizer.model: invalid field tag');
    return { field: Number(t >> 3n), wire: Number(t & 7n) };
  }
  int32(): number {
    return Number(BigInt.asIntN(32, this.varint()));
  }
  bytes(): Uint8Array {
    const n = this.varint();
    if (n > BigInt(this.end - this.pos)) throw new TokenizerError('tokenizer.model: length-delimited field runs past its message');
    const s = this.b.subarray(this.pos, this.pos + Number(n));
    this.pos += Number(n);
    return s;
  }
  sub(): ProtoReader {
    const s = this.bytes();
    return new ProtoReader(this.b, s.byteOffset - this.b.byteOffset, s.byteOffset - this.b.byteOffset + s.length);
  }
  float(): number {
    if (this.pos + 4 > this.end) throw new TokenizerError('tokenizer.model: truncated float');
    const v = new DataView(this.b.buffer, this.b.byteOffset + this.pos, 4).getFloat32(0, true);
    this.pos += 4;
    return v;
  }
  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.bytes();
    else if (wire === 5) this.pos += 4;
    else throw new TokenizerError(`tokenizer.model: unsupported protobuf wire type ${wire}`);
    if (this.pos > this.end) throw new TokenizerError('tokenizer.model: field runs past its message');
  }
}

export interface SentencePieceModel {
  pieces: { piece: string; score: number; type: number }[];
  modelType: number;
  byteFallback: boolean;
  unkId: number;
  bosId: number;
  eosId: number;
  padId: number;
  addDummyPrefix: boolean;
}

/** Piece types in sentencepiece_model.proto. */
export const SP_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

/** Reads the fields of a sentencepiece ModelProto this project uses. */
export function parseSentencePieceModel(bytes: Uint8Array): SentencePieceModel {
  const r = new ProtoReader(bytes, 0, bytes.length);
  const m: SentencePieceModel = { pieces: [], modelType: 1, byteFallback: false, unkId: 0, bosId: 1, eosId: 2, padId: -1, addDummyPrefix: true };
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  while (!r.done()) {
    const { field, wire } = r.tag();
    if (field === 1 && wire === 2) {
      if (m.pieces.length >= MAX_VOCAB) throw new TokenizerError(`tokenizer.model holds more than ${MAX_VOCAB} pieces`);
      const s = r.sub();
      let piece = '', score = 0, type = SP_TYPE.NORMAL as number;
      while (!s.done()) {
        const t = s.tag();
        if (t.field === 1 && t.wire === 2) {
          try {
            piece = utf8.decode(s.bytes());
          } catch {
            throw new TokenizerError(`tokenizer.model: piece ${m.pieces.length} is not valid UTF-8`);
          }
        } else if (t.field === 2 && t.wire === 5) score = s.float();
        else if (t.field === 3 && t.wire === 0) type = s.int32();
        else s.skip(t.wire);
      }
      m.pieces.push({ piece, score, type });
    } else if (field === 2 && wire === 2) {
      const s = r.sub(); // TrainerSpec
      while (!s.done()) {
        const t = s.tag();
        if (t.wire === 0 && t.field === 3) m.modelType = s.int32();
        else if (t.wire === 0 && t.field === 35) m.byteFallback = s.varint() !== 0n;
        else if (t.wire === 0 && t.field === 40) m.unkId = s.int32();
        else if (t.wire === 0 && t.field === 41) m.bosId = s.int32();
        else if (t.wire === 0 && t.field === 42) m.eosId = s.int32();
        else if (t.wire === 0 && t.field === 43) m.padId = s.int32();
        else s.skip(t.wire);
      }
    } else if (field === 3 && wire === 2) {
      const s = r.sub(); // NormalizerSpec
      while (!s.done()) {
        const t = s.tag();
        if (t.wire === 0 && t.field === 3) m.addDummyPrefix = s.varint() !== 0n;
        else s.skip(t.wire);
      }
    } else r.skip(wire);
  }
  return m;
}

/**
 * A sentencepiece BPE tokenizer.model as a ScoredBpeTokenizer: the vocabulary is built exactly as
 * llama2.c's tokenizer export does (BOS piece → "\n<s>\n", EOS → "\n</s>\n", '▁' → ' ').
 */
export function loadSentencePieceTokenizer(bytes: Uint8Array, opts: { maxInputChars?: number } = {}): ScoredBpeTokenizer {
  const m = parseSentencePieceModel(bytes);
  if (m.modelType !== 2) throw new TokenizerError(`tokenizer.model: model_type ${m.modelType} is not BPE (2); unigram sentencepiece models are not supported — use the model's tokenizer.json`);
  const n = m.pieces.length;
  if (n === 0) throw new TokenizerError('tokenizer.model has no pieces');
  const inRange = (id: number) => (id >= 0 && id < n ? id : null);
  const bos = inRange(m.bosId), eos = inRange(m.eosId);
  const enc = new TextEncoder();
  const pieces = m.pieces.map((p, i) => {
    let t = p.piece;
    if (i === bos) t = '\n<s>\n';
    else if (i === eos) t = '\n</s>\n';
    return enc.encode(t.replaceAll('\u2581', ' '));
  });
  let byteBase: number | null = null;
  const b0 = m.pieces.findIndex((p) => p.type === SP_TYPE.BYTE && p.piece === '<0x00>');
  if (b0 >= 0 && b0 + 256 <= n && m.pieces.slice(b0, b0 + 256).every((p, k) => p.type === SP_TYPE.BYTE && p.piece === `<0x${k.toString(16).toUpperCase().padStart(2, '0')}>`)) byteBase = b0;
  const unk = inRange(m.unkId) ?? 0;
  return new ScoredBpeTokenizer('sentencepiece', { pieces, scores: Float32Array.from(m.pieces, (p) => p.score), bos, eos, byteBase, unk }, opts);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face tokenizer.json (and GPT-2 vocab.json + merges.txt)

function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

export class HfTokenizer implements TextTokenizer {
  readonly kind = 'hf' as const;
  readonly vocabSize: number;
  readonly bos: number | null;
  readonly eos: number | null;
  private readonly tk: HfTokenizerImpl;
  private readonly maxInputChars: number;

  constructor(tokenizerJson: Record<string, unknown>, tokenizerConfig: Record<string, unknown> = {}, opts: { maxInputChars?: number; bos?: number | null; eos?: number | null } = {}) {
    try {
      this.tk = new HfTokenizerImpl(tokenizerJson, tokenizerConfig);
    } catch (e) {
      throw new TokenizerError(`cannot build the tokenizer from tokenizer.json: ${(e as Error).message}`);
    }
    const vocab = this.tk.get_vocab(true);
    let maxId = -1;
    for (const id of vocab.values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;
    if (this.vocabSize < 1 || this.vocabSize > MAX_VOCAB) throw new TokenizerError(`tokenizer vocabulary size ${this.vocabSize} is out of range`);
    const idOf = (v: unknown) => {
      const c = tokenContent(v);
      return c === null ? null : (this.tk.token_to_id(c) ?? null);
    };
    this.bos = opts.bos !== undefined ? opts.bos : idOf(tokenizerConfig.bos_token);
    this.eos = opts.eos !== undefined ? opts.eos : idOf(tokenizerConfig.eos_token);
    this.maxInputChars = opts.maxInputChars ?? DEFAULT_MAX_INPUT_CHARS;
  }

  idToPiece(id: number): string | undefined {
    return this.tk.id_to_token(id);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    checkInput(text, this.maxInputChars);
    const ids = this.tk.encode(text, { add_special_tokens: opts.bos ?? true }).ids.slice();
    if (opts.bos && this.bos !== null && ids[0] !== this.bos) ids.unshift(this.bos);
    if (opts.eos && this.eos !== null && ids[ids.length - 1] !== this.eos) ids.push(this.eos);
    return ids;
  }

  decode(ids: readonly number[]): string {
    checkIds(ids, this.vocabSize);
    if (ids.length === 0) return ''; // the library refuses an empty array
    return this.tk.decode(ids.slice(), { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }

  /**
   * Streaming by re-decoding a short window (as text-generation-inference does): text is emitted
   * once the window's decoding grows without ending in U+FFFD (an incomplete byte sequence).
   */
  createStreamDecoder(opts: { context?: readonly number[] } = {}): StreamDecoder {
    const ids: number[] = [...(opts.context ?? [])];
    checkIds(ids, this.vocabSize);
    let prefix = Math.max(0, ids.length - 4);
    let read = ids.length;
    const dec = (a: number, b: number) => (b > a ? this.tk.decode(ids.slice(a, b), { skip_special_tokens: true, clean_up_tokenization_spaces: false }) : '');
    return {
      decodeToken: (id: number) => {
        checkIds([id], this.vocabSize);
        ids.push(id);
        const before = dec(prefix, read);
        const after = dec(prefix, ids.length);
        if (after.length > before.length && !after.endsWith('\uFFFD')) {
          const out = after.slice(before.length);
          prefix = read;
          read = ids.length;
          // Keep the buffer short: nothing before `prefix` is needed again.
          if (prefix > 64) {
            ids.splice(0, prefix);
            read -= prefix;
            prefix = 0;
          }
          return out;
        }
        return '';
      },
      flush: () => {
        const before = dec(prefix, read);
        const after = dec(prefix, ids.length);
        read = ids.length;
        return after.slice(before.length);
      },
    };
  }
}

/** tokenizer.json for a GPT-2 style byte-level BPE from vocab.json + merges.txt (as GPT2TokenizerFast builds it). */
export function gpt2TokenizerJson(vocab: Record<string, number>, mergesTxt: string, special: { unk?: string | null; specials?: string[] } = {}): Record<string, unknown> {
  const ids = new Set<number>();
  for (const [tok, id] of Object.entries(vocab)) {
    if (!Number.isInteger(id) || id < 0 || id >= MAX_VOCAB) throw new TokenizerError(`vocab.json: id of ${JSON.stringify(tok)} is invalid (${id})`);
    if (ids.has(id)) throw new TokenizerError(`vocab.json: id ${id} is used twice`);
    ids.add(id);
  }
  const merges: [string, string][] = [];
  for (const [i, line] of mergesTxt.split('\n').entries()) {
    const l = line.replace(/\r$/, '');
    if ((i === 0 && l.startsWith('#version')) || l === '') continue;
    const parts = l.split(' ');
    if (parts.length !== 2) throw new TokenizerError(`merges.txt line ${i + 1} is not "left right": ${JSON.stringify(l.slice(0, 80))}`);
    merges.push([parts[0]!, parts[1]!]);
  }
  const added = (special.specials ?? [])
    .filter((s) => vocab[s] !== undefined)
    .map((s) => ({ id: vocab[s]!, content: s, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: special.unk ?? null, continuing_subword_prefix: '', end_of_word_suffix: '',
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges,
    },
  };
}

function readBounded(path: string): Uint8Array {
  const st = statSync(path);
  if (!st.isFile()) throw new TokenizerError(`${path} is not a file`);
  if (st.size > MAX_TOKENIZER_FILE_BYTES) throw new TokenizerError(`${path} is ${st.size} bytes, over the tokenizer limit of ${MAX_TOKENIZER_FILE_BYTES}`);
  const b = readFileSync(path);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

function readJson(path: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(readBounded(path)));
  } catch (e) {
    if (e instanceof TokenizerError) throw e;
    throw new TokenizerError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new TokenizerError(`${path} must hold a JSON object`);
  return v as Record<string, unknown>;
}

/**
 * The tokenizer of an HF folder: tokenizer.json (preferred), else vocab.json + merges.txt
 * (GPT-2 byte-level BPE), else a sentencepiece BPE tokenizer.model. tokenizer_config.json and
 * special_tokens_map.json provide BOS/EOS when present; `fallbackIds` (from config.json) otherwise.
 */
export function loadHfTokenizer(dir: string, fallbackIds: { bos?: number | null; eos?: number | null } = {}): TextTokenizer {
  const cfgPath = join(dir, 'tokenizer_config.json');
  const stmPath = join(dir, 'special_tokens_map.json');
  const cfg: Record<string, unknown> = existsSync(cfgPath) ? readJson(cfgPath) : {};
  const stm: Record<string, unknown> = existsSync(stmPath) ? readJson(stmPath) : {};
  const tkConfig: Record<string, unknown> = { ...cfg };
  for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) if (tkConfig[k] == null && stm[k] != null) tkConfig[k] = stm[k];
  // A tokenizer_config.json that says bos_token: null (Qwen2) means no BOS, whatever config.json names.
  const noBos = 'bos_token' in cfg && cfg.bos_token === null;
  const ids = (t: HfTokenizer) => ({ bos: t.bos ?? (noBos ? null : (fallbackIds.bos ?? null)), eos: t.eos ?? fallbackIds.eos ?? null });
  if (existsSync(join(dir, 'tokenizer.json'))) {
    const j = readJson(join(dir, 'tokenizer.json'));
    const t = new HfTokenizer(j, tkConfig);
    return new HfTokenizer(j, tkConfig, ids(t));
  }
  if (existsSync(join(dir, 'vocab.json')) && existsSync(join(dir, 'merges.txt'))) {
    const vocab = readJson(join(dir, 'vocab.json')) as Record<string, number>;
    const merges = new TextDecoder('utf-8', { fatal: true }).decode(readBounded(join(dir, 'merges.txt')));
    const specials = ['bos_token', 'eos_token', 'unk_token', 'pad_token'].map((k) => tokenContent(tkConfig[k])).filter((s): s is string => s !== null);
    const unk = tokenContent(tkConfig.unk_token);
    const j = gpt2TokenizerJson(vocab, merges, { unk: unk !== null && vocab[unk] !== undefined ? unk : null, specials });
    const t = new HfTokenizer(j, tkConfig);
    return new HfTokenizer(j, tkConfig, ids(t));
  }
  if (existsSync(join(dir, 'tokenizer.model'))) return loadSentencePieceTokenizer(readBounded(join(dir, 'tokenizer.model')));
  throw new TokenizerError(`${dir} has no tokenizer.json, vocab.json + merges.txt, or tokenizer.model`);
}
