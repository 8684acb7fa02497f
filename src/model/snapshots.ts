// Per-tensor snapshots: a model version is a manifest of tensor digests, each tensor's bytes one
// content-addressed `.tensor` object of the SnapshotStore (store/snapshot-store.ts).
//
// The manifest (`<objects>/<aa>/<sha256>.manifest`, UTF-8 JSON, written by this file only):
//   {"format":"cola-manifest/1","sha256":S,"bytes":N,"metadata":{…},
//    "tensors":[{"name","dtype","shape","digest","bytes"}, …]}
// - `tensors` in the order of the served file (names sorted by UTF-16 code units); `digest` is the
//   sha256 of the tensor's bytes (little-endian, as in a safetensors data section), `bytes` their
//   length. Several names may share a digest (e.g. norm weights that are all ones): one object.
// - The served file is encodeSafetensorsHeader(tensors, metadata) followed by each tensor's bytes in
//   that order: byte-identical to saveSafetensorsWeights of the same weights. `bytes` is its length
//   and `sha256` its digest, which is also the manifest's name and the version's `sha256` (computed
//   while the snapshot is planned, from the header and the same tensor bytes).
//
// Writing: planSnapshot hashes every tensor (views of the weights, one 16-bit conversion at a time
// at most, never a whole-file buffer), so the caller can reserve quota for the bytes it will add;
// writeSnapshot then stores only the tensors whose objects are missing and installs the manifest
// last (each atomically). Reading: readManifestTensors reads each tensor into a buffer of its own
// (what readSafetensorsFile does for a whole file); manifestStream serves the one safetensors file
// in 1 MiB chunks (header, then each object) with its exact length known up front.
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { dirname } from 'node:path';
import { SnapshotStore } from '../store/snapshot-store.ts';
import { DTYPE_SIZES, encodeSafetensorsHeader, isDtype, numelOf, SafetensorsError, type Dtype, type ParsedSafetensors, type SafeTensor } from './safetensors.ts';
import { savedMetadata, tensorToWrite, validateWeights, type ModelWeights } from './weights.ts';

export const MANIFEST_FORMAT = 'cola-manifest/1';
/** Largest manifest read (a 7B Llama lists ~300 tensors in ~60 KB). */
const MAX_MANIFEST_BYTES = 64 << 20;
const SHA_RE = /^[0-9a-f]{64}$/;
const CHUNK = 1 << 20;

export interface ManifestTensor {
  name: string;
  dtype: Dtype;
  shape: number[];
  digest: string;
  bytes: number;
}

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  /** sha256 of the served safetensors file (= the version's sha256, the manifest's name). */
  sha256: string;
  /** Length of the served file. */
  bytes: number;
  metadata: Record<string, string>;
  tensors: ManifestTensor[];
}

/** A tensor object a version references: its digest and size (each digest once). */
export interface TensorRef {
  digest: string;
  bytes: number;
}

export interface SnapshotPlan {
  manifest: Manifest;
  /** Distinct objects the manifest references. */
  refs: TensorRef[];
  /** Distinct objects the parent's manifest does not reference, and their total bytes (the version's charge). */
  added: TensorRef[];
  addedBytes: number;
  weights: ModelWeights;
}

/** What writeSnapshot stored: the manifest's path (the version's `path`), the served file's digest and length. */
export interface WrittenSnapshot {
  path: string;
  sha256: string;
  bytes: number;
  tensors: TensorRef[];
  addedBytes: number;
  /** Bytes of tensor objects this write created (0 when every object was already there). */
  writtenBytes: number;
}

export class ManifestError extends Error {
  override name = 'ManifestError';
}

const u8 = (v: ArrayBufferView) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);

export function isManifestPath(p: string): boolean {
  return p.endsWith('.manifest');
}

/** Distinct digests of a manifest's tensors with their sizes, in first-listed order. */
export function refsOf(m: Manifest): TensorRef[] {
  const seen = new Map<string, number>();
  for (const t of m.tensors) if (!seen.has(t.digest)) seen.set(t.digest, t.bytes);
  return [...seen].map(([digest, bytes]) => ({ digest, bytes }));
}

/**
 * Hashes the weights as the served file and as one object per tensor, without writing anything.
 * `parent`: the manifest of the version this one is made from (null: an import, or a parent stored
 * as a whole file), to tell which objects this version adds.
 */
export function planSnapshot(w: ModelWeights, opts: { metadata?: Record<string, string>; parent?: Manifest | null } = {}): SnapshotPlan {
  validateWeights(w);
  const metadata = savedMetadata(w, opts.metadata);
  const heads = [...w.tensors].map(([name, t]) => {
    const tw = tensorToWrite(t);
    return { name, dtype: tw.dtype, shape: [...tw.shape] };
  });
  const { header, order, dataBytes } = encodeSafetensorsHeader(heads, metadata);
  const file = createHash('sha256').update(header);
  const tensors: ManifestTensor[] = [];
  for (const e of order) {
    const data = u8(tensorToWrite(w.tensors.get(e.name)!).data); // a view, or one 16-bit copy of this tensor
    if (data.byteLength !== e.bytes) throw new ManifestError(`tensor ${e.name}: ${data.byteLength} bytes, expected ${e.bytes}`);
    file.update(data);
    tensors.push({ name: e.name, dtype: e.dtype, shape: [...e.shape], digest: createHash('sha256').update(data).digest('hex'), bytes: e.bytes });
  }
  const manifest: Manifest = { format: MANIFEST_FORMAT, sha256: file.digest('hex'), bytes: header.length + dataBytes, metadata: sortedRecord(metadata), tensors };
  const refs = refsOf(manifest);
  const inParent = new Set(opts.parent ? opts.parent.tensors.map((t) => t.digest) : []);
  const added = refs.filter((r) => !inParent.has(r.digest));
  return { manifest, refs, added, addedBytes: added.reduce((n, r) => n + r.bytes, 0), weights: w };
}

/** Stores the plan's missing tensor objects, then its manifest (each atomically). */
export async function writeSnapshot(store: SnapshotStore, plan: SnapshotPlan): Promise<WrittenSnapshot> {
  const { manifest, weights } = plan;
  let writtenBytes = 0;
  const done = new Set<string>();
  for (const t of manifest.tensors) {
    if (done.has(t.digest)) continue;
    done.add(t.digest);
    if (store.hasTensor(t.digest, t.bytes)) continue; // size checked, not read
    const o = await store.putTensor(u8(tensorToWrite(weights.tensors.get(t.name)!).data), t.digest);
    if (o.created) writtenBytes += o.bytes;
  }
  const m = await store.putManifest(manifest.sha256, encodeManifest(manifest));
  return { path: m.path, sha256: manifest.sha256, bytes: manifest.bytes, tensors: plan.refs, addedBytes: plan.addedBytes, writtenBytes };
}

/** Plans and writes in one go (callers that reserve nothing in between). */
export async function saveSnapshot(store: SnapshotStore, w: ModelWeights, opts: { metadata?: Record<string, string>; parent?: Manifest | null } = {}): Promise<WrittenSnapshot> {
  return writeSnapshot(store, planSnapshot(w, opts));
}

/** The manifest's bytes: fixed key order, no whitespace, a final newline. */
export function encodeManifest(m: Manifest): Uint8Array {
  const tensors = m.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, digest: t.digest, bytes: t.bytes }));
  return new TextEncoder().encode(JSON.stringify({ format: m.format, sha256: m.sha256, bytes: m.bytes, metadata: sortedRecord(m.metadata), tensors }) + '\n');
}

function sortedRecord(r: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of Object.keys(r).sort()) out[k] = r[k]!;
  return out;
}

/** Parses and checks a manifest (names sorted and unique, dtypes, shapes, sizes, digests, total length). */
export function parseManifest(bytes: Uint8Array, what = 'manifest'): Manifest {
  let j: unknown;
  try {
    j = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw new ManifestError(`${what} is not valid UTF-8 JSON`);
  }
  const fail = (msg: string): never => {
    throw new ManifestError(`${what}: ${msg}`);
  };
  if (typeof j !== 'object' || j === null || Array.isArray(j)) return fail('not an object');
  const o = j as Record<string, unknown>;
  if (o.format !== MANIFEST_FORMAT) fail(`format must be ${MANIFEST_FORMAT}`);
  if (typeof o.sha256 !== 'string' || !SHA_RE.test(o.sha256)) fail('sha256 must be 64 lower-case hex digits');
  if (!Number.isSafeInteger(o.bytes) || (o.bytes as number) < 8) fail('bytes must be an integer');
  const md = o.metadata;
  if (typeof md !== 'object' || md === null || Array.isArray(md)) return fail('metadata must be an object');
  const metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(md)) {
    if (typeof v !== 'string') fail(`metadata[${JSON.stringify(k)}] must be a string`);
    metadata[k] = v as string;
  }
  if (!Array.isArray(o.tensors)) return fail('tensors must be an array');
  const tensors: ManifestTensor[] = [];
  let prev: string | null = null;
  for (const [i, x] of (o.tensors as unknown[]).entries()) {
    const t = x as Record<string, unknown>;
    if (typeof t !== 'object' || t === null) fail(`tensors[${i}] must be an object`);
    const { name, dtype, shape, digest, bytes: n } = t;
    if (typeof name !== 'string' || name.length === 0) return fail(`tensors[${i}].name must be a non-empty string`);
    if (prev !== null && !(prev < name)) fail(`tensors[${i}] (${name}) is not after ${prev}: names must be sorted and unique`);
    prev = name;
    if (typeof dtype !== 'string' || !isDtype(dtype)) return fail(`tensors[${i}].dtype ${String(dtype)} is not a safetensors dtype`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) return fail(`tensors[${i}].shape must be non-negative integers`);
    if (typeof digest !== 'string' || !SHA_RE.test(digest)) return fail(`tensors[${i}].digest must be 64 lower-case hex digits`);
    if (n !== numelOf(shape as number[]) * DTYPE_SIZES[dtype]) fail(`tensors[${i}].bytes ${String(n)} does not match ${dtype} × [${(shape as number[]).join(', ')}]`);
    tensors.push({ name, dtype, shape: shape as number[], digest, bytes: n as number });
  }
  const m: Manifest = { format: MANIFEST_FORMAT, sha256: o.sha256 as string, bytes: o.bytes as number, metadata, tensors };
  let h: ReturnType<typeof encodeSafetensorsHeader>;
  try {
    h = encodeSafetensorsHeader(tensors, metadata);
  } catch (e) {
    return fail((e as SafetensorsError).message);
  }
  if (h.header.length + h.dataBytes !== m.bytes) fail(`bytes ${m.bytes} is not the served length ${h.header.length + h.dataBytes}`);
  return m;
}

/** The manifest at `path` (a version's path), checked; its name must be its sha256. */
export function readManifest(path: string): Manifest {
  let bytes: Uint8Array;
  try {
    const fd = openSync(path, 'r');
    try {
      if (fstatSync(fd).size > MAX_MANIFEST_BYTES) throw new ManifestError(`manifest ${path} is over ${MAX_MANIFEST_BYTES} bytes`);
    } finally {
      closeSync(fd);
    }
    bytes = readFileSync(path);
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') throw new ManifestError(`manifest ${path} is missing`);
    throw e;
  }
  const m = parseManifest(bytes, `manifest ${path}`);
  if (!path.endsWith(`${m.sha256}.manifest`)) throw new ManifestError(`manifest ${path} names the file ${m.sha256}, not its own name`);
  return m;
}

/** The manifest of a version's path, or null when the version is stored as a whole file. */
export function manifestOrNull(path: string): Manifest | null {
  return isManifestPath(path) ? readManifest(path) : null;
}

/** The SnapshotStore a manifest lives in (<root>/objects/<aa>/<sha>.manifest). */
export function storeOfManifest(path: string): SnapshotStore {
  return new SnapshotStore(dirname(dirname(dirname(path))));
}

/** Opens a tensor object and checks its size; the caller closes the descriptor. */
function openObject(store: SnapshotStore, t: ManifestTensor): number {
  let fd: number;
  try {
    fd = openSync(store.pathOf(t.digest, 'tensor'), 'r');
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') throw new ManifestError(`tensor ${t.name}: object ${t.digest} is missing from the store`);
    throw e;
  }
  const size = fstatSync(fd).size;
  if (size !== t.bytes) {
    closeSync(fd);
    throw new ManifestError(`tensor ${t.name}: object ${t.digest} has ${size} bytes, the manifest says ${t.bytes}: the store is corrupt`);
  }
  return fd;
}

function readFully(fd: number, buf: Uint8Array, pos: number): void {
  let off = 0;
  while (off < buf.length) {
    const n = readSync(fd, buf, off, Math.min(buf.length - off, 1 << 30), pos + off);
    if (n <= 0) throw new ManifestError(`tensor object ended after ${pos + off} bytes`);
    off += n;
  }
}

/**
 * The version's tensors as a parsed safetensors file, each read from its object into a buffer of
 * its own (`owned`: the weights keep them; peak host memory is the tensors, once).
 */
export function readManifestTensors(path: string): ParsedSafetensors {
  const m = readManifest(path);
  const store = storeOfManifest(path);
  const tensors = new Map<string, SafeTensor>();
  for (const t of m.tensors) {
    const fd = openObject(store, t);
    try {
      const data = new Uint8Array(t.bytes);
      readFully(fd, data, 0);
      tensors.set(t.name, { dtype: t.dtype, shape: t.shape, data });
    } finally {
      closeSync(fd);
    }
  }
  return { tensors, metadata: m.metadata, owned: true };
}

/** The served safetensors file's first bytes (length + header JSON). */
export function manifestHeader(m: Manifest): Uint8Array {
  return encodeSafetensorsHeader(m.tensors, m.metadata).header;
}

/**
 * The one safetensors file a manifest stands for, as a stream of 1 MiB chunks (the header, then
 * each tensor's object in order); `size` is its exact length. Objects are opened as the stream
 * reaches them; a missing or resized one errors the stream.
 */
export function manifestStream(path: string): { size: number; sha256: string; stream: () => ReadableStream<Uint8Array> } {
  const m = readManifest(path);
  const store = storeOfManifest(path);
  // Every object is checked before the response starts: a missing one is an error, not a truncated download.
  for (const t of m.tensors) closeSync(openObject(store, t));
  return {
    size: m.bytes,
    sha256: m.sha256,
    stream: () => {
      let i = -1; // -1: the header
      let fd: number | null = null;
      let pos = 0;
      const close = () => {
        if (fd !== null) closeSync(fd);
        fd = null;
      };
      return new ReadableStream<Uint8Array>({
        pull(c) {
          try {
            if (i === -1) {
              i = 0;
              c.enqueue(manifestHeader(m));
              return;
            }
            while (i < m.tensors.length) {
              const t = m.tensors[i]!;
              if (fd === null) {
                fd = openObject(store, t);
                pos = 0;
              }
              if (pos < t.bytes) {
                const chunk = new Uint8Array(Math.min(CHUNK, t.bytes - pos));
                readFully(fd, chunk, pos);
                pos += chunk.length;
                c.enqueue(chunk);
                return;
              }
              close();
              i++;
            }
            c.close();
          } catch (e) {
            close();
            c.error(e);
          }
        },
        cancel() {
          close();
        },
      });
    },
  };
}
