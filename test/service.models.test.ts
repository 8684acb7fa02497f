// Models through HTTP with the real CPU model services (src/cola/services.ts): import by server
// path and by multipart upload, versions, weights export (llama2.c → safetensors), adapter upload
// validated against PEFT, merge into a new version and its adapter download; and POST /merge
// {job} tying a knot in a running job (worker with a test-double runner that honours it).
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { makePglite, type TestDb } from './db.fixtures.ts';
import { readSSE, safetensorsOf, stories260kAdapter, serveWithWorker } from './service.fixtures.ts';
import { loadConfig } from '../src/config.ts';
import { createTenant } from '../src/db/repos/tenants.ts';
import { registerBaseModel } from '../src/main.ts';
import { createModelServices } from '../src/cola/services.ts';
import type { JobRunner, Services } from '../src/services.ts';
import { Store } from '../src/store/store.ts';

const ROOT = path.resolve(import.meta.dir, '..');

describe('models, adapters and merge over HTTP', () => {
  let T: TestDb;
  let srv: ReturnType<typeof serveWithWorker>;
  let url: string;
  let key: string;
  const h = () => ({ authorization: `Bearer ${key}`, 'content-type': 'application/json' });

  beforeAll(async () => {
    T = await makePglite();
    const config = loadConfig({ COLA_DATA_DIR: T.dataDir, COLA_QUOTA_RPM: '100000' });
    key = (await createTenant(T.database.db, { name: 'models' })).apiKey;
    await registerBaseModel(T.database.db, config, () => {});
    // Test double: a long job that ties a knot whenever a merge-now is requested.
    const runner: JobRunner = {
      async run(spec, ctx) {
        for (let step = 1; step <= 400; step++) {
          if (ctx.isCancelled()) return { cancelled: true };
          await ctx.onStep({ step, total_steps: 400, link: 1, links: 1, epoch: 1, loss: 1 });
          if (ctx.takeMergeRequest()) {
            const p = path.join(spec.storeDir, `${spec.id}-${step}.bin`);
            fs.mkdirSync(spec.storeDir, { recursive: true });
            fs.writeFileSync(p, String(step));
            await ctx.onKnot({ link: 1, step, rank: 8, flops: 0, snapshot: { path: p, sha256: crypto.createHash('sha256').update(String(step)).digest('hex'), bytes: 1 } });
          }
          await Bun.sleep(20);
        }
      },
    };
    const services: Services = { ...createModelServices({ repoRoot: config.repoRoot, exportDir: path.join(T.dataDir, 'exports') }), runner };
    srv = serveWithWorker({ config, db: T.database, services, store: new Store(path.join(T.dataDir, 'store')), runner });
    url = srv.url;
  }, 60_000);
  afterAll(async () => {
    await srv?.stop(2000);
    await T?.cleanup();
  });

  test('import by server path and by multipart upload; weights download as safetensors', async () => {
    const r = await fetch(`${url}/models`, { method: 'POST', headers: h(), body: JSON.stringify({ name: 'copy', source: { path: 'models/stories260K' } }) });
    expect(r.status).toBe(201);
    expect(await r.json()).toEqual({ name: 'copy', version: 0 });
    expect((await fetch(`${url}/models`, { method: 'POST', headers: h(), body: JSON.stringify({ name: 'copy', source: { path: 'models/stories260K' } }) })).status).toBe(409);
    const form = new FormData();
    form.append('name', 'uploaded');
    form.append('files', Bun.file(path.join(ROOT, 'models/stories260K/stories260K.bin')), 'stories260K.bin');
    form.append('files', Bun.file(path.join(ROOT, 'models/stories260K/tok512.bin')), 'tok512.bin');
    const u = await fetch(`${url}/models`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: form });
    expect(u.status).toBe(201);
    const info = (await (await fetch(`${url}/models/uploaded`, { headers: h() })).json()) as any;
    expect(info).toMatchObject({ name: 'uploaded', owner: 'tenant', architecture: 'llama', latest_version: 0 });
    expect(info.versions).toEqual([expect.objectContaining({ version: 0, kind: 'base', parent: null })]);
    const w = await fetch(`${url}/models/stories260K/versions/0/weights`, { headers: h() });
    expect(w.status).toBe(200);
    const buf = new Uint8Array(await w.arrayBuffer());
    const n = Number(new DataView(buf.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(buf.subarray(8, 8 + n)));
    expect(Object.keys(header)).toContain('model.layers.0.self_attn.q_proj.weight');
  });

  test('import with "dtype": bf16 stores 16-bit weights (half the bytes, BF16 in the download); the default keeps f32; a bad dtype is 400', async () => {
    const imp = async (name: string, dtype?: string) =>
      fetch(`${url}/models`, { method: 'POST', headers: h(), body: JSON.stringify({ name, source: { path: 'models/stories260K' }, ...(dtype ? { dtype } : {}) }) });
    expect((await imp('as-f32')).status).toBe(201);
    expect((await imp('as-bf16', 'bf16')).status).toBe(201);
    const bad = await imp('as-f64', 'f64');
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as any).errors[0].path).toBe('dtype');
    const f = (await (await fetch(`${url}/models/as-f32`, { headers: h() })).json()) as any;
    const b = (await (await fetch(`${url}/models/as-bf16`, { headers: h() })).json()) as any;
    expect(f.config.weights_dtype).toBe('f32'); // llama2.c stories260K is f32 and stays so
    expect(b.config.weights_dtype).toBe('bf16');
    expect(b.config.weight_bytes * 2).toBe(f.config.weight_bytes);
    expect(b.versions[0].bytes).toBeLessThan(0.51 * f.versions[0].bytes);
    const w = new Uint8Array(await (await fetch(`${url}/models/as-bf16/versions/0/weights`, { headers: h() })).arrayBuffer());
    const n = Number(new DataView(w.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(w.subarray(8, 8 + n)));
    expect(header['model.layers.0.self_attn.q_proj.weight'].dtype).toBe('BF16');
  });

  test('adapter upload validated, merged into a new version, adapter of that version downloadable', async () => {
    const a = stories260kAdapter();
    const form = new FormData();
    form.append('adapter_config.json', a.config);
    form.append('adapter_model.safetensors', new Blob([a.weights]), 'adapter_model.safetensors');
    const up = await fetch(`${url}/adapters`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: form });
    expect(up.status).toBe(201);
    const { id } = (await up.json()) as any;
    // wrong shapes for the architecture are refused at upload
    const bad = new FormData();
    bad.append('adapter_config.json', a.config.replace('"r":1', '"r":2'));
    bad.append('adapter_model.safetensors', new Blob([a.weights]), 'adapter_model.safetensors');
    expect((await fetch(`${url}/adapters`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: bad })).status).toBe(400);
    const m = await fetch(`${url}/merge`, { method: 'POST', headers: h(), body: JSON.stringify({ model: 'stories260K', version: 0, adapter: id, scale: 1, output_model: 'merged' }) });
    if (m.status !== 200) throw new Error(`merge answered ${m.status}: ${await m.text()}`);
    expect(await m.json()).toEqual({ model: 'merged', version: 1 });
    const info = (await (await fetch(`${url}/models/merged`, { headers: h() })).json()) as any;
    expect(info.versions[0]).toMatchObject({ version: 1, kind: 'merge', parent: { model: 'stories260K', version: 0 } });
    const ad = await fetch(`${url}/models/merged/versions/1/adapter`, { headers: h() });
    expect(ad.status).toBe(200);
    expect(ad.headers.get('content-type')).toBe('application/zip');
    const zip = new Uint8Array(await ad.arrayBuffer());
    expect([zip[0], zip[1]]).toEqual([0x50, 0x4b]); // a ZIP archive
  });

  test('a merge into a bf16 model makes a "mixed" output model: weights_dtype and weight_bytes of the tensors written', async () => {
    // stories260kAdapter with a non-zero B (its B is zero: a merge of it changes nothing), on q_proj.
    const a = stories260kAdapter();
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (let l = 0; l < 5; l++) {
      tensors[`base_model.model.model.layers.${l}.self_attn.q_proj.lora_A.weight`] = { shape: [1, 64], data: new Float32Array(64).map((_, i) => ((i % 7) - 3) / 100) };
      tensors[`base_model.model.model.layers.${l}.self_attn.q_proj.lora_B.weight`] = { shape: [64, 1], data: new Float32Array(64).map((_, i) => ((i % 5) - 2) / 50) };
    }
    const form = new FormData();
    form.append('adapter_config.json', a.config);
    form.append('adapter_model.safetensors', new Blob([safetensorsOf(tensors) as Uint8Array<ArrayBuffer>]), 'adapter_model.safetensors');
    const { id } = (await (await fetch(`${url}/adapters`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: form })).json()) as any;
    const m = await fetch(`${url}/merge`, { method: 'POST', headers: h(), body: JSON.stringify({ model: 'as-bf16', version: 0, adapter: id, scale: 1, output_model: 'merged-bf16' }) });
    if (m.status !== 200) throw new Error(`merge answered ${m.status}: ${await m.text()}`);
    const b = (await (await fetch(`${url}/models/as-bf16`, { headers: h() })).json()) as any;
    const o = (await (await fetch(`${url}/models/merged-bf16`, { headers: h() })).json()) as any;
    expect(o.config.weights_dtype).toBe('mixed');
    // The merged q projections are kept f32: 2 more bytes a value than in the bf16 base, nothing else changes.
    const w = new Uint8Array(await (await fetch(`${url}/models/merged-bf16/versions/1/weights`, { headers: h() })).arrayBuffer());
    const n = Number(new DataView(w.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(w.subarray(8, 8 + n)));
    let f32Values = 0;
    for (const [name, t] of Object.entries(header as Record<string, any>)) if (name !== '__metadata__' && t.dtype === 'F32' && name.endsWith('q_proj.weight')) f32Values += t.shape.reduce((x: number, y: number) => x * y, 1);
    expect(f32Values).toBeGreaterThan(0);
    expect(o.config.weight_bytes).toBe(b.config.weight_bytes + 2 * f32Values);
  });

  test('an adapter with finite but absurd values (1e18) is refused at merge with a clear 400', async () => {
    const huge = new Float32Array(64).fill(1e18);
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (let l = 0; l < 5; l++) {
      tensors[`base_model.model.model.layers.${l}.self_attn.q_proj.lora_A.weight`] = { shape: [1, 64], data: huge };
      tensors[`base_model.model.model.layers.${l}.self_attn.q_proj.lora_B.weight`] = { shape: [64, 1], data: huge };
    }
    const form = new FormData();
    form.append('adapter_config.json', stories260kAdapter().config);
    form.append('adapter_model.safetensors', new Blob([safetensorsOf(tensors)]), 'adapter_model.safetensors');
    const up = await fetch(`${url}/adapters`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: form });
    expect(up.status).toBe(201);
    const { id } = (await up.json()) as any;
    // W + 2·1e36 is finite in f32, and a model that answers only <unk>.
    const m = await fetch(`${url}/merge`, { method: 'POST', headers: h(), body: JSON.stringify({ model: 'stories260K', version: 0, adapter: id, output_model: 'absurd' }) });
    expect(m.status).toBe(400);
    expect(((await m.json()) as any).detail).toMatch(/refusing the merge: the adapter's update in model\.layers\.0\.self_attn\.q_proj\.weight .* is 2\.000e\+36/);
    expect((await fetch(`${url}/models/absurd`, { headers: h() })).status).toBe(404);
  });

  test("a tenant's model may not take a shared model's name (merge output, import)", async () => {
    const a = stories260kAdapter();
    const form = new FormData();
    form.append('adapter_config.json', a.config);
    form.append('adapter_model.safetensors', new Blob([a.weights]), 'adapter_model.safetensors');
    const { id } = (await (await fetch(`${url}/adapters`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: form })).json()) as any;
    const m = await fetch(`${url}/merge`, { method: 'POST', headers: h(), body: JSON.stringify({ model: 'stories260K', version: 0, adapter: id, output_model: 'stories260K' }) });
    expect(m.status).toBe(409);
    expect(((await m.json()) as any).errors).toEqual([{ path: 'output_model', message: 'names a shared model' }]);
    const i = await fetch(`${url}/models`, { method: 'POST', headers: h(), body: JSON.stringify({ name: 'stories260K', source: { path: 'models/stories260K' } }) });
    expect(i.status).toBe(409);
    const info = (await (await fetch(`${url}/models/stories260K`, { headers: h() })).json()) as any;
    expect(info.owner).toBe('shared');
    expect(info.versions.map((v: any) => v.version)).toEqual([0]);
  });

  test('a version in a path is a canonical decimal number', async () => {
    for (const v of ['%20', '0x0', '0e0', '00', '+0', '-0', '0.0', '1e0', '0b0', '%200', '1000001']) {
      const r = await fetch(`${url}/models/stories260K/versions/${v}/weights`, { headers: h() });
      if (r.status !== 400) throw new Error(`version "${v}" answered ${r.status}`);
      expect(((await r.json()) as any).errors[0].path).toBe('v');
    }
    const ok = await fetch(`${url}/models/stories260K/versions/0/weights`, { headers: h() });
    expect(ok.status).toBe(200);
    await ok.arrayBuffer();
    expect((await fetch(`${url}/models/stories260K/versions/7/weights`, { headers: h() })).status).toBe(404);
  });

  test('SSE on a running job: disconnect, resume with Last-Event-ID, no gap and no duplicate until done', async () => {
    const r = await fetch(`${url}/finetune`, { method: 'POST', headers: h(), body: JSON.stringify({ model: 'stories260K', train: [{ text: 'x' }], output_model: 'sse' }) });
    const { id } = (await r.json()) as any;
    const first = await readSSE(await fetch(`${url}/finetune/${id}/events`, { headers: h() }), 5);
    expect(first.map((e) => Number(e.id))).toEqual([1, 2, 3, 4, 5]);
    // stop the job soon so the stream ends
    setTimeout(() => void fetch(`${url}/finetune/${id}/cancel`, { method: 'POST', headers: { authorization: `Bearer ${key}` } }), 300);
    const rest = await readSSE(await fetch(`${url}/finetune/${id}/events`, { headers: { ...h(), 'last-event-id': '5' } }), 10_000, 20_000);
    const ids = rest.map((e) => Number(e.id));
    expect(ids[0]).toBe(6);
    expect(ids).toEqual(ids.map((_, i) => 6 + i));
    expect(rest.at(-1)!.event).toBe('done');
    expect(JSON.parse(rest.at(-1)!.data)).toEqual({ status: 'cancelled' });
  }, 30_000);

  test('POST /merge {job} ties a knot in the running job and returns its version; 409 once finished', async () => {
    const r = await fetch(`${url}/finetune`, { method: 'POST', headers: h(), body: JSON.stringify({ model: 'stories260K', train: [{ text: 'x' }], output_model: 'live' }) });
    expect(r.status).toBe(202);
    const { id } = (await r.json()) as any;
    const end = Date.now() + 10_000;
    while (Date.now() < end && ((await (await fetch(`${url}/finetune/${id}`, { headers: h() })).json()) as any).status !== 'running') await Bun.sleep(50);
    const m = await fetch(`${url}/merge`, { method: 'POST', headers: h(), body: JSON.stringify({ job: id }) });
    expect(m.status).toBe(200);
    expect(await m.json()).toEqual({ model: 'live', version: 1 });
    const c = await fetch(`${url}/finetune/${id}/cancel`, { method: 'POST', headers: { authorization: `Bearer ${key}` } });
    expect(c.status).toBe(200);
    while (Date.now() < end + 10_000 && ((await (await fetch(`${url}/finetune/${id}`, { headers: h() })).json()) as any).status === 'running') await Bun.sleep(50);
    const j = (await (await fetch(`${url}/finetune/${id}`, { headers: h() })).json()) as any;
    expect(j.status).toBe('cancelled');
    expect(j.knots.map((k: any) => k.version)).toEqual([1]);
    expect((await fetch(`${url}/merge`, { method: 'POST', headers: h(), body: JSON.stringify({ job: id }) })).status).toBe(409);
  }, 30_000);
});
