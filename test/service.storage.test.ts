// What a tenant stores, over HTTP with the real CPU model services and a job worker running test-double
// runners: multipart model uploads validated before anything is written (and nothing left behind on a
// refusal), the stored-bytes quota checked before each knot is written, the tenant-scoped deletes and
// their rules (409 while needed, shared base never, content-addressed files freed only when no row
// references them), and problem details / job errors without server paths or errno text.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { makePglite, type TestDb } from './db.fixtures.ts';
import { stories260kAdapter, serveWithWorker } from './service.fixtures.ts';
import { loadConfig } from '../src/config.ts';
import { createTenant } from '../src/db/repos/tenants.ts';
import { tenantStoredBytes } from '../src/db/repos/files.ts';
import { registerBaseModel } from '../src/main.ts';
import { createModelServices } from '../src/cola/services.ts';
import { Store } from '../src/store/store.ts';
import { SnapshotStore } from '../src/store/snapshot-store.ts';
import { readManifest } from '../src/model/snapshots.ts';
import { UserInputError, type FinetuneJobSpec, type JobContext, type JobRunner, type Services } from '../src/services.ts';

const ROOT = path.resolve(import.meta.dir, '..');

/** What the test-double runner does for a job, chosen by its output model's name. */
type Script = (spec: FinetuneJobSpec, ctx: JobContext) => Promise<void | { cancelled?: boolean }>;

describe('storage: uploads, quota per knot, deletes, error details', () => {
  let T: TestDb;
  let srv: ReturnType<typeof serveWithWorker>;
  let url: string;
  let A: string; // keys
  let B: string;
  let aId: string;
  const scripts = new Map<string, Script>();
  const store = () => path.join(T.dataDir, 'store');
  const uploadsLeft = () => (fs.existsSync(path.join(store(), 'uploads')) ? fs.readdirSync(path.join(store(), 'uploads')) : []);

  beforeAll(async () => {
    T = await makePglite();
    const config = loadConfig({ COLA_DATA_DIR: T.dataDir, COLA_QUOTA_RPM: '100000', COLA_QUOTA_CONCURRENT_JOBS: '20' });
    const a = await createTenant(T.database.db, { name: 'store-a' });
    A = a.apiKey;
    aId = a.tenant.id;
    B = (await createTenant(T.database.db, { name: 'store-b' })).apiKey;
    await registerBaseModel(T.database.db, config, () => {});
    const runner: JobRunner = {
      async run(spec, ctx) {
        const s = scripts.get(spec.outputModel);
        if (!s) throw new Error(`no script for ${spec.outputModel}`);
        return s(spec, ctx);
      },
    };
    const services: Services = { ...createModelServices({ repoRoot: config.repoRoot, exportDir: path.join(T.dataDir, 'exports') }), runner };
    srv = serveWithWorker({ config, db: T.database, services, store: new Store(store()), runner });
    url = srv.url;
  }, 60_000);
  afterAll(async () => {
    await srv?.stop(2000);
    await T?.cleanup();
  });

  const auth = (k: string) => ({ authorization: `Bearer ${k}` });
  const json = (k: string) => ({ ...auth(k), 'content-type': 'application/json' });
  const call = (k: string, method: string, p: string, body?: unknown) =>
    fetch(`${url}${p}`, { method, headers: body === undefined ? auth(k) : json(k), ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  async function problem(r: Response, status: number) {
    if (r.status !== status) throw new Error(`expected ${status}, got ${r.status}: ${await r.text()}`);
    expect(r.headers.get('content-type')).toContain('application/problem+json');
    const body = (await r.json()) as any;
    // No server path and no errno text, ever.
    const text = JSON.stringify(body);
    for (const secret of [T.dataDir, ROOT, '/tmp/', 'ENOENT', 'EISDIR']) expect(text).not.toContain(secret);
    return body;
  }
  async function waitJob(k: string, id: string, pred: (j: any) => boolean) {
    const end = Date.now() + 20_000;
    while (Date.now() < end) {
      const j = (await (await call(k, 'GET', `/finetune/${id}`)).json()) as any;
      if (pred(j)) return j;
      await Bun.sleep(30);
    }
    throw new Error(`job ${id} timed out`);
  }
  const submit = async (k: string, out: string, script: Script, extra: object = {}) => {
    scripts.set(out, script);
    const r = await call(k, 'POST', '/finetune', { model: 'stories260K', train: [{ text: 'x' }], output_model: out, ...extra });
    if (r.status !== 202) throw new Error(`POST /finetune: ${r.status} ${await r.text()}`);
    return ((await r.json()) as any).id as string;
  };
  const upload = (name: string, files: [string, Blob][]) => {
    const form = new FormData();
    form.append('name', name);
    for (const [n, b] of files) form.append('files', b, n);
    return fetch(`${url}/models`, { method: 'POST', headers: auth(A), body: form });
  };
  const bin = () => Bun.file(path.join(ROOT, 'models/stories260K/stories260K.bin'));
  const tok = () => Bun.file(path.join(ROOT, 'models/stories260K/tok512.bin'));

  test('model upload: bad file names are 400 (never 500) and nothing is left under the store', async () => {
    for (const bad of ['..', '.', 'sub/dir.bin', '../../escape.bin', 'white space.bin']) {
      const body = await problem(await upload('up-bad', [['stories260K.bin', bin()], [bad, tok()]]), 400);
      expect(body.errors[0].path).toBe('files[1]');
      expect(uploadsLeft()).toEqual([]);
    }
    await problem(await upload('up-bad', [['tok512.bin', tok()], ['tok512.bin', tok()]]), 400);
    expect(uploadsLeft()).toEqual([]);
  });

  test('model upload: unusable content is 400 without server paths; a taken name is 409; both leave nothing behind', async () => {
    await problem(await upload('up-junk', [['model.safetensors', new Blob([new Uint8Array(64)])], ['config.json', new Blob(['{}'])]]), 400);
    expect(uploadsLeft()).toEqual([]);
    const ok = await upload('up-ok', [['stories260K.bin', bin()], ['tok512.bin', tok()]]);
    expect(ok.status).toBe(201);
    expect(uploadsLeft()).toEqual([]);
    await problem(await upload('up-ok', [['stories260K.bin', bin()], ['tok512.bin', tok()]]), 409);
    expect(uploadsLeft()).toEqual([]);
    // an import by server path that fails names the folder, not where it lies on the server
    const dir = path.join(T.dataDir, 'imports', 'broken');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'config.json'), '{"model_type":"llama"}');
    const r = await problem(await call(A, 'POST', '/models', { name: 'imp', source: { path: dir } }), 400);
    expect(r.detail).toContain('broken');
    await problem(await call(A, 'POST', '/models', { name: 'imp', source: { path: '/etc' } }), 400);
  });

  test('the stored-bytes quota is checked before each knot: the job fails with quota_exceeded and keeps its earlier versions', async () => {
    const t = await createTenant(T.database.db, { name: 'quota-knots', quotas: { stored_bytes: 2_500 } });
    const written: number[] = [];
    const id = await submit(t.apiKey, 'q-out', async (spec, ctx) => {
      for (let link = 0; link < 4; link++) {
        await ctx.onStep({ step: link + 1, total_steps: 4, link, links: 4, epoch: 1, loss: 1 });
        await ctx.reserveBytes(1_000); // before "writing" this knot's 1,000 bytes
        const p = path.join(spec.storeDir, `${spec.id}-${link}.bin`);
        fs.mkdirSync(spec.storeDir, { recursive: true });
        fs.writeFileSync(p, Buffer.alloc(1_000, link));
        written.push(link);
        await ctx.onKnot({ link, step: link + 1, rank: 8, flops: 0, snapshot: { path: p, sha256: `${link}`.repeat(64), bytes: 1_000 } });
      }
    });
    const j = await waitJob(t.apiKey, id, (x) => x.status === 'failed' || x.status === 'succeeded');
    expect(j.status).toBe('failed');
    expect(j.error.type).toBe('quota_exceeded');
    expect(j.error.detail).toContain('quota');
    expect(written).toEqual([0, 1]); // the third knot was never written
    expect(j.knots.map((k: any) => k.version)).toEqual([1, 2]);
    expect(await tenantStoredBytes(T.database.db, t.tenant.id)).toBe(2_000);
  });

  test('files, adapters and uploads count against the quota; deletes free them', async () => {
    const t = await createTenant(T.database.db, { name: 'quota-files', quotas: { stored_bytes: 600 } });
    const f = await fetch(`${url}/files`, { method: 'POST', headers: { ...auth(t.apiKey), 'content-type': 'application/jsonl' }, body: '{"text":"a"}\n'.repeat(30) });
    expect(f.status).toBe(201);
    const file = (await f.json()) as any;
    expect(await tenantStoredBytes(T.database.db, t.tenant.id)).toBe(file.bytes);
    await problem(await fetch(`${url}/files`, { method: 'POST', headers: { ...auth(t.apiKey), 'content-type': 'application/jsonl' }, body: '{"text":"b"}\n'.repeat(30) }), 429);
    const d = await call(t.apiKey, 'DELETE', `/files/${file.id}`);
    expect(d.status).toBe(200);
    expect(await d.json()).toEqual({ deleted: `file ${file.id}`, freed_bytes: file.bytes });
    expect(await tenantStoredBytes(T.database.db, t.tenant.id)).toBe(0);
    const form = new FormData();
    form.append('name', 'too-big');
    form.append('files', bin(), 'stories260K.bin');
    form.append('files', tok(), 'tok512.bin');
    await problem(await fetch(`${url}/models`, { method: 'POST', headers: auth(t.apiKey), body: form }), 429);
    expect(uploadsLeft()).toEqual([]);
  });

  test('DELETE /files/{id} and /adapters/{id}: 409 while a job needs them, 404 for another tenant, files removed', async () => {
    const f = (await (await fetch(`${url}/files`, { method: 'POST', headers: { ...auth(A), 'content-type': 'application/jsonl' }, body: '{"text":"a"}\n' })).json()) as any;
    const fpath = path.join(store(), 'files', `${f.id}.jsonl`);
    expect(fs.existsSync(fpath)).toBe(true);
    const adp = stories260kAdapter();
    const form = new FormData();
    form.append('adapter_config.json', adp.config);
    form.append('adapter_model.safetensors', new Blob([adp.weights]), 'adapter_model.safetensors');
    const a = (await (await fetch(`${url}/adapters`, { method: 'POST', headers: auth(A), body: form })).json()) as any;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const id = await submit(A, 'uses-both', async (_s, ctx) => {
      await ctx.onStep({ step: 1, total_steps: 1, link: 0, links: 1, epoch: 1, loss: 1 });
      await gate;
    }, { train: undefined, training_file: f.id, init_adapter: a.id, lora: { rank: 1 } });
    await waitJob(A, id, (j) => j.status === 'running');
    expect((await problem(await call(A, 'DELETE', `/files/${f.id}`), 409)).detail).toContain(id);
    expect((await problem(await call(A, 'DELETE', `/adapters/${a.id}`), 409)).detail).toContain(id);
    await problem(await call(B, 'DELETE', `/files/${f.id}`), 404);
    await problem(await call(B, 'DELETE', `/adapters/${a.id}`), 404);
    release();
    await waitJob(A, id, (j) => j.status === 'succeeded');
    expect((await call(A, 'DELETE', `/files/${f.id}`)).status).toBe(200);
    expect((await call(A, 'DELETE', `/adapters/${a.id}`)).status).toBe(200);
    expect(fs.existsSync(fpath)).toBe(false);
    expect(fs.existsSync(path.join(store(), 'adapters', a.id))).toBe(false);
    await problem(await call(A, 'GET', `/files/${f.id}`), 404);
    await problem(await call(A, 'DELETE', `/adapters/${a.id}`), 404);
  });

  test('DELETE versions and models: lineage kept, shared base refused, shared snapshot files freed only when unreferenced', async () => {
    const adp = stories260kAdapter();
    const form = new FormData();
    form.append('adapter_config.json', adp.config);
    form.append('adapter_model.safetensors', new Blob([adp.weights]), 'adapter_model.safetensors');
    const { id: adapter } = (await (await fetch(`${url}/adapters`, { method: 'POST', headers: auth(A), body: form })).json()) as any;
    const merge = async (model: string, version: number, out: string) => {
      const r = await call(A, 'POST', '/merge', { model, version, adapter, output_model: out });
      if (r.status !== 200) throw new Error(`merge: ${r.status} ${await r.text()}`);
      return (await r.json()) as { model: string; version: number };
    };
    // Two models whose first versions hold identical weights: one content-addressed file.
    expect(await merge('stories260K', 0, 'm1')).toEqual({ model: 'm1', version: 1 });
    expect(await merge('stories260K', 0, 'm2')).toEqual({ model: 'm2', version: 1 });
    expect(await merge('m1', 1, 'm1')).toEqual({ model: 'm1', version: 2 });
    const info = async (m: string) => (await (await call(A, 'GET', `/models/${m}`)).json()) as any;
    const m1 = await info('m1');
    const shared = path.join(store(), 'weights', 'objects', m1.versions[0].sha256.slice(0, 2), `${m1.versions[0].sha256}.manifest`);
    expect(fs.existsSync(shared)).toBe(true);
    // The tensor objects the manifest lists (shared by every version here: the merges change nothing).
    const objects = new SnapshotStore(path.join(store(), 'weights'));
    const tensorFiles = readManifest(shared).tensors.map((t) => objects.pathOf(t.digest, 'tensor'));
    expect(tensorFiles.every((p) => fs.existsSync(p))).toBe(true);
    // m1 v1's parent is the bundled llama2.c base (a whole file, no objects): it counts every tensor;
    // m1 v2 (same weights as its parent m1 v1) counts only its adapter archive.
    expect(m1.versions[0].stored_bytes).toBeGreaterThan(m1.versions[0].bytes - 8 - 4096);
    expect(m1.versions[1].stored_bytes).toBeLessThan(10_000);
    expect((await info('m2')).versions[0].sha256).toBe(m1.versions[0].sha256);

    // the shared base model is never the tenant's to delete
    await problem(await call(A, 'DELETE', '/models/stories260K'), 409);
    await problem(await call(A, 'DELETE', '/models/stories260K/versions/0'), 409);
    // a version that is a later version's parent stays until that one is gone
    expect((await problem(await call(A, 'DELETE', '/models/m1/versions/1'), 409)).detail).toContain('version 2 of "m1"');
    // another tenant sees nothing; malformed version numbers are 400
    await problem(await call(B, 'DELETE', '/models/m1/versions/2'), 404);
    await problem(await call(B, 'DELETE', '/models/m1'), 404);
    for (const v of ['0x1', '1e0', '%20', '-1']) await problem(await call(A, 'DELETE', `/models/m1/versions/${v}`), 400);
    await problem(await call(A, 'DELETE', '/models/m1/versions/7'), 404);

    const before = await tenantStoredBytes(T.database.db, aId);
    const d2 = await call(A, 'DELETE', '/models/m1/versions/2');
    expect(d2.status).toBe(200);
    const freed2 = ((await d2.json()) as any).freed_bytes;
    // weights plus the merge's adapter archive (one file, shared by all three merges)
    const zips = fs.readdirSync(path.join(store(), 'weights', 'adapters')).filter((f) => f.endsWith('.zip'));
    expect(zips.length).toBe(1);
    const zip = path.join(store(), 'weights', 'adapters', zips[0]!);
    expect(freed2).toBe(fs.statSync(zip).size); // no new tensor objects, one adapter archive
    expect(freed2).toBe(m1.versions[1].stored_bytes);
    expect(await tenantStoredBytes(T.database.db, aId)).toBe(before - freed2);
    expect((await call(A, 'DELETE', '/models/m1/versions/1')).status).toBe(200);
    // m2 v1 still references the same weights file
    expect(fs.existsSync(shared)).toBe(true);
    expect((await info('m1')).versions).toEqual([]);
    // numbers are not reused: the next version of m1 is 3
    expect(await merge('stories260K', 0, 'm1')).toEqual({ model: 'm1', version: 3 });
    expect((await call(A, 'DELETE', '/models/m1')).status).toBe(200);
    expect(fs.existsSync(shared)).toBe(true);
    expect((await call(A, 'DELETE', '/models/m2')).status).toBe(200);
    // The adapter's B is zero, so every merge equals the base: the uploaded copy of stories260K
    // (model "up-ok", version 0) holds the very same file and keeps it.
    expect((await info('up-ok')).versions[0].sha256).toBe(m1.versions[0].sha256);
    expect(fs.existsSync(shared)).toBe(true);
    const tokDir = path.dirname((await info('up-ok')).config.tokenizer);
    expect(fs.existsSync(tokDir)).toBe(true);
    expect((await call(A, 'DELETE', '/models/up-ok')).status).toBe(200);
    expect(fs.existsSync(shared)).toBe(false); // the last reference is gone
    expect(tensorFiles.some((p) => fs.existsSync(p))).toBe(false); // and with it every tensor object
    expect(fs.existsSync(tokDir)).toBe(false);
    expect(fs.existsSync(shared.replace(/manifest$/, 'json'))).toBe(false);
    expect(fs.existsSync(zip)).toBe(false);
    await problem(await call(A, 'GET', '/models/m2'), 404);
    // the bundled base model's file is untouched
    expect(fs.existsSync(path.join(ROOT, 'models/stories260K/stories260K.bin'))).toBe(true);
  });

  test('DELETE a model is 409 while a job writes into it', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const id = await submit(A, 'busy', async (spec, ctx) => {
      await ctx.onStep({ step: 1, total_steps: 2, link: 0, links: 2, epoch: 1, loss: 1 });
      const p = path.join(spec.storeDir, `${spec.id}-1.bin`);
      fs.mkdirSync(spec.storeDir, { recursive: true });
      fs.writeFileSync(p, 'knot 1');
      await ctx.onKnot({ link: 0, step: 1, rank: 8, flops: 0, snapshot: { path: p, sha256: 'e'.repeat(64), bytes: 6 } });
      await gate;
    });
    await waitJob(A, id, (j) => j.knots.length === 1);
    expect((await problem(await call(A, 'DELETE', '/models/busy'), 409)).detail).toContain(id);
    expect((await problem(await call(A, 'DELETE', '/models/busy/versions/1'), 409)).detail).toContain(id);
    release();
    await waitJob(A, id, (j) => j.status === 'succeeded');
    expect((await call(A, 'DELETE', '/models/busy')).status).toBe(200);
  });

  test('a failed job reports no server paths or errno text', async () => {
    const sys = await submit(A, 'err-sys', async () => {
      throw Object.assign(new Error(`EISDIR: illegal operation on a directory, read '${T.dataDir}/store/adapters/x'`), { code: 'EISDIR' });
    });
    const j1 = await waitJob(A, sys, (j) => j.status === 'failed');
    expect(j1.error.detail).not.toContain(T.dataDir);
    expect(j1.error.detail).not.toContain('EISDIR');
    const usr = await submit(A, 'err-user', async () => {
      throw new UserInputError(`cannot read ${T.dataDir}/store/weights/objects/ab/abc.safetensors: bad header`);
    });
    const j2 = await waitJob(A, usr, (j) => j.status === 'failed');
    expect(j2.error).toEqual({ type: 'invalid_request', detail: 'cannot read abc.safetensors: bad header' });
  });
});
