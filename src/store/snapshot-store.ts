// Content-addressed, immutable snapshot store on local disk (or a shared mount).
//
// Layout:  <root>/objects/<aa>/<sha256>.tensor        (one tensor's raw bytes, little-endian, named by
//                                                     their sha256; aa = first two hex digits)
//          <root>/objects/<aa>/<sha256>.manifest      (a model version: the list of its tensors by
//                                                     digest, named by the sha256 of the safetensors
//                                                     file it stands for; format: model/snapshots.ts)
//          <root>/objects/<aa>/<sha256>.safetensors   (a whole-file version, written before manifests)
//          <root>/objects/<aa>/<sha256>.zip           (objects put with ext "zip", e.g. PEFT adapters)
//          <root>/objects/<aa>/<sha256>.json          (optional lineage sidecar, see below)
//          temporary files: <root>/objects/<aa>/.tmp-<sha256>-<pid>-<random> (same directory)
//
// A version is a manifest: each tensor is stored once as its own object, so a knot or a merge that
// changed q and v adds only the new q and v objects and lists the parent's objects for the rest;
// identical tensors of any versions, models or tenants are one object. A manifest is installed
// only after all its tensor objects are, so a manifest on disk never names a missing tensor (until
// the database's garbage collection removes them together: db/repos/deletes.ts).
//
// put(bytes) is atomic and idempotent: the bytes are hashed, written to a temporary file in the
// object's directory (open O_CREAT|O_EXCL, write, fsync), renamed over the final name (rename(2)
// is atomic within a directory), and the directory is fsynced so the rename survives a power
// loss. A reader therefore sees either no object or the complete object, never a partial one.
// Two processes putting the same content race harmlessly: both renames install identical bytes.
// A crash leaves at most a `.tmp-*` file, which is never visible as an object and is removed by
// `sweepTemp()`. Objects are never modified by this module, and deleted only when the database says
// no row references them any more (Store.free / Store.freeTensors, inside the deciding transaction).
//
// Lineage: the database holds the canonical metadata (versions, parents, jobs). A JSON sidecar
// with the same fields is written next to the object for operators and disaster recovery; it is
// written atomically too, first writer wins (the object is identified by its content; a second
// lineage for identical bytes is not recorded here).

import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/atomic.ts';

export interface StoredObject {
  sha256: string;
  path: string;
  bytes: number;
}

export interface LineageRecord {
  sha256: string;
  /** sha256 of the parent snapshot (null for a base model). */
  parent: string | null;
  kind: 'base' | 'knot' | 'merge';
  model?: string;
  version?: number;
  jobId?: string;
  link?: number;
  rank?: number;
  steps?: number;
  valLoss?: number | null;
  flops?: number;
  createdAt?: string;
}

export class SnapshotStoreError extends Error {
  override name = 'SnapshotStoreError';
}

const SHA_RE = /^[0-9a-f]{64}$/;

export type ObjectExt = 'safetensors' | 'zip' | 'tensor' | 'manifest';
const EXTS: readonly string[] = ['safetensors', 'zip', 'tensor', 'manifest'];

export interface PutHooks {
  /** Called after each chunk written to the temporary file (tests use it to slow writes down). */
  afterChunk?: (written: number, total: number) => void | Promise<void>;
  /** File extension of the object (default "safetensors"). */
  ext?: ObjectExt;
}

export class SnapshotStore {
  readonly root: string;
  readonly objectsDir: string;

  constructor(root: string) {
    if (typeof root !== 'string' || root.length === 0) throw new SnapshotStoreError('snapshot store root must be a path');
    this.root = root;
    this.objectsDir = join(root, 'objects');
    mkdirSync(this.objectsDir, { recursive: true });
  }

  static sha256(bytes: Uint8Array): string {
    return createHash('sha256').update(bytes).digest('hex');
  }

  pathOf(sha256: string, ext: ObjectExt = 'safetensors'): string {
    checkSha(sha256);
    checkExt(ext);
    return join(this.objectsDir, sha256.slice(0, 2), `${sha256}.${ext}`);
  }

  has(sha256: string, ext: ObjectExt = 'safetensors'): boolean {
    try {
      return statSync(this.pathOf(sha256, ext)).isFile();
    } catch (e) {
      if (isNotFound(e)) return false;
      throw e;
    }
  }

  /** Stores the bytes (atomically, idempotently) and returns their address. */
  async put(bytes: Uint8Array, hooks: PutHooks = {}): Promise<StoredObject> {
    if (!(bytes instanceof Uint8Array)) throw new SnapshotStoreError('put expects a Uint8Array');
    const sha256 = SnapshotStore.sha256(bytes);
    const ext = hooks.ext ?? 'safetensors';
    const path = this.pathOf(sha256, ext);
    if (this.has(sha256, ext)) {
      const size = statSync(path).size;
      if (size !== bytes.length) {
        throw new SnapshotStoreError(`object ${sha256} on disk has ${size} bytes, expected ${bytes.length}: the store is corrupt`);
      }
      return { sha256, path, bytes: bytes.length };
    }
    await writeFileAtomic(path, bytes, { afterChunk: hooks.afterChunk, tmpPrefix: `.tmp-${sha256}` });
    return { sha256, path, bytes: bytes.length };
  }

  /**
   * Stores one tensor's bytes as a `.tensor` object. With `digest` (the caller hashed them already)
   * an object that is already there is only checked for its size, not hashed again; a new one is
   * hashed while written and must match `digest`.
   */
  async putTensor(bytes: Uint8Array, digest?: string): Promise<StoredObject & { created: boolean }> {
    if (digest !== undefined) {
      const path = this.pathOf(digest, 'tensor');
      const size = sizeOf(path);
      if (size !== null) {
        if (size !== bytes.length) throw new SnapshotStoreError(`tensor object ${digest} on disk has ${size} bytes, expected ${bytes.length}: the store is corrupt`);
        return { sha256: digest, path, bytes: size, created: false };
      }
    }
    const sha256 = SnapshotStore.sha256(bytes);
    if (digest !== undefined && sha256 !== digest) throw new SnapshotStoreError(`tensor bytes hash to ${sha256}, not ${digest}`);
    const existed = this.has(sha256, 'tensor');
    const o = await this.put(bytes, { ext: 'tensor' });
    return { ...o, created: !existed };
  }

  /** True when the tensor object is there; throws when it is there with another size (corrupt store). */
  hasTensor(digest: string, bytes: number): boolean {
    const size = sizeOf(this.pathOf(digest, 'tensor'));
    if (size === null) return false;
    if (size !== bytes) throw new SnapshotStoreError(`tensor object ${digest} on disk has ${size} bytes, expected ${bytes}: the store is corrupt`);
    return true;
  }

  /**
   * Installs a version's manifest under the sha256 of the file it stands for (atomic; a manifest
   * already there is kept: the same file digest means the same tensors, so the same manifest).
   */
  async putManifest(sha256: string, json: Uint8Array): Promise<StoredObject> {
    const path = this.pathOf(sha256, 'manifest');
    if (!this.has(sha256, 'manifest')) await writeFileAtomic(path, json, { tmpPrefix: `.tmp-${sha256}-manifest` });
    return { sha256, path, bytes: json.length };
  }

  /**
   * The object's bytes. With `verify` (default true) the content is re-hashed and a mismatch
   * (disk corruption, tampering) throws. Throws SnapshotStoreError when the object is absent.
   */
  get(sha256: string, opts: { verify?: boolean; ext?: ObjectExt } = {}): Uint8Array {
    const path = this.pathOf(sha256, opts.ext ?? 'safetensors');
    let bytes: Uint8Array;
    try {
      bytes = readFileSync(path);
    } catch (e) {
      if (isNotFound(e)) throw new SnapshotStoreError(`no snapshot ${sha256}`);
      throw e;
    }
    if ((opts.verify ?? true) && SnapshotStore.sha256(bytes) !== sha256) {
      throw new SnapshotStoreError(`snapshot ${sha256} is corrupt: its content hashes differently`);
    }
    return bytes;
  }

  /** Writes the lineage sidecar for an existing object unless one exists (first writer wins). */
  async putLineage(record: LineageRecord): Promise<void> {
    checkSha(record.sha256);
    if (record.parent !== null) checkSha(record.parent);
    if (!this.has(record.sha256) && !this.has(record.sha256, 'zip') && !this.has(record.sha256, 'manifest')) throw new SnapshotStoreError(`lineage for missing snapshot ${record.sha256}`);
    const dir = join(this.objectsDir, record.sha256.slice(0, 2));
    const path = join(dir, `${record.sha256}.json`);
    if (exists(path)) return;
    const json = new TextEncoder().encode(JSON.stringify(record, null, 2) + '\n');
    await writeFileAtomic(path, json, { tmpPrefix: `.tmp-${record.sha256}-lineage` });
  }

  getLineage(sha256: string): LineageRecord | null {
    checkSha(sha256);
    try {
      return JSON.parse(readFileSync(join(this.objectsDir, sha256.slice(0, 2), `${sha256}.json`), 'utf8')) as LineageRecord;
    } catch (e) {
      if (isNotFound(e)) return null;
      throw e;
    }
  }

  /** Every stored object's sha256 with the given extension (temporary files excluded). */
  list(ext: ObjectExt = 'safetensors'): string[] {
    checkExt(ext);
    const out: string[] = [];
    for (const d of readdirSync(this.objectsDir)) {
      if (!/^[0-9a-f]{2}$/.test(d)) continue;
      for (const f of readdirSync(join(this.objectsDir, d))) {
        const m = /^([0-9a-f]{64})\.(safetensors|zip|tensor|manifest)$/.exec(f);
        if (m && m[2] === ext) out.push(m[1]!);
      }
    }
    return out.sort();
  }

  /**
   * Removes temporary files left by crashed writers that are older than `olderThanMs` (default 1 h,
   * so a slow writer in another process is not disturbed). Returns the removed paths.
   */
  sweepTemp(olderThanMs = 3_600_000): string[] {
    const removed: string[] = [];
    const now = Date.now();
    for (const d of readdirSync(this.objectsDir)) {
      const dir = join(this.objectsDir, d);
      if (!statSync(dir).isDirectory()) continue;
      for (const f of readdirSync(dir)) {
        if (!f.startsWith('.tmp-')) continue;
        const p = join(dir, f);
        try {
          if (now - statSync(p).mtimeMs >= olderThanMs) {
            unlinkSync(p);
            removed.push(p);
          }
        } catch (e) {
          if (!isNotFound(e)) throw e;
        }
      }
    }
    return removed;
  }
}

function checkExt(ext: string): void {
  if (!EXTS.includes(ext)) throw new SnapshotStoreError(`object extension must be one of ${EXTS.join(', ')}, got ${JSON.stringify(ext)}`);
}

/** Size of a regular file, or null when there is none. */
function sizeOf(p: string): number | null {
  try {
    const st = statSync(p);
    return st.isFile() ? st.size : null;
  } catch (e) {
    if (isNotFound(e)) return null;
    throw e;
  }
}

function checkSha(s: string): void {
  if (typeof s !== 'string' || !SHA_RE.test(s)) throw new SnapshotStoreError(`not a sha256 (64 lower-case hex digits): ${JSON.stringify(s)}`);
}

function exists(p: string): boolean {
  try {
    statSync(p);
    return true;
  } catch (e) {
    if (isNotFound(e)) return false;
    throw e;
  }
}

function isNotFound(e: unknown): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: string }).code === 'ENOENT';
}
