// The one way this project installs a file: a temporary file in the target's directory (same
// filesystem, so rename(2) is atomic) → write → fsync → close → rename over the final name →
// fsync(dir) so that the rename survives a power loss. Readers see the old file or the whole new
// one, never a partial file; a crash leaves at most a `.tmp-*` file, which never has a final name
// (the snapshot store's sweep removes them). Every failure removes the temporary file.
import { randomBytes } from 'node:crypto';
import { closeSync, constants, fsyncSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
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

export interface AtomicWriteHooks {
  /** Called after each 1 MiB chunk is written (tests use it to crash or race a write midway). */
  afterChunk?: (written: number, total: number) => Promise<void> | void;
  /** Name of the temporary file (see AtomicFile). */
  tmpPrefix?: string;
}

/** Writes `bytes` to `finalPath` atomically (see the header). */
export async function writeFileAtomic(finalPath: string, bytes: Uint8Array, hooks: AtomicWriteHooks = {}): Promise<void> {
  const f = new AtomicFile(finalPath, hooks.tmpPrefix);
  try {
    if (!hooks.afterChunk) f.write(bytes);
    else {
      for (let off = 0; off < bytes.length; ) {
        const end = Math.min(bytes.length, off + CHUNK);
        f.write(bytes.subarray(off, end));
        off = end;
        await hooks.afterChunk(off, bytes.length);
      }
    }
    f.commit();
  } finally {
    f.abort();
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

export function fsyncDir(dir: string): void {
  const fd = openSync(dir, constants.O_RDONLY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
