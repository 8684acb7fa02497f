// Per-tensor snapshots through the real server (HTTP), the real model services, the real COLA
// runner on the WebGPU device (lavapipe is fine) and a worker, on PGlite and on Postgres:
// - two tenants import the same checkpoint: one set of tensor objects, each tenant charged for it;
// - a 3-knot job on q,v: each knot adds exactly the q and v tensors of every layer (measured on
//   disk and in stored_bytes), every other tensor is its parent's object;
// - GET …/weights is one safetensors file: Content-Length, sha256 == the version's, strict parse,
//   the same bytes on a second download and from a second run of the same request;
// - deletes free exactly the tensors nothing else references: one shared with another version
//   (or another tenant's import) stays; after the last delete no tensor object is left.
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { tiers, type TestDb } from './db.fixtures.ts';
import { serveWithWorker } from './service.fixtures.ts';
import { loadConfig } from '../src/config.ts';
import { createTenant } from '../src/db/repos/tenants.ts';
import { tenantStoredBytes } from '../src/db/repos/files.ts';
import { registerBaseModel } from '../src/main.ts';
import { createModelServices } from '../src/cola/services.ts';
import { createJobRunner } from '../src/cola/runner.ts';
import { Engine } from '../src/gpu/engine.ts';
import { GpuScheduler } from '../src/gpu/scheduler.ts';
import { parseSafetensors } from '../src/model/safetensors.ts';
import { readManifest, type Manifest } from '../src/model/snapshots.ts';
import type { JobRunner, Services } from '../src/services.ts';
import { Store } from '../src/store/store.ts';
import { SnapshotStore } from '../src/store/snapshot-store.ts';

const ROOT = path.resolve(import.meta.dir, '..');
const STORIES = [{ text: 'Lily liked to play in the park.' }, { text: 'Tom had a big red ball.' }, { prompt: 'The sun', completion: ' was warm and bright.' }];
// 3 examples, batch 1, 3 epochs: 9 steps in 3 links, a knot at the end of each; LoRA on q, v (the default).
const JOB = { model: 's-a', train: STORIES, epochs: 3, batch_size: 1, max_seq_len: 32, chain: { links: 3 }, seed: 7 };
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const QV = /\.(q_proj|v_proj)\.weight$/;

let runner: JobRunner;
beforeAll(async () => {
  const eng = await Engine.create();
  runner = createJobRunner(eng, ROOT, new GpuScheduler(eng, { trainShare: 0.5 }));
}, 60_000);

for (const tier of tiers) {
  describe(`per-tensor snapshots (${tier.name})`, () => {
    let T: TestDb;
    let srv: ReturnType<typeof serveWithWorker>;
    let url: string;
    let A: string, B: string, aId: string, bId: string;
    let objects: SnapshotStore;
    const h = (k: string) => ({ authorization: `Bearer ${k}`, 'content-type': 'application/json' });
    const call = (k: string, method: string, p: string, body?: unknown) => fetch(`${url}${p}`, { method, headers: h(k), body: body === undefined ? undefined : JSON.stringify(body) });
    const info = async (k: string, m: string) => (await (await call(k, 'GET', `/models/${m}`)).json()) as any;
    const tensorFiles = () => objects.list('tensor');
    const tensorDiskBytes = () => tensorFiles().reduce((n, d) => n + fs.statSync(objects.pathOf(d, 'tensor')).size, 0);
    const manifestOf = (v: { sha256: string }): Manifest => readManifest(objects.pathOf(v.sha256, 'manifest'));

    beforeAll(async () => {
      T = await tier.make();
      const config = loadConfig({ COLA_DATA_DIR: T.dataDir, COLA_QUOTA_RPM: '100000', COLA_QUOTA_CONCURRENT_JOBS: '100' });
      const a = await createTenant(T.database.db, { name: 'snap-a' });
      const b = await createTenant(T.database.db, { name: 'snap-b' });
      [A, aId, B, bId] = [a.apiKey, a.tenant.id, b.apiKey, b.tenant.id];
      await registerBaseModel(T.database.db, config, () => {});
      const store = new Store(path.join(T.dataDir, 'store'));
      objects = store.objects();
      const services: Services = { ...createModelServices({ repoRoot: config.repoRoot, exportDir: path.join(T.dataDir, 'exports') }), runner };
      srv = serveWithWorker({ config, db: T.database, services, store, runner });
      url = srv.url;
    }, 60_000);
    afterAll(async () => {
      await srv?.stop();
      await T?.cleanup();
    });

    async function finetune(out: string): Promise<any> {
      const r = await call(A, 'POST', '/finetune', { ...JOB, output_model: out });
      expect(r.status).toBe(202);
      const id = ((await r.json()) as any).id;
      const end = Date.now() + 200_000;
      for (;;) {
        const j = (await (await call(A, 'GET', `/finetune/${id}`)).json()) as any;
        if (j.status !== 'queued' && j.status !== 'running') return j;
        if (Date.now() > end) throw new Error(`job ${id} did not finish: ${JSON.stringify(j)}`);
        await Bun.sleep(100);
      }
    }

    async function download(k: string, m: string, v: number): Promise<{ bytes: Uint8Array; length: number }> {
      const r = await call(k, 'GET', `/models/${m}/versions/${v}/weights`);
      expect(r.status).toBe(200);
      // The handler's Content-Length, read in process: Bun.serve 1.4.5 drops it from a streamed body
      // on the wire and sends it chunked (oven-sh/bun#10507).
      const inProcess = await srv.app.fetch(new Request(`${url}/models/${m}/versions/${v}/weights`, { headers: h(k) }));
      await inProcess.body?.cancel();
      const length = Number(inProcess.headers.get('content-length'));
      return { bytes: new Uint8Array(await r.arrayBuffer()), length };
    }

    test('imports, a 3-knot job on q,v, downloads, and deletes that free exactly the unshared tensors', async () => {
      const src = path.join(ROOT, 'models/stories260K');
      expect((await call(A, 'POST', '/models', { name: 's-a', source: { path: src } })).status).toBe(201);
      const objectsAfterOne = tensorFiles();
      expect((await call(B, 'POST', '/models', { name: 's-b', source: { path: src } })).status).toBe(201);
      // The same checkpoint twice: one set of objects; each tenant is charged for what it imported.
      expect(tensorFiles()).toEqual(objectsAfterOne);
      const [ia, ib] = [await info(A, 's-a'), await info(B, 's-b')];
      expect(ib.versions[0].sha256).toBe(ia.versions[0].sha256);
      const base = ia.versions[0];
      const baseManifest = manifestOf(base);
      const baseTensorBytes = baseManifest.tensors.reduce((n, t) => n + t.bytes, 0);
      const distinct = new Map(baseManifest.tensors.map((t) => [t.digest, t.bytes]));
      expect(base.stored_bytes).toBe([...distinct.values()].reduce((n, b) => n + b, 0)); // every distinct tensor once
      expect(base.stored_bytes).toBeLessThanOrEqual(baseTensorBytes);
      expect(await tenantStoredBytes(T.database.db, bId)).toBe(base.stored_bytes);

      // ---- 3 knots on q, v
      const diskBefore = tensorDiskBytes();
      const j = await finetune('k3');
      expect(j.status).toBe('succeeded');
      expect(j.knots.length).toBe(3);
      const vs = (await info(A, 'k3')).versions as any[];
      expect(vs.map((v) => v.kind)).toEqual(['knot', 'knot', 'knot']);
      const qvBytes = baseManifest.tensors.filter((t) => QV.test(t.name)).reduce((n, t) => n + t.bytes, 0);
      let parent = baseManifest;
      for (const v of vs) {
        const m = manifestOf(v);
        const was = new Map(parent.tensors.map((t) => [t.name, t.digest]));
        const changed = m.tensors.filter((t) => t.digest !== was.get(t.name)).map((t) => t.name);
        expect(changed.sort()).toEqual(baseManifest.tensors.filter((t) => QV.test(t.name)).map((t) => t.name).sort());
        // stored_bytes: the new q and v objects, plus the knot's adapter archive
        const zip = (await (await call(A, 'GET', `/models/k3/versions/${v.version}/adapter`)).arrayBuffer()).byteLength;
        expect(zip).toBeGreaterThan(0);
        expect(v.stored_bytes).toBe(qvBytes + zip);
        parent = m;
      }
      // On disk: exactly 3 × (q and v of every layer) more tensor bytes.
      expect(tensorDiskBytes() - diskBefore).toBe(3 * qvBytes);
      const ratio = qvBytes / base.bytes;
      console.log(`stories260K: a knot on q,v stores ${qvBytes} tensor bytes, a full copy is ${base.bytes}: ${(100 * ratio).toFixed(1)} %`);
      expect(ratio).toBeLessThan(0.15);

      // ---- downloads: one safetensors file, its sha256 the version's, the same bytes every time
      for (const v of [base, ...vs]) {
        const model = v === base ? 's-a' : 'k3';
        const d = await download(A, model, v.version);
        expect(d.length).toBe(v.bytes);
        expect(d.bytes.length).toBe(v.bytes);
        expect(sha(d.bytes)).toBe(v.sha256);
        const p = parseSafetensors(d.bytes); // the strict parser
        expect(p.tensors.size).toBe(baseManifest.tensors.length);
        expect(Buffer.compare(Buffer.from((await download(A, model, v.version)).bytes), Buffer.from(d.bytes))).toBe(0);
      }
      // The same request again: the same versions, byte for byte (and no new tensor objects).
      const objectsBefore = tensorFiles();
      const j2 = await finetune('k3b');
      expect(j2.status).toBe('succeeded');
      const vs2 = (await info(A, 'k3b')).versions as any[];
      expect(vs2.map((v) => v.sha256)).toEqual(vs.map((v) => v.sha256));
      expect(tensorFiles()).toEqual(objectsBefore);

      // ---- deletes
      const v3 = vs[2];
      const own3 = manifestOf(v3).tensors.filter((t) => QV.test(t.name)).map((t) => t.digest);
      const exists = (ds: string[]) => ds.map((d) => fs.existsSync(objects.pathOf(d, 'tensor')));
      // k3b v3 goes: its tensors are k3 v3's too, so they stay; freed_bytes is what it counted.
      let stored = await tenantStoredBytes(T.database.db, aId);
      let r = await call(A, 'DELETE', `/models/k3b/versions/${vs2[2].version}`);
      expect(r.status).toBe(200);
      expect(((await r.json()) as any).freed_bytes).toBe(vs2[2].stored_bytes);
      expect(await tenantStoredBytes(T.database.db, aId)).toBe(stored - vs2[2].stored_bytes);
      expect(exists(own3).every(Boolean)).toBe(true);
      expect(fs.existsSync(objects.pathOf(v3.sha256, 'manifest'))).toBe(true);
      // k3 v3 goes: now its q, v objects are referenced by nothing and are removed; v2's stay.
      stored = await tenantStoredBytes(T.database.db, aId);
      const filesBefore = tensorFiles().length;
      r = await call(A, 'DELETE', `/models/k3/versions/${v3.version}`);
      expect(r.status).toBe(200);
      expect(((await r.json()) as any).freed_bytes).toBe(v3.stored_bytes);
      expect(await tenantStoredBytes(T.database.db, aId)).toBe(stored - v3.stored_bytes);
      expect(exists(own3).some(Boolean)).toBe(false);
      expect(tensorFiles().length).toBe(filesBefore - own3.length);
      expect(fs.existsSync(objects.pathOf(v3.sha256, 'manifest'))).toBe(false);
      expect(exists(manifestOf(vs[1]).tensors.map((t) => t.digest)).every(Boolean)).toBe(true);
      // The download of what stays is unchanged.
      expect(sha((await download(A, 'k3', vs[1].version)).bytes)).toBe(vs[1].sha256);

      // s-a is k3's parent: refused until k3 (and k3b) go.
      expect((await call(A, 'DELETE', '/models/s-a')).status).toBe(409);
      expect((await call(A, 'DELETE', '/models/k3')).status).toBe(200);
      expect((await call(A, 'DELETE', '/models/k3b')).status).toBe(200);
      // Only the imports' tensors are left, and tenant B's import keeps them after A's goes.
      expect(tensorFiles()).toEqual(objectsAfterOne);
      r = await call(A, 'DELETE', '/models/s-a');
      expect(r.status).toBe(200);
      expect(((await r.json()) as any).freed_bytes).toBe(base.stored_bytes);
      expect(await tenantStoredBytes(T.database.db, aId)).toBe(0);
      expect(tensorFiles()).toEqual(objectsAfterOne);
      expect(sha((await download(B, 's-b', 0)).bytes)).toBe(base.sha256);
      expect((await call(B, 'DELETE', '/models/s-b')).status).toBe(200);
      expect(tensorFiles()).toEqual([]);
      expect(objects.list('manifest')).toEqual([]);
      expect(await tenantStoredBytes(T.database.db, bId)).toBe(0);
    }, 600_000);
  });
}
