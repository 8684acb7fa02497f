// Strict safetensors reader and writer (https://github.com/huggingface/safetensors, format spec in
// its README), written here so that every byte of an untrusted file is validated before use.
//
// Layout: u64 little-endian header length N, then N bytes of UTF-8 JSON (an object, padded at the
// end with spaces only), then the data section. Each tensor entry is exactly
// {dtype, shape, data_offsets: [begin, end]} with offsets relative to the data section; the
// optional "__metadata__" entry maps strings to strings. This reader also requires that the
// tensors tile the data section exactly (contiguous, no overlap, no gap, ending at the end of the
// file), as the reference implementation does.
//
// PyTorch pickle checkpoints (`pytorch_model.bin`, `.pt`, zip or raw pickle) are refused and never
// unpickled: unpickling runs arbitrary code.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { bf16BytesToF32, f16BytesToF32 } from '../util/f16.ts';

export class SafetensorsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SafetensorsError';
  }
}

export const DTYPE_SIZES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
} as const;

export type Dtype = keyof typeof DTYPE_SIZES;

export function isDtype(s: string): s is Dtype {
  return Object.prototype.hasOwnProperty.call(DTYPE_SIZES, s);
}

export interface SafeTensor {
  dtype: Dtype;
  shape: number[];
  /** A view into the parsed file's bytes (not a copy). */
  data: Uint8Array;
}

export interface ParsedSafetensors {
  /** Tensors in header order. */
  tensors: Map<string, SafeTensor>;
  metadata: Record<string, string>;
  /** Each tensor's bytes are a buffer of its own (readSafetensorsFile), which a loader may keep. */
  owned?: boolean;
}

export interface ParseOptions {
  /** Largest accepted header length in bytes (default 100 MB, as the reference implementation). */
  maxHeaderBytes?: number;
}

export const DEFAULT_MAX_HEADER_BYTES = 100_000_000;
/** Largest tensor rank accepted. */
export const MAX_RANK = 16;
/** Nesting limit for the header JSON (a valid header nests 3 deep). */
const MAX_JSON_DEPTH = 8;
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
if (!LITTLE_ENDIAN) throw new Error('safetensors.ts assumes a little-endian platform');

// ---------------------------------------------------------------------------------------------
// Pickle detection

/**
 * True when the bytes start like a PyTorch checkpoint: a zip archive (torch.save since 1.6) or a
 * raw pickle stream (protocol 2+, legacy torch.save), and cannot be a safetensors file (whose
 * byte 8 is always '{').
 */
export function looksLikePickle(bytes: Uint8Array): boolean {
  if (bytes.length >= 9 && bytes[8] === 0x7b) return false;
  if (bytes.length >= 4 && bytes[0] === 0x50 && bytes[1] === 0x4b && bytes[2] === 0x03 && bytes[3] === 0x04) return true;
  if (bytes.length >= 2 && bytes[0] === 0x80 && bytes[1]! >= 2 && bytes[1]! <= 5) return true;
  return false;
}

export const PICKLE_MESSAGE =
  'this looks like a PyTorch pickle checkpoint (pytorch_model.bin / .pt / .pth); pickle files are refused ' +
  'because loading them can run arbitrary code. Convert it to safetensors first ' +
  '(e.g. in Python: safetensors.torch.save_file(torch.load(path, weights_only=True), "model.safetensors")).';

// ---------------------------------------------------------------------------------------------
// Strict JSON parser: detects duplicate and forbidden keys (JSON.parse keeps the last duplicate
// silently and treats "__proto__" specially), refuses non-integer numbers where integers are
// needed (numbers that are not plain integer literals are kept as JsonFloat), bounded depth.

class JsonFloat {
  constructor(readonly raw: string, readonly value: number) {}
}
type JsonValue = null | boolean | string | number | JsonFloat | JsonValue[] | JsonObject;
type JsonObject = Map<string, JsonValue>;

class StrictJsonParser {
  private i = 0;
  constructor(private readonly s: string) {}

  fail(msg: string): never {
    throw new SafetensorsError(`header is not valid JSON: ${msg} at character ${this.i}`);
  }

  private ws(): void {
    const s = this.s;
    while (this.i < s.length) {
      const c = s.charCodeAt(this.i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) this.i++;
      else break;
    }
  }

  parseDocument(): JsonValue {
    // The spec requires the header to begin with '{' and allows only trailing spaces.
    if (this.s.charCodeAt(0) !== 0x7b) throw new SafetensorsError("header must begin with '{'");
    const v = this.value(0);
    while (this.i < this.s.length) {
      if (this.s.charCodeAt(this.i) !== 0x20) {
        throw new SafetensorsError(`header has unexpected bytes after the JSON object at character ${this.i} (only space padding is allowed)`);
      }
      this.i++;
    }
    return v;
  }

  private value(depth: number): JsonValue {
    if (depth > MAX_JSON_DEPTH) this.fail(`nesting deeper than ${MAX_JSON_DEPTH}`);
    this.ws();
    const c = this.s[this.i];
    if (c === '{') return this.object(depth);
    if (c === '[') return this.array(depth);
    if (c === '"') return this.string();
    if (c === 't') return this.literal('true', true);
    if (c === 'f') return this.literal('false', false);
    if (c === 'n') return this.literal('null', null);
    if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) return this.number();
    return this.fail(c === undefined ? 'unexpected end' : `unexpected character ${JSON.stringify(c)}`);
  }

  private literal<T>(word: string, v: T): T {
    if (this.s.startsWith(word, this.i)) {
      this.i += word.length;
      return v;
    }
    return this.fail('invalid literal');
  }

  private object(depth: number): JsonObject {
    this.i++; // {
    const out: JsonObject = new Map();
    this.ws();
    if (this.s[this.i] === '}') {
      this.i++;
      return out;
    }
    for (;;) {
      this.ws();
      if (this.s[this.i] !== '"') this.fail('expected a string key');
      const keyAt = this.i;
      const key = this.string();
      if (FORBIDDEN_KEYS.has(key)) throw new SafetensorsError(`header contains the forbidden key ${JSON.stringify(key)}`);
      if (out.has(key)) throw new SafetensorsError(`header contains the duplicate key ${JSON.stringify(key)} (at character ${keyAt})`);
      this.ws();
      if (this.s[this.i] !== ':') this.fail("expected ':'");
      this.i++;
      out.set(key, this.value(depth + 1));
      this.ws();
      const c = this.s[this.i];
      if (c === ',') {
        this.i++;
        continue;
      }
      if (c === '}') {
        this.i++;
        return out;
      }
      this.fail("expected ',' or '}'");
    }
  }

  private array(depth: number): JsonValue[] {
    this.i++; // [
    const out: JsonValue[] = [];
    this.ws();
    if (this.s[this.i] === ']') {
      this.i++;
      return out;
    }
    for (;;) {
      out.push(this.value(depth + 1));
      this.ws();
      const c = this.s[this.i];
      if (c === ',') {
        this.i++;
        continue;
      }
      if (c === ']') {
        this.i++;
        return out;
      }
      this.fail("expected ',' or ']'");
    }
  }

  private string(): string {
    const s = this.s;
    this.i++; // opening quote
    let out = '';
    let start = this.i;
    for (;;) {
      if (this.i >= s.length) this.fail('unterminated string');
      const c = s.charCodeAt(this.i);
      if (c === 0x22) {
        out += s.slice(start, this.i);
        this.i++;
        return out;
      }
      if (c < 0x20) this.fail('control character in string');
      if (c === 0x5c) {
        out += s.slice(start, this.i);
        const e = s[this.i + 1];
        this.i += 2;
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            const hex = s.slice(this.i, this.i + 4);
            if (!/^[0-9a-fA-F]{4}$/.test(hex)) this.fail('invalid \\u escape');
            out += String.fromCharCode(parseInt(hex, 16));
            this.i += 4;
            break;
          }
          default:
            this.fail('invalid escape');
        }
        start = this.i;
        continue;
      }
      this.i++;
    }
  }

  private number(): number | JsonFloat {
    const m = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
    m.lastIndex = this.i;
    const r = m.exec(this.s);
    if (!r) return this.fail('invalid number');
    this.i += r[0].length;
    const v = Number(r[0]);
    if (r[1] !== undefined || r[2] !== undefined) return new JsonFloat(r[0], v);
    // An integer literal; keep it as a number, but one that is not exactly representable is
    // reported as unsafe by the callers (Number.isSafeInteger).
    return v;
  }
}

function describe(v: JsonValue): string {
  if (v instanceof JsonFloat) return v.raw;
  if (v instanceof Map) return 'an object';
  if (Array.isArray(v)) return 'an array';
  return JSON.stringify(v);
}

/** Returns the exact integer value of v or throws: integer literal, in [0, 2^53). */
function safeNonNegInt(v: JsonValue, what: string): number {
  if (typeof v !== 'number') throw new SafetensorsError(`${what} must be a non-negative integer, got ${describe(v)}`);
  if (v < 0) throw new SafetensorsError(`${what} must be a non-negative integer, got ${v}`);
  if (!Number.isSafeInteger(v)) throw new SafetensorsError(`${what} is too large (values of 2^53 and more are refused)`);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Reader

/** One tensor's header entry; begin/end are relative to the data section. */
export interface TensorEntry {
  name: string;
  dtype: Dtype;
  shape: number[];
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** Bytes before the data section (8 + the header length). */
  dataStart: number;
  /** Tensors in header order. */
  entries: TensorEntry[];
  metadata: Record<string, string>;
}

/**
 * The header length from a file's first 8 bytes, checked against the limit and the file size
 * (the one place that reads it; parseSafetensors and readSafetensorsHeader use it).
 */
function headerLength(first8: Uint8Array, fileSize: number, maxHeader: number): number {
  if (fileSize < 8 || first8.length < 8) throw new SafetensorsError(`file is ${fileSize} bytes; a safetensors file has at least an 8-byte header length`);
  const n64 = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n64 > BigInt(maxHeader)) throw new SafetensorsError(`header length ${n64} exceeds the limit of ${maxHeader} bytes`);
  const n = Number(n64);
  if (8 + n > fileSize) throw new SafetensorsError(`header length ${n} runs past the end of the ${fileSize}-byte file (truncated?)`);
  if (n < 2) throw new SafetensorsError(`header length ${n} is too small to hold a JSON object`);
  return n;
}

/**
 * Parses and checks the header of a safetensors file of `fileSize` bytes whose first 8 + N bytes
 * are `head` (N the header length): strict JSON, known dtypes, shapes, offsets that match the
 * shapes and tile the data section exactly. Reads no tensor data.
 */
export function parseSafetensorsHeader(head: Uint8Array, fileSize: number, opts: ParseOptions = {}): SafetensorsHeader {
  if (looksLikePickle(head)) throw new SafetensorsError(PICKLE_MESSAGE);
  const n = headerLength(head, fileSize, opts.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES);
  if (head.length < 8 + n) throw new SafetensorsError(`header of ${n} bytes is incomplete`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(head.subarray(8, 8 + n));
  } catch {
    throw new SafetensorsError('header is not valid UTF-8');
  }
  const root = new StrictJsonParser(text).parseDocument();
  if (!(root instanceof Map)) throw new SafetensorsError('header must be a JSON object');

  const dataStart = 8 + n;
  const dataLen = fileSize - dataStart;
  const metadata: Record<string, string> = Object.create(null);
  const entries: TensorEntry[] = [];

  for (const [name, entry] of root) {
    if (name === '__metadata__') {
      if (!(entry instanceof Map)) throw new SafetensorsError('__metadata__ must be an object of string values');
      for (const [k, v] of entry) {
        if (typeof v !== 'string') throw new SafetensorsError(`__metadata__[${JSON.stringify(k)}] must be a string, got ${describe(v)}`);
        metadata[k] = v;
      }
      continue;
    }
    const what = `tensor ${JSON.stringify(name)}`;
    if (name.length === 0) throw new SafetensorsError('a tensor has an empty name');
    if (!(entry instanceof Map)) throw new SafetensorsError(`${what} must be an object with dtype, shape and data_offsets`);
    for (const k of entry.keys()) {
      if (k !== 'dtype' && k !== 'shape' && k !== 'data_offsets') throw new SafetensorsError(`${what} has the unexpected field ${JSON.stringify(k)}`);
    }
    const dtype = entry.get('dtype');
    const shape = entry.get('shape');
    const offs = entry.get('data_offsets');
    if (dtype === undefined || shape === undefined || offs === undefined) {
      throw new SafetensorsError(`${what} must have dtype, shape and data_offsets`);
    }
    if (typeof dtype !== 'string' || !isDtype(dtype)) {
      throw new SafetensorsError(`${what} has the unknown dtype ${describe(dtype)} (known: ${Object.keys(DTYPE_SIZES).join(', ')})`);
    }
    if (!Array.isArray(shape)) throw new SafetensorsError(`${what}: shape must be an array of integers`);
    if (shape.length > MAX_RANK) throw new SafetensorsError(`${what}: rank ${shape.length} exceeds ${MAX_RANK}`);
    const dims: number[] = [];
    let numel = 1;
    for (let d = 0; d < shape.length; d++) {
      const v = safeNonNegInt(shape[d]!, `${what}: shape[${d}]`);
      dims.push(v);
      numel *= v;
      if (!Number.isSafeInteger(numel)) throw new SafetensorsError(`${what}: element count overflows`);
    }
    if (!Array.isArray(offs) || offs.length !== 2) throw new SafetensorsError(`${what}: data_offsets must be [begin, end]`);
    const begin = safeNonNegInt(offs[0]!, `${what}: data_offsets[0]`);
    const end = safeNonNegInt(offs[1]!, `${what}: data_offsets[1]`);
    if (end < begin) throw new SafetensorsError(`${what}: data_offsets end ${end} < begin ${begin}`);
    const nbytes = numel * DTYPE_SIZES[dtype];
    if (!Number.isSafeInteger(nbytes)) throw new SafetensorsError(`${what}: byte size overflows`);
    if (nbytes !== end - begin) {
      throw new SafetensorsError(`${what}: ${dtype} × shape [${dims.join(', ')}] needs ${nbytes} bytes but data_offsets span ${end - begin}`);
    }
    if (end > dataLen) throw new SafetensorsError(`${what}: data_offsets end ${end} is past the data section (${dataLen} bytes; truncated?)`);
    entries.push({ name, dtype, shape: dims, begin, end });
  }

  // Contiguous, non-overlapping, covering the data section exactly.
  const spans = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  for (const s of spans) {
    if (s.begin < pos) throw new SafetensorsError(`tensor ${JSON.stringify(s.name)} overlaps the previous tensor (begins at ${s.begin}, previous ends at ${pos})`);
    if (s.begin > pos) throw new SafetensorsError(`gap in the data section before tensor ${JSON.stringify(s.name)} (bytes ${pos}..${s.begin} unused)`);
    pos = s.end;
  }
  if (pos !== dataLen) throw new SafetensorsError(`data section has ${dataLen - pos} trailing bytes not covered by any tensor`);
  return { dataStart, entries, metadata };
}

/** The checked header of a safetensors file on disk, reading only its first 8 + N bytes. */
export async function readSafetensorsHeader(path: string, opts: ParseOptions = {}): Promise<SafetensorsHeader> {
  const f = Bun.file(path);
  const size = f.size;
  const first8 = new Uint8Array(await f.slice(0, Math.min(size, 9)).arrayBuffer());
  if (looksLikePickle(first8)) throw new SafetensorsError(PICKLE_MESSAGE);
  const n = headerLength(first8, size, opts.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES);
  return parseSafetensorsHeader(new Uint8Array(await f.slice(0, 8 + n).arrayBuffer()), size, opts);
}

/**
 * Reads a safetensors file in streamed slices: the header, then each tensor into a buffer of its
 * own (no second copy of the file): the caller may keep the tensors' bytes as they are
 * (`owned: true`; weights.ts weightsFromSafetensors does). Peak host memory: the tensors, once.
 */
export function readSafetensorsFile(path: string, opts: ParseOptions & { maxFileBytes?: number } = {}): ParsedSafetensors {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    if (opts.maxFileBytes !== undefined && size > opts.maxFileBytes) throw new SafetensorsError(`file is ${size} bytes, over the limit of ${opts.maxFileBytes}`);
    const first = new Uint8Array(Math.min(size, 9));
    readFully(fd, first, 0);
    if (looksLikePickle(first)) throw new SafetensorsError(PICKLE_MESSAGE);
    const n = headerLength(first, size, opts.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES);
    const head = new Uint8Array(8 + n);
    readFully(fd, head, 0);
    const h = parseSafetensorsHeader(head, size, opts);
    const tensors = new Map<string, SafeTensor>();
    for (const t of h.entries) {
      const data = new Uint8Array(t.end - t.begin); // its own (8-byte aligned) buffer
      readFully(fd, data, h.dataStart + t.begin);
      tensors.set(t.name, { dtype: t.dtype, shape: t.shape, data });
    }
    return { tensors, metadata: h.metadata, owned: true };
  } finally {
    closeSync(fd);
  }
}

/** Fills `buf` from file position `pos` (readSync may return short counts; 1 GiB per call at most). */
function readFully(fd: number, buf: Uint8Array, pos: number): void {
  let off = 0;
  while (off < buf.length) {
    const n = readSync(fd, buf, off, Math.min(buf.length - off, 1 << 30), pos + off);
    if (n <= 0) throw new SafetensorsError(`file ended after ${pos + off} bytes (truncated?)`);
    off += n;
  }
}

export function parseSafetensors(bytes: Uint8Array, opts: ParseOptions = {}): ParsedSafetensors {
  if (!(bytes instanceof Uint8Array)) throw new SafetensorsError('input must be a Uint8Array');
  const h = parseSafetensorsHeader(bytes, bytes.length, opts);
  const tensors = new Map<string, SafeTensor>();
  for (const t of h.entries) tensors.set(t.name, { dtype: t.dtype, shape: t.shape, data: bytes.subarray(h.dataStart + t.begin, h.dataStart + t.end) });
  return { tensors, metadata: h.metadata };
}

// ---------------------------------------------------------------------------------------------
// Conversion


export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * Converts an F32/F16/BF16/F64 tensor to a Float32Array. F32 data whose offset is 4-byte aligned is
 * returned as a view on the same bytes unless `copy` is set; unaligned data is copied.
 */
export function toFloat32(t: SafeTensor, opts: { copy?: boolean } = {}): Float32Array {
  const n = numelOf(t.shape);
  const d = t.data;
  switch (t.dtype) {
    case 'F32': {
      if (!opts.copy && d.byteOffset % 4 === 0) return new Float32Array(d.buffer, d.byteOffset, n);
      const out = new Float32Array(n);
      new Uint8Array(out.buffer).set(d);
      return out;
    }
    case 'F16':
      return f16BytesToF32(d, n);
    case 'BF16':
      return bf16BytesToF32(d, n);
    case 'F64': {
      const src = d.byteOffset % 8 === 0 ? new Float64Array(d.buffer, d.byteOffset, n) : new Float64Array(d.slice().buffer);
      return Float32Array.from(src);
    }
    default:
      throw new SafetensorsError(`cannot convert dtype ${t.dtype} to f32`);
  }
}

// ---------------------------------------------------------------------------------------------
// Writer

export interface TensorToWrite {
  dtype: Dtype;
  shape: readonly number[];
  data: ArrayBufferView;
}

/** One tensor of a header to encode: what the header says about it (its bytes come separately). */
export interface HeaderTensor {
  name: string;
  dtype: Dtype;
  shape: readonly number[];
}

/**
 * The first bytes of a safetensors file holding `tensors` (8-byte length + JSON padded with spaces
 * to a multiple of 8): names sorted (by UTF-16 code units), "__metadata__" first with its keys
 * sorted when given, offsets laying the tensors out back to back in name order, no whitespace in
 * the JSON. `order` is the tensors in that order, with their byte sizes; the data section is their
 * bytes concatenated. The same input always gives the same bytes (encodeSafetensors and the
 * per-tensor snapshots of model/snapshots.ts both use it, so a version's file is byte-identical
 * whichever way it is produced).
 */
export function encodeSafetensorsHeader(tensors: readonly HeaderTensor[], metadata?: Record<string, string>): { header: Uint8Array; order: (HeaderTensor & { bytes: number })[]; dataBytes: number } {
  const entries = [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const parts: string[] = [];
  if (metadata) {
    const keys = Object.keys(metadata).sort();
    const m: string[] = [];
    for (const k of keys) {
      const v = metadata[k];
      if (FORBIDDEN_KEYS.has(k)) throw new SafetensorsError(`metadata key ${JSON.stringify(k)} is forbidden`);
      if (typeof v !== 'string') throw new SafetensorsError(`metadata[${JSON.stringify(k)}] must be a string`);
      m.push(`${JSON.stringify(k)}:${JSON.stringify(v)}`);
    }
    parts.push(`"__metadata__":{${m.join(',')}}`);
  }
  let offset = 0;
  const order: (HeaderTensor & { bytes: number })[] = [];
  const seen = new Set<string>();
  for (const t of entries) {
    const name = t.name;
    if (typeof name !== 'string' || name.length === 0 || name === '__metadata__' || FORBIDDEN_KEYS.has(name)) throw new SafetensorsError(`invalid tensor name ${JSON.stringify(name)}`);
    if (seen.has(name)) throw new SafetensorsError(`duplicate tensor name ${JSON.stringify(name)}`);
    seen.add(name);
    if (!isDtype(t.dtype)) throw new SafetensorsError(`tensor ${JSON.stringify(name)}: unknown dtype ${String(t.dtype)}`);
    if (t.shape.length > MAX_RANK) throw new SafetensorsError(`tensor ${JSON.stringify(name)}: rank ${t.shape.length} exceeds ${MAX_RANK}`);
    for (const d of t.shape) {
      if (!Number.isSafeInteger(d) || d < 0) throw new SafetensorsError(`tensor ${JSON.stringify(name)}: invalid dimension ${d}`);
    }
    const nbytes = numelOf(t.shape) * DTYPE_SIZES[t.dtype];
    if (!Number.isSafeInteger(nbytes)) throw new SafetensorsError(`tensor ${JSON.stringify(name)}: byte size overflows`);
    parts.push(`${JSON.stringify(name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(',')}],"data_offsets":[${offset},${offset + nbytes}]}`);
    order.push({ name, dtype: t.dtype, shape: t.shape, bytes: nbytes });
    offset += nbytes;
  }
  const headerRaw = new TextEncoder().encode(`{${parts.join(',')}}`);
  const headerLen = Math.ceil(headerRaw.length / 8) * 8;
  const header = new Uint8Array(8 + headerLen);
  new DataView(header.buffer).setBigUint64(0, BigInt(headerLen), true);
  header.set(headerRaw, 8);
  header.fill(0x20, 8 + headerRaw.length);
  return { header, order, dataBytes: offset };
}

/**
 * Encodes tensors as a safetensors file (layout: encodeSafetensorsHeader). The same input always
 * gives the same bytes.
 */
export function encodeSafetensors(tensors: Record<string, TensorToWrite> | Map<string, TensorToWrite>, metadata?: Record<string, string>): Uint8Array {
  const byName = tensors instanceof Map ? tensors : new Map(Object.entries(tensors));
  const { header, order, dataBytes } = encodeSafetensorsHeader([...byName].map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape })), metadata);
  const out = new Uint8Array(header.length + dataBytes);
  out.set(header, 0);
  let pos = header.length;
  for (const e of order) {
    const t = byName.get(e.name)!;
    if (e.bytes !== t.data.byteLength) {
      throw new SafetensorsError(`tensor ${JSON.stringify(e.name)}: ${t.dtype} × [${t.shape.join(', ')}] needs ${e.bytes} bytes, data has ${t.data.byteLength}`);
    }
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), pos);
    pos += e.bytes;
  }
  return out;
}
