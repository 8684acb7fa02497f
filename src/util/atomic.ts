// The one way this project installs a file: a temporary file in the target's directory (same
// filesystem, so rename(2) is atomic) → write → fsync → close → rename over the final name →
// fsync(dir) so that the rename survives a power loss. Readers see the old file or the whole new
// one, never a partial file; a crash leaves at most a `.tmp-*` file, which never has a final name
// (the snapshot store's sweep removes them). Every failure removes the temporary file.
// AsyncAtomicFile and writeFileAtomic do the same through node:fs/promises (request paths: a large
// write or an fsync never blocks the event loop); AtomicFile / writeFileAtomicSync are for callers
// that hold no event-loop turn.
import { randomBytes } from 'node:crypto';
import { closeSync, constants, fsyncSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

const CHUNK = 1 << 20;

/** A file being written under a temporary name; commit() installs it, abort() removes it. */
export class AtomicFile {
  readonly tmp: string;
  private fd: number | null;
  private done = false;
  bytes = 0;

  /** `tmpPrefix` names the temporary file (default `.tmp-<final name>`); a pid and random suffix follow. */
  constructor(
    readonly finalPath: string,
    tmpPrefix = `.tmp-${basename(finalPath)}`,
  ) {
    const dir = dirname(finalPath);
    mkdirSync(dir, { recursive: true });
    this.tmp = join(dir, `${tmpPrefix}-${process.pid}-${randomBytes(6).toString('hex')}`);
    this.fd = openSync(this.tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
  }

  /** Appends all of `bytes` (in 1 MiB writes). */
  write(bytes: Uint8Array): void {
    if (this.fd === null) throw new Error(`write after commit/abort of ${this.tmp}`);
    let off = 0;
    while (off < bytes.length) {
      const n = writeSync(this.fd, bytes, off, Math.min(CHUNK, bytes.length - off));
      if (n <= 0) throw new Error(`short write to ${this.tmp}`);
      off += n;
    }
    this.bytes += bytes.length;
  }

  /** fsync, close, rename into place, fsync the directory. On failure the temporary file is removed. */
  commit(): void {
    if (this.fd === null) throw new Error(`commit after commit/abort of ${this.tmp}`);
    try {
      fsyncSync(this.fd);
      closeSync(this.fd);
      this.fd = null;
      renameSync(this.tmp, this.finalPath);
      this.done = true;
      fsyncDir(dirname(this.finalPath));
    } finally {
      if (!this.done) this.abort();
    }
  }

  /** Closes and removes the temporary file (no-op after a commit). */
  abort(): void {
    if (this.fd !== null) {
      try {
        closeSync(this.fd);
      } catch {
        // closing is best effort: the file is removed next
      }
      this.fd = null;
    }
    if (this.done) return;
    this.done = true;
    try {
      unlinkSync(this.tmp);
    } catch {
      // already gone; nothing to clean
    }
  }
}

/** AtomicFile with asynchronous I/O (open with `AsyncAtomicFile.open`). */
export class AsyncAtomicFile {
  private done = false;
  bytes = 0;

  private constructor(
    readonly finalPath: string,
    readonly tmp: string,
    private fh: fsp.FileHandle | null,
  ) {}

  /** `tmpPrefix` names the temporary file (default `.tmp-<final name>`); a pid and random suffix follow. */
  static async open(finalPath: string, tmpPrefix = `.tmp-${basename(finalPath)}`): Promise<AsyncAtomicFile> {
    const dir = dirname(finalPath);
    await fsp.mkdir(dir, { recursive: true });
    const tmp = join(dir, `${tmpPrefix}-${process.pid}-${randomBytes(6).toString('hex')}`);
    return new AsyncAtomicFile(finalPath, tmp, await fsp.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644));
  }

  /** Appends all of `bytes` (in 1 MiB writes). */
  async write(bytes: Uint8Array): Promise<void> {
    if (this.fh === null) throw new Error(`write after commit/abort of ${this.tmp}`);
    let off = 0;
    while (off < bytes.length) {
      const { bytesWritten } = await this.fh.write(bytes, off, Math.min(CHUNK, bytes.length - off));
      if (bytesWritten <= 0) throw new Error(`short write to ${this.tmp}`);
      off += bytesWritten;
    }
    this.bytes += bytes.length;
  }

  /** fsync, close, rename into place, fsync the directory. On failure the temporary file is removed. */
  async commit(): Promise<void> {
    if (this.fh === null) throw new Error(`commit after commit/abort of ${this.tmp}`);
    try {
      await this.fh.sync();
      const fh = this.fh;
      this.fh = null;
      await fh.close();
      await fsp.rename(this.tmp, this.finalPath);
      this.done = true;
      await fsyncDirAsync(dirname(this.finalPath));
    } finally {
      if (!this.done) await this.abort();
    }
  }

  /** Closes and removes the temporary file (no-op after a commit). */
  async abort(): Promise<void> {
    if (this.fh !== null) {
      const fh = this.fh;
      this.fh = null;
      await fh.close().catch(() => {}); // best effort: the file is removed next
    }
    if (this.done) return;
    this.done = true;
    await fsp.unlink(this.tmp).catch(() => {}); // already gone; nothing to clean
  }
}

export interface AtomicWriteHooks {
  /** Called after each 1 MiB chunk is written (tests use it to crash or race a write midway). */
  afterChunk?: (written: number, total: number) => Promise<void> | void;
  /** Name of the temporary file (see AtomicFile). */
  tmpPrefix?: string;
}

/** Writes `bytes` to `finalPath` atomically (see the header), with asynchronous I/O. */
export async function writeFileAtomic(finalPath: string, bytes: Uint8Array, hooks: AtomicWriteHooks = {}): Promise<void> {
  const f = await AsyncAtomicFile.open(finalPath, hooks.tmpPrefix);
  try {
    if (!hooks.afterChunk) await f.write(bytes);
    else {
      for (let off = 0; off < bytes.length; ) {
        const end = Math.min(bytes.length, off + CHUNK);
        await f.write(bytes.subarray(off, end));
        off = end;
        await hooks.afterChunk(off, bytes.length);
      }
    }
    await f.commit();
  } finally {
    await f.abort();
  }
}

/** Synchronous writeFileAtomic (no hooks), for callers that hold no event loop turn. */
export function writeFileAtomicSync(finalPath: string, bytes: Uint8Array, tmpPrefix?: string): void {
  const f = new AtomicFile(finalPath, tmpPrefix);
  try {
    f.write(bytes);
    f.commit();
  } finally {
    f.abort();
  }
}

export async function fsyncDirAsync(dir: string): Promise<void> {
  const fh = await fsp.open(dir, constants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export function fsyncDir(dir: string): void {
  const fd = openSync(dir, constants.O_RDONLY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
