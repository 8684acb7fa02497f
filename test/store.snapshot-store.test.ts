import { afterAll, describe, expect, test } from 'bun:test';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { SnapshotStore, SnapshotStoreError } from '../src/store/snapshot-store.ts';
import { Rng } from '../src/util/rng.ts';

const roots: string[] = [];
function freshRoot(): string {
  const r = mkdtempSync(join(tmpdir(), 'cola-store-'));
  roots.push(r);
  return r;
}
afterAll(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

function randomBytesSeeded(n: number, seed: number): Uint8Array {
  const rng = new Rng(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 4) {
    const x = rng.nextU32();
    for (let k = 0; k < 4 && i + k < n; k++) out[i + k] = (x >>> (8 * k)) & 255;
  }
  return out;
}

/** Every file under objects/, relative paths. */
function allFiles(store: SnapshotStore): string[] {
  const out: string[] = [];
  for (const d of readdirSync(store.objectsDir)) for (const f of readdirSync(join(store.objectsDir, d))) out.push(`${d}/${f}`);
  return out.sort();
}

describe('SnapshotStore', () => {
  test('put/get/has: content-addressed path, idempotent', async () => {
    const store = new SnapshotStore(freshRoot());
    const bytes = randomBytesSeeded(3000, 1);
    const a = await store.put(bytes);
    expect(a.sha256).toBe(new Bun.CryptoHasher('sha256').update(bytes).digest('hex'));
    expect(a.path).toBe(join(store.root, 'objects', a.sha256.slice(0, 2), `${a.sha256}.safetensors`));
    expect(a.bytes).toBe(3000);
    expect(store.has(a.sha256)).toBe(true);
    expect(store.get(a.sha256)).toEqual(bytes);
    const mtime = statSync(a.path).mtimeMs;
    const b = await store.put(bytes.slice());
    expect(b).toEqual(a);
    expect(statSync(a.path).mtimeMs).toBe(mtime); // not rewritten
    expect(allFiles(store)).toEqual([`${a.sha256.slice(0, 2)}/${a.sha256}.safetensors`]);
    expect(store.list()).toEqual([a.sha256]);
    const empty = await store.put(new Uint8Array(0));
    expect(store.get(empty.sha256).length).toBe(0);
  });

  test('zip objects (PEFT adapters) live beside safetensors objects', async () => {
    const store = new SnapshotStore(freshRoot());
    const bytes = randomBytesSeeded(500, 11);
    const z = await store.put(bytes, { ext: 'zip' });
    expect(z.path.endsWith(`${z.sha256}.zip`)).toBe(true);
    expect(store.has(z.sha256, 'zip')).toBe(true);
    expect(store.has(z.sha256)).toBe(false);
    expect(store.get(z.sha256, { ext: 'zip' })).toEqual(bytes);
    expect(store.list('zip')).toEqual([z.sha256]);
    expect(store.list()).toEqual([]);
    expect(() => store.pathOf(z.sha256, 'exe' as never)).toThrow(/extension/);
    await store.putLineage({ sha256: z.sha256, parent: null, kind: 'knot', link: 1 });
    expect(store.getLineage(z.sha256)?.link).toBe(1);
  });

  test('missing, malformed and corrupt objects', async () => {
    const store = new SnapshotStore(freshRoot());
    expect(store.has('0'.repeat(64))).toBe(false);
    expect(() => store.get('0'.repeat(64))).toThrow(/no snapshot/);
    expect(() => store.get('../etc/passwd')).toThrow(SnapshotStoreError);
    expect(() => store.has('A'.repeat(64))).toThrow(/sha256/);
    const o = await store.put(randomBytesSeeded(100, 2));
    writeFileSync(o.path, randomBytesSeeded(100, 3)); // bit rot / tampering
    expect(() => store.get(o.sha256)).toThrow(/corrupt/);
    expect(store.get(o.sha256, { verify: false }).length).toBe(100);
  });

  test('lineage sidecar: first writer wins, needs the object', async () => {
    const store = new SnapshotStore(freshRoot());
    const base = await store.put(randomBytesSeeded(64, 4));
    const knot = await store.put(randomBytesSeeded(64, 5));
    expect(store.getLineage(knot.sha256)).toBeNull();
    await store.putLineage({ sha256: knot.sha256, parent: base.sha256, kind: 'knot', link: 0, rank: 8, steps: 10, valLoss: 1.5, flops: 1e9 });
    await store.putLineage({ sha256: knot.sha256, parent: null, kind: 'merge' });
    expect(store.getLineage(knot.sha256)).toMatchObject({ parent: base.sha256, kind: 'knot', link: 0, rank: 8, steps: 10, valLoss: 1.5 });
    await expect(store.putLineage({ sha256: 'f'.repeat(64), parent: null, kind: 'base' })).rejects.toThrow(/missing snapshot/);
    expect(store.list()).toEqual([base.sha256, knot.sha256].sort());
  });

  test('a temp file that was never renamed is invisible; a later put succeeds; sweep removes it', async () => {
    const store = new SnapshotStore(freshRoot());
    const bytes = randomBytesSeeded(5000, 6);
    const sha = SnapshotStore.sha256(bytes);
    const dir = join(store.objectsDir, sha.slice(0, 2));
    const { mkdirSync } = await import('node:fs');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `.tmp-${sha}-99999-deadbeef0000`), bytes.subarray(0, 1234)); // crashed writer
    expect(store.has(sha)).toBe(false);
    expect(store.list()).toEqual([]);
    const o = await store.put(bytes);
    expect(store.get(o.sha256)).toEqual(bytes);
    expect(store.sweepTemp(3_600_000)).toEqual([]); // too young to sweep
    expect(store.sweepTemp(0).length).toBe(1);
    expect(allFiles(store)).toEqual([`${sha.slice(0, 2)}/${sha}.safetensors`]);
  });

  test('a writer killed mid-write (SIGKILL) leaves no partial object; a later put succeeds', async () => {
    const root = freshRoot();
    const modPath = resolve(import.meta.dir, '../src/store/snapshot-store.ts');
    const rngPath = resolve(import.meta.dir, '../src/util/rng.ts');
    // Child: 32 MiB of seeded bytes, written 1 MiB at a time with 200 ms pauses (≥ 6 s in all).
    const code = `
      const { SnapshotStore } = await import(${JSON.stringify(modPath)});
      const { Rng } = await import(${JSON.stringify(rngPath)});
      const rng = new Rng(77); const n = 32 << 20; const b = new Uint8Array(n);
      for (let i = 0; i < n; i += 4) { const x = rng.nextU32(); b[i] = x; b[i+1] = x >>> 8; b[i+2] = x >>> 16; b[i+3] = x >>> 24; }
      const s = new SnapshotStore(${JSON.stringify(root)});
      await s.put(b, { afterChunk: async (w) => { if (w === 1 << 21) console.log('WRITING'); await Bun.sleep(200); } });
      console.log('DONE');
    `;
    const child = Bun.spawn([process.execPath, '-e', code], { stdout: 'pipe', stderr: 'inherit' });
    const reader = child.stdout.getReader();
    let out = '';
    while (!out.includes('WRITING')) {
      const { value, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(value);
    }
    expect(out).toContain('WRITING');
    child.kill('SIGKILL');
    await child.exited;
    expect(out).not.toContain('DONE');

    const store = new SnapshotStore(root);
    const n = 32 << 20;
    const bytes = randomBytesSeeded(n, 77);
    const sha = SnapshotStore.sha256(bytes);
    expect(store.has(sha)).toBe(false);
    expect(store.list()).toEqual([]);
    const files = allFiles(store);
    expect(files.length).toBe(1);
    expect(files[0]!).toMatch(new RegExp(`^${sha.slice(0, 2)}/\\.tmp-${sha}-`));
    const partial = statSync(join(store.objectsDir, files[0]!)).size;
    expect(partial).toBeGreaterThan(0);
    expect(partial).toBeLessThan(n);

    const o = await store.put(bytes);
    expect(o.sha256).toBe(sha);
    expect(store.get(sha).length).toBe(n);
    expect(store.sweepTemp(0).length).toBe(1);
    expect(existsSync(o.path)).toBe(true);
  }, 60_000);

  test('concurrent puts of the same content (in-process and across processes) are safe', async () => {
    const root = freshRoot();
    const store = new SnapshotStore(root);
    const bytes = randomBytesSeeded(3 << 20, 9);
    const slow = { afterChunk: () => Bun.sleep(5) };
    const results = await Promise.all([store.put(bytes, slow), store.put(bytes, slow), store.put(bytes), store.put(bytes, slow)]);
    for (const r of results) expect(r).toEqual(results[0]!);
    expect(store.get(results[0]!.sha256)).toEqual(bytes);

    const root2 = freshRoot();
    const modPath = resolve(import.meta.dir, '../src/store/snapshot-store.ts');
    const rngPath = resolve(import.meta.dir, '../src/util/rng.ts');
    const code = `
      const { SnapshotStore } = await import(${JSON.stringify(modPath)});
      const { Rng } = await import(${JSON.stringify(rngPath)});
      const rng = new Rng(9); const n = 3 << 20; const b = new Uint8Array(n);
      for (let i = 0; i < n; i += 4) { const x = rng.nextU32(); b[i] = x; b[i+1] = x >>> 8; b[i+2] = x >>> 16; b[i+3] = x >>> 24; }
      const o = await new SnapshotStore(${JSON.stringify(root2)}).put(b, { afterChunk: () => Bun.sleep(2) });
      console.log(o.sha256);
    `;
    const kids = Array.from({ length: 4 }, () => Bun.spawn([process.execPath, '-e', code], { stdout: 'pipe', stderr: 'inherit' }));
    const outs = await Promise.all(kids.map(async (k) => ((await k.exited) === 0 ? (await new Response(k.stdout).text()).trim() : 'failed')));
    const want = SnapshotStore.sha256(bytes);
    expect(outs).toEqual([want, want, want, want]);
    const s2 = new SnapshotStore(root2);
    expect(s2.get(want)).toEqual(bytes);
    expect(allFiles(s2)).toEqual([`${want.slice(0, 2)}/${want}.safetensors`]);
  }, 60_000);
});
