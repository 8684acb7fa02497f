// Per-tensor snapshots (model/snapshots.ts over store/snapshot-store.ts): the manifest, the served
// file, dedupe of unchanged tensors, crash ordering, and what a damaged store does.
import { afterAll, describe, expect, test } from 'bun:test';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configFromHf, type ModelConfig } from '../src/model/config.ts';
import { loadModelFromPath } from '../src/model/registry.ts';
import { parseSafetensors } from '../src/model/safetensors.ts';
import {
  encodeManifest,
  ManifestError,
  manifestStream,
  parseManifest,
  planSnapshot,
  readManifest,
  readManifestTensors,
  saveSnapshot,
  writeSnapshot,
} from '../src/model/snapshots.ts';
import { expectedTensors, loadSavedSafetensorsWeights, saveSafetensorsWeights, setWeightsDtype, type ModelWeights } from '../src/model/weights.ts';
import { SnapshotStore } from '../src/store/snapshot-store.ts';
import { Rng } from '../src/util/rng.ts';

const roots: string[] = [];
function freshStore(): SnapshotStore {
  const r = mkdtempSync(join(tmpdir(), 'cola-snap-'));
  roots.push(r);
  return new SnapshotStore(r);
}
afterAll(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

const cfg: ModelConfig = configFromHf({
  model_type: 'llama', hidden_size: 16, intermediate_size: 24, num_hidden_layers: 3, num_attention_heads: 4, num_key_value_heads: 2,
  vocab_size: 40, max_position_embeddings: 32, rms_norm_eps: 1e-5, tie_word_embeddings: false,
});

/** Random weights; norm weights all ones (as a fresh model has): several names, one object. */
function randomWeights(seed: number): ModelWeights {
  const rng = new Rng(seed);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, shape] of expectedTensors(cfg)) {
    const n = shape.reduce((a, b) => a * b, 1);
    tensors.set(name, { shape, data: name.includes('norm') ? new Float32Array(n).fill(1) : Float32Array.from({ length: n }, () => rng.normal() * 0.1) });
  }
  return { config: cfg, tensors };
}

/** The weights after a knot on q and v: those tensors changed (new arrays), the rest the same objects. */
function knotOnQV(w: ModelWeights, seed: number): ModelWeights {
  const rng = new Rng(seed);
  const tensors = new Map(w.tensors);
  for (const [name, t] of w.tensors) {
    if (!/\.(q_proj|v_proj)\.weight$/.test(name)) continue;
    tensors.set(name, { shape: t.shape, data: t.data.map((x) => x + rng.normal() * 1e-3) });
  }
  return { config: w.config, tensors };
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function served(path: string): Promise<Uint8Array> {
  const s = manifestStream(path);
  const bytes = new Uint8Array(await new Response(s.stream()).arrayBuffer());
  expect(bytes.length).toBe(s.size);
  return bytes;
}

const qvBytes = (w: ModelWeights) => [...w.tensors].filter(([n]) => /\.(q_proj|v_proj)\.weight$/.test(n)).reduce((n, [, t]) => n + t.data.byteLength, 0);

describe('per-tensor snapshots', () => {
  test('the served file is byte-identical to saveSafetensorsWeights, hashes to the manifest name, and parses strictly', async () => {
    const store = freshStore();
    const w = randomWeights(1);
    const snap = await saveSnapshot(store, w);
    const whole = saveSafetensorsWeights(w);
    const bytes = await served(snap.path);
    expect(Buffer.compare(Buffer.from(bytes), Buffer.from(whole))).toBe(0);
    expect(snap.sha256).toBe(sha(whole));
    expect(snap.bytes).toBe(whole.length);
    expect(snap.path).toBe(store.pathOf(snap.sha256, 'manifest'));
    const parsed = parseSafetensors(bytes);
    expect([...parsed.tensors.keys()]).toEqual([...w.tensors.keys()].sort());
    // Every tensor once as its own object; the 7 norm vectors of ones share one.
    const distinct = new Set(readManifest(snap.path).tensors.map((t) => t.digest));
    expect(store.list('tensor')).toEqual([...distinct].sort());
    expect(distinct.size).toBe(w.tensors.size - 6);
    expect(snap.writtenBytes).toBe(snap.tensors.reduce((n, r) => n + r.bytes, 0));
  });

  test('loading reads each tensor from its object into its own buffer, values bit-exact', async () => {
    const store = freshStore();
    const w = randomWeights(2);
    const snap = await saveSnapshot(store, w);
    const parsed = readManifestTensors(snap.path);
    expect(parsed.owned).toBe(true);
    const buffers = new Set([...parsed.tensors.values()].map((t) => t.data.buffer));
    expect(buffers.size).toBe(parsed.tensors.size); // no shared whole-file buffer
    const back = loadSavedSafetensorsWeights(parsed);
    for (const [name, t] of w.tensors) expect(Buffer.compare(Buffer.from(back.tensors.get(name)!.data.buffer), Buffer.from(t.data.buffer))).toBe(0);
  });

  test('a knot on q,v stores only the new q and v tensors; the rest reference the parent objects', async () => {
    const store = freshStore();
    const base = randomWeights(3);
    const v0 = await saveSnapshot(store, base);
    let parent = readManifest(v0.path);
    let w = base;
    for (let k = 1; k <= 3; k++) {
      w = knotOnQV(w, 10 + k);
      const before = store.list('tensor').length;
      const plan = planSnapshot(w, { parent });
      const snap = await writeSnapshot(store, plan);
      // 3 layers × (q, v) new objects, nothing else.
      expect(store.list('tensor').length).toBe(before + 6);
      expect(snap.writtenBytes).toBe(qvBytes(w));
      expect(snap.addedBytes).toBe(qvBytes(w));
      expect(plan.added.length).toBe(6);
      expect(snap.addedBytes / snap.bytes).toBeLessThan(0.3);
      // The knot's manifest lists the parent's objects for every unchanged tensor.
      const m = readManifest(snap.path);
      const pd = new Map(parent.tensors.map((t) => [t.name, t.digest]));
      for (const t of m.tensors) expect(t.digest === pd.get(t.name)).toBe(!/\.(q_proj|v_proj)\.weight$/.test(t.name));
      expect(Buffer.compare(Buffer.from(await served(snap.path)), Buffer.from(saveSafetensorsWeights(w)))).toBe(0);
      parent = m;
    }
  });

  test('the same weights give the same manifest and sha256 in another store (deterministic header and order)', async () => {
    const a = await saveSnapshot(freshStore(), randomWeights(4), { metadata: { note: 'x' } });
    const b = await saveSnapshot(freshStore(), randomWeights(4), { metadata: { note: 'x' } });
    expect(a.sha256).toBe(b.sha256);
    expect(Buffer.compare(readFileSync(a.path), readFileSync(b.path))).toBe(0);
    const c = await saveSnapshot(freshStore(), randomWeights(5), { metadata: { note: 'x' } });
    expect(c.sha256).not.toBe(a.sha256);
  });

  test('16-bit weights are stored 16-bit and served as the same file', async () => {
    const store = freshStore();
    const w = setWeightsDtype(randomWeights(6), 'bf16');
    const snap = await saveSnapshot(store, w);
    const whole = saveSafetensorsWeights(w);
    expect(snap.sha256).toBe(sha(whole));
    expect(readManifest(snap.path).tensors.every((t) => t.dtype === 'BF16')).toBe(true);
    const back = loadSavedSafetensorsWeights(readManifestTensors(snap.path));
    expect(back.tensors.get('model.layers.0.self_attn.q_proj.weight')!.dtype).toBe('bf16');
  });

  test('crash safety: a write that fails midway leaves no manifest (a reader never sees a version with missing tensors); a rerun completes it', async () => {
    const store = freshStore();
    const w = randomWeights(7);
    const plan = planSnapshot(w);
    const real = store.putTensor.bind(store);
    let n = 0;
    store.putTensor = async (bytes, digest) => {
      if (++n === 5) throw new Error('disk full');
      return real(bytes, digest);
    };
    await expect(writeSnapshot(store, plan)).rejects.toThrow('disk full');
    expect(store.list('manifest')).toEqual([]);
    expect(store.list('tensor').length).toBe(4);
    store.putTensor = real;
    const snap = await writeSnapshot(store, plan);
    expect(snap.writtenBytes).toBeLessThan(snap.tensors.reduce((s, r) => s + r.bytes, 0)); // the first 4 were kept
    expect(sha(await served(snap.path))).toBe(snap.sha256);
  });

  test('a damaged store is an error naming the tensor, never wrong weights or a short download', async () => {
    const store = freshStore();
    const snap = await saveSnapshot(store, randomWeights(8));
    const m = readManifest(snap.path);
    const q = m.tensors.find((t) => t.name === 'model.layers.1.self_attn.q_proj.weight')!;
    const p = store.pathOf(q.digest, 'tensor');
    truncateSync(p, q.bytes - 4);
    expect(() => readManifestTensors(snap.path)).toThrow(/q_proj.*has \d+ bytes/);
    expect(() => manifestStream(snap.path)).toThrow(ManifestError);
    unlinkSync(p);
    expect(() => readManifestTensors(snap.path)).toThrow(/q_proj.*missing/);
    expect(() => loadModelFromPath(snap.path, { tokenizerPath: '/nonexistent' })).toThrow(/missing/);
  });

  test('parseManifest refuses unsorted names, bad digests, sizes that do not match, and a wrong total', async () => {
    const snap = await saveSnapshot(freshStore(), randomWeights(9));
    const m = readManifest(snap.path);
    const enc = (x: unknown) => new TextEncoder().encode(JSON.stringify(x));
    expect(parseManifest(encodeManifest(m))).toEqual(m);
    const t = m.tensors;
    expect(() => parseManifest(enc({ ...m, tensors: [t[1], t[0], ...t.slice(2)] }))).toThrow(/sorted/);
    expect(() => parseManifest(enc({ ...m, tensors: [{ ...t[0], digest: 'ab' }, ...t.slice(1)] }))).toThrow(/digest/);
    expect(() => parseManifest(enc({ ...m, tensors: [{ ...t[0], bytes: t[0]!.bytes + 4 }, ...t.slice(1)] }))).toThrow(/does not match/);
    expect(() => parseManifest(enc({ ...m, bytes: m.bytes + 8 }))).toThrow(/served length/);
    expect(() => parseManifest(enc({ ...m, format: 'other' }))).toThrow(/format/);
    // A manifest copied under another name is refused (its name is the digest of what it serves).
    const other = join(freshStore().objectsDir, `${'0'.repeat(64)}.manifest`);
    writeFileSync(other, encodeManifest(m));
    expect(() => readManifest(other)).toThrow(/not its own name/);
    expect(existsSync(snap.path)).toBe(true);
  });
});
