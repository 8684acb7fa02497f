// Content-addressed, immutable snapshot store on local disk (or a shared mount).
//
// Layout:  <root>/objects/<aa>/<sha256>.safetensors   (aa = first two hex digits of the sha256)
//          <root>/objects/<aa>/<sha256>.zip           (objects put with ext "zip", e.g. PEFT adapters)
//          <root>/objects/<aa>/<sha256>.json          (optional lineage sidecar, see below)
//          temporary files: <root>/objects/<aa>/.tmp-<sha256>-<pid>-<random> (same directory)
//
// put(bytes) is atomic and idempotent: the bytes are hashed, written to a temporary file in the
// object's directory (open O_CREAT|O_EXCL, write, fsync), renamed over the final name (rename(2)
// is atomic within a directory), and the directory is fsynced so the rename survives a power
// loss. A reader therefore sees either no object or the complete object, never a partial one.
// Two processes putting the same content race harmlessly: both renames install identical bytes.
// A crash leaves at most a `.tmp-*` file, which is never visible as an object and is removed by
// `sweepTemp()`. Objects are never modified or deleted by this module (the database owns
// reference counting / garbage collection).
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

export type ObjectExt = 'safetensors' | 'zip';

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
    if (!this.has(record.sha256) && !this.has(record.sha256, 'zip')) throw new SnapshotStoreError(`lineage for missing snapshot ${record.sha256}`);
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
        const m = /^([0-9a-f]{64})\.(safetensors|zip)$/.exec(f);
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
  if (ext !== 'safetensors' && ext !== 'zip') throw new SnapshotStoreError(`object extension must be "safetensors" or "zip", got ${JSON.stringify(ext)}`);
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
