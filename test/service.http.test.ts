// The real server process over real HTTP: first start (local.key 0600), config errors, auth and
// admin flows, key revocation, tenant isolation on every id-taking endpoint, problem+json for
// malformed/invalid/oversize/wrong-type bodies, quotas (429 + Retry-After), OpenAPI, 501 for
// unwired ML services, SSE with Last-Event-ID, no-trainer job failure.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { cleanupDir, readSSE, startServer, stories260kAdapter, type ServerProc } from './service.fixtures.ts';

const ADMIN = 'admin-key-for-tests-0123456789';

async function expectProblem(res: { status: number; headers: { get(k: string): string | null }; json(): Promise<unknown> }, status: number) {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toContain('application/problem+json');
  const body = (await res.json()) as any;
  expect(body.status).toBe(status);
  expect(typeof body.title).toBe('string');
  expect(typeof body.type).toBe('string');
  expect(typeof body.detail).toBe('string');
  expect(JSON.stringify(body)).not.toMatch(/at .*\.ts:\d+|stack/i);
  return body;
}

describe('first start without an admin key', () => {
  let s: ServerProc;
  beforeAll(async () => {
    s = await startServer({});
  }, 60_000);
  afterAll(async () => {
    await s?.stop();
    cleanupDir(s.dataDir);
  });

  test('creates tenant local, prints its key once and writes local.key with mode 0600', async () => {
    const file = path.join(s.dataDir, 'local.key');
    const st = fs.statSync(file);
    expect(st.mode & 0o777).toBe(0o600);
    const key = fs.readFileSync(file, 'utf8').trim();
    expect(s.output()).toContain(key);
    const res = await fetch(`${s.url}/models`, { headers: { authorization: `Bearer ${key}` } });
    expect(res.status).toBe(200);
    const body = (await res.json()) as any;
    expect(body.data).toContainEqual({ name: 'stories260K', owner: 'shared', architecture: 'llama', params: expect.any(Number), latest_version: 0 });
    // admin routes are closed without an admin key
    await expectProblem(await fetch(`${s.url}/admin/tenants`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: '{"name":"x"}' }), 401);
  });

  test('a restart keeps the data and does not create another local tenant', async () => {
    const key = fs.readFileSync(path.join(s.dataDir, 'local.key'), 'utf8').trim();
    expect(await s.stop()).toBe(0);
    s = await startServer({}, { dataDir: s.dataDir });
    expect(s.output()).not.toContain('created tenant');
    expect((await fetch(`${s.url}/finetune`, { headers: { authorization: `Bearer ${key}` } })).status).toBe(200);
  }, 60_000);
});

test('a bad configuration value stops the process with a clear message', async () => {
  const p = Bun.spawn(['bun', 'run', 'src/main.ts'], {
    cwd: path.resolve(import.meta.dir, '..'),
    env: { PATH: process.env.PATH ?? '', PORT: 'eighty', COLA_QUOTA_RPM: '-1' },
    stderr: 'pipe',
    stdout: 'pipe',
  });
  expect(await p.exited).toBe(2);
  const err = await new Response(p.stderr as ReadableStream).text();
  expect(err).toContain('PORT="eighty"');
  expect(err).toContain('COLA_QUOTA_RPM');
});

describe('server with an admin key (serving only)', () => {
  let s: ServerProc;
  let A: { tenant_id: string; key_id: string; api_key: string };
  let B: { tenant_id: string; key_id: string; api_key: string };
  const admin = { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' };
  const as = (k: { api_key: string }, json = true) => ({ authorization: `Bearer ${k.api_key}`, ...(json ? { 'content-type': 'application/json' } : {}) });

  beforeAll(async () => {
    s = await startServer({ COLA_ADMIN_KEY: ADMIN, COLA_WORKER: '0', COLA_BODY_LIMIT_BYTES: '65536' });
    const mk = async (name: string, quotas?: object) => {
      const r = await fetch(`${s.url}/admin/tenants`, { method: 'POST', headers: admin, body: JSON.stringify({ name, quotas }) });
      expect(r.status).toBe(201);
      return (await r.json()) as any;
    };
    A = await mk('alpha');
    B = await mk('beta');
  }, 60_000);
  afterAll(async () => {
    await s?.stop();
    cleanupDir(s.dataDir);
  });

  test('no local tenant when an admin key is configured', () => {
    expect(fs.existsSync(path.join(s.dataDir, 'local.key'))).toBe(false);
  });

  test('auth: missing, malformed, unknown keys → 401; public endpoints open', async () => {
    await expectProblem(await fetch(`${s.url}/finetune`), 401);
    await expectProblem(await fetch(`${s.url}/finetune`, { headers: { authorization: 'Basic abc' } }), 401);
    await expectProblem(await fetch(`${s.url}/finetune`, { headers: { authorization: 'Bearer cola_notakeyatallnotakeyatall' } }), 401);
    await expectProblem(await fetch(`${s.url}/admin/tenants`, { method: 'POST', headers: as(A), body: '{"name":"z"}' }), 401);
    for (const p of ['/healthz', '/metrics', '/openapi.json', '/docs']) expect((await fetch(`${s.url}${p}`)).status).toBe(200);
    const ready = await fetch(`${s.url}/readyz`);
    expect([200, 503]).toContain(ready.status);
    expect(((await ready.json()) as any).database).toEqual({ ok: true, kind: 'pglite' });
  });

  test('admin: duplicate tenant 409, new keys, revocation', async () => {
    await expectProblem(await fetch(`${s.url}/admin/tenants`, { method: 'POST', headers: admin, body: '{"name":"alpha"}' }), 409);
    await expectProblem(await fetch(`${s.url}/admin/tenants`, { method: 'POST', headers: admin, body: '{"name":""}' }), 400);
    await expectProblem(await fetch(`${s.url}/admin/tenants/ten_missing/keys`, { method: 'POST', headers: { authorization: admin.authorization } }), 404);
    const r = await fetch(`${s.url}/admin/tenants/${A.tenant_id}/keys`, { method: 'POST', headers: { authorization: admin.authorization } });
    expect(r.status).toBe(201);
    const k2 = (await r.json()) as any;
    expect(k2.tenant_id).toBe(A.tenant_id);
    expect((await fetch(`${s.url}/finetune`, { headers: as(k2) })).status).toBe(200);
    expect((await fetch(`${s.url}/admin/keys/${k2.key_id}`, { method: 'DELETE', headers: { authorization: admin.authorization } })).status).toBe(200);
    await expectProblem(await fetch(`${s.url}/finetune`, { headers: as(k2) }), 401);
    await expectProblem(await fetch(`${s.url}/admin/keys/${k2.key_id}`, { method: 'DELETE', headers: { authorization: admin.authorization } }), 404);
    // A's first key still works
    expect((await fetch(`${s.url}/finetune`, { headers: as(A) })).status).toBe(200);
  });

  test('problem+json for malformed JSON, invalid bodies, out-of-range numbers, wrong content type, oversize bodies', async () => {
    await expectProblem(await fetch(`${s.url}/finetune`, { method: 'POST', headers: as(A), body: '{"model":' }), 400);
    const inv = await expectProblem(await fetch(`${s.url}/finetune`, { method: 'POST', headers: as(A), body: JSON.stringify({ model: 'stories260K', train: [{ text: 'x' }], lora: { rank: 100000 }, epochs: 0 }) }), 400);
    expect(inv.errors.map((e: any) => e.path)).toEqual(expect.arrayContaining(['lora.rank', 'epochs']));
    await expectProblem(await fetch(`${s.url}/finetune`, { method: 'POST', headers: as(A), body: JSON.stringify({ model: 'stories260K' }) }), 400);
    await expectProblem(await fetch(`${s.url}/finetune`, { method: 'POST', headers: as(A), body: JSON.stringify({ model: 'stories260K', train: [{ text: 'x' }], chain: { knots: [5, 3] } }) }), 400);
    await expectProblem(await fetch(`${s.url}/generate`, { method: 'POST', headers: as(A), body: JSON.stringify({ model: 'stories260K', prompt: 'x', max_tokens: 1e9 }) }), 400);
    await expectProblem(await fetch(`${s.url}/generate`, { method: 'POST', headers: as(A), body: JSON.stringify({ model: 'stories260K', prompt: 'x', temperature: -1 }) }), 400);
    await expectProblem(await fetch(`${s.url}/finetune`, { method: 'POST', headers: { ...as(A, false), 'content-type': 'text/plain' }, body: '{}' }), 415);
    await expectProblem(await fetch(`${s.url}/adapters`, { method: 'POST', headers: as(A), body: '{}' }), 415);
    const big = JSON.stringify({ model: 'stories260K', train: [{ text: 'x'.repeat(70_000) }] });
    await expectProblem(await fetch(`${s.url}/finetune`, { method: 'POST', headers: as(A), body: big }), 413);
    await expectProblem(await fetch(`${s.url}/nope`, { headers: as(A) }), 404);
    await expectProblem(await fetch(`${s.url}/finetune/${'x'.repeat(100)}`, { headers: as(A) }), 400);
    // bad JSONL is refused line by line and nothing is stored
    const bad = await expectProblem(await fetch(`${s.url}/files`, { method: 'POST', headers: { ...as(A, false), 'content-type': 'application/jsonl' }, body: '{"text":"ok"}\nnot json\n{"prompt":1}\n' }), 400);
    expect(bad.errors.map((e: any) => e.path)).toEqual(['line 2', 'line 3']);
    expect(((await (await fetch(`${s.url}/files`, { headers: as(A) })).json()) as any).data).toEqual([]);
    expect((await fetch(`${s.url}/healthz`)).status).toBe(200);
  });

  test('a body over any limit answers 413 problem+json, also far above the upload limit (not Bun\'s bare 413)', async () => {
    // Raw HTTP: declare a 700 MB body, send a few bytes, read the answer.
    const raw = (p: string, len: number, ct: string) =>
      new Promise<string>((resolve, reject) => {
        let buf = '';
        Bun.connect({
          hostname: '127.0.0.1',
          port: Number(new URL(s.url).port),
          socket: {
            open(sock) {
              sock.write(`POST ${p} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${A.api_key}\r\nContent-Type: ${ct}\r\nContent-Length: ${len}\r\n\r\n{"text":"a"}\n`);
            },
            data(sock, d) {
              buf += new TextDecoder().decode(d);
              const end = buf.indexOf('\r\n\r\n');
              const m = /content-length: (\d+)/i.exec(buf);
              if (end >= 0 && m && buf.length >= end + 4 + Number(m[1])) {
                sock.end();
                resolve(buf);
              }
            },
            close: () => resolve(buf),
            error: (_s, e) => reject(e),
          },
        });
      });
    for (const [p, ct] of [['/files', 'application/jsonl'], ['/models', 'multipart/form-data; boundary=x'], ['/finetune', 'application/json'], ['/adapters', 'multipart/form-data; boundary=x']] as const) {
      const res = await raw(p, 700_000_000, ct);
      expect(res).toStartWith('HTTP/1.1 413');
      expect(res.toLowerCase()).toContain('content-type: application/problem+json');
      expect(res).toContain('"status":413');
    }
    expect((await fetch(`${s.url}/healthz`)).status).toBe(200);
  });

  test('openapi.json lists the routes of the contract', async () => {
    const doc = (await (await fetch(`${s.url}/openapi.json`)).json()) as any;
    for (const p of ['/finetune', '/finetune/{id}', '/finetune/{id}/events', '/finetune/{id}/cancel', '/merge', '/adapters', '/generate', '/v1/models', '/v1/completions', '/files', '/evaluate', '/models', '/models/{name}', '/models/{name}/versions/{v}/weights', '/models/{name}/versions/{v}/adapter', '/healthz', '/readyz', '/metrics', '/admin/tenants', '/admin/tenants/{id}/keys', '/admin/keys/{key_id}', '/finetune/{id}/losses', '/files/{id}', '/adapters/{id}', '/models/{name}/versions/{v}']) {
      expect(Object.keys(doc.paths)).toContain(p);
    }
    expect(doc.paths['/finetune'].post.requestBody.content['application/json'].schema).toBeDefined();
  });

  test('unknown models answer 404; imports only from allowed server paths', async () => {
    await expectProblem(await fetch(`${s.url}/generate`, { method: 'POST', headers: as(A), body: JSON.stringify({ model: 'nope', prompt: 'Once' }) }), 404);
    await expectProblem(await fetch(`${s.url}/v1/completions`, { method: 'POST', headers: as(A), body: JSON.stringify({ model: 'stories260K@7', prompt: 'Once' }) }), 404);
    await expectProblem(await fetch(`${s.url}/evaluate`, { method: 'POST', headers: as(A), body: JSON.stringify({ model: 'nope', examples: [{ text: 'x' }] }) }), 404);
    await expectProblem(await fetch(`${s.url}/models`, { method: 'POST', headers: as(A), body: JSON.stringify({ name: 'imp', source: { path: '/etc' } }) }), 400);
    await expectProblem(await fetch(`${s.url}/models`, { method: 'POST', headers: as(A), body: JSON.stringify({ name: 'imp', source: { path: 'models/../../etc' } }) }), 400);
    await expectProblem(await fetch(`${s.url}/models/stories260K/versions/0/adapter`, { headers: as(A) }), 404);
    await expectProblem(await fetch(`${s.url}/models/stories260K/versions/3/weights`, { headers: as(A) }), 404);
    const v1 = (await (await fetch(`${s.url}/v1/models`, { headers: as(A) })).json()) as any;
    expect(v1.object).toBe('list');
    expect(v1.data.map((m: any) => m.id)).toContain('stories260K');
  });

  test("tenant isolation: another tenant's job, file, adapter and model ids answer 404", async () => {
    // A creates a file, an adapter, a job, and a model (by merging the adapter)
    const f = await fetch(`${s.url}/files`, { method: 'POST', headers: { ...as(A, false), 'content-type': 'application/jsonl' }, body: '{"prompt":"a","completion":"b"}\n{"text":"t"}\n' });
    expect(f.status).toBe(201);
    const file = (await f.json()) as any;
    expect(file.examples).toBe(2);
    const form = new FormData();
    const adp = stories260kAdapter();
    form.append('adapter_config.json', new Blob([adp.config]), 'adapter_config.json');
    form.append('adapter_model.safetensors', new Blob([adp.weights]), 'adapter_model.safetensors');
    const ad = await fetch(`${s.url}/adapters`, { method: 'POST', headers: as(A, false), body: form });
    expect(ad.status).toBe(201);
    const adapter = (await ad.json()) as any;
    const jr = await fetch(`${s.url}/finetune`, {
      method: 'POST',
      headers: as(A),
      body: JSON.stringify({ model: 'stories260K', output_model: 'alpha-job', training_file: file.id, init_adapter: adapter.id, lora: { rank: 1 } }),
    });
    expect(jr.status).toBe(202);
    const job = (await jr.json()) as any;
    const mr = await fetch(`${s.url}/merge`, { method: 'POST', headers: as(A), body: JSON.stringify({ model: 'stories260K', version: 0, adapter: adapter.id, output_model: 'alpha-out' }) });
    expect(mr.status).toBe(200);
    // A sees them
    expect((await fetch(`${s.url}/finetune/${job.id}`, { headers: as(A) })).status).toBe(200);
    expect((await fetch(`${s.url}/files/${file.id}`, { headers: as(A) })).status).toBe(200);
    expect((await fetch(`${s.url}/adapters/${adapter.id}`, { headers: as(A) })).status).toBe(200);
    expect((await fetch(`${s.url}/models/alpha-out`, { headers: as(A) })).status).toBe(200);
    // B gets 404 everywhere
    const b = as(B);
    const checks: [string, RequestInit][] = [
      [`/finetune/${job.id}`, { headers: b }],
      [`/finetune/${job.id}/events`, { headers: b }],
      [`/finetune/${job.id}/cancel`, { method: 'POST', headers: b }],
      [`/files/${file.id}`, { headers: b }],
      [`/adapters/${adapter.id}`, { headers: b }],
      [`/models/alpha-out`, { headers: b }],
      [`/models/alpha-out/versions/1/weights`, { headers: b }],
      [`/models/alpha-out/versions/1/adapter`, { headers: b }],
      [`/merge`, { method: 'POST', headers: b, body: JSON.stringify({ job: job.id }) }],
      [`/merge`, { method: 'POST', headers: b, body: JSON.stringify({ model: 'stories260K', version: 0, adapter: adapter.id, output_model: 'x' }) }],
      [`/evaluate`, { method: 'POST', headers: b, body: JSON.stringify({ model: 'stories260K', file: file.id }) }],
      [`/finetune`, { method: 'POST', headers: b, body: JSON.stringify({ model: 'stories260K', training_file: file.id }) }],
      [`/finetune`, { method: 'POST', headers: b, body: JSON.stringify({ model: 'stories260K', train: [{ text: 'x' }], init_adapter: adapter.id }) }],
      [`/finetune`, { method: 'POST', headers: b, body: JSON.stringify({ model: 'alpha-out', train: [{ text: 'x' }] }) }],
      [`/generate`, { method: 'POST', headers: b, body: JSON.stringify({ model: 'alpha-out', prompt: 'x' }) }],
      [`/v1/completions`, { method: 'POST', headers: b, body: JSON.stringify({ model: 'alpha-out', prompt: 'x' }) }],
    ];
    for (const [p, init] of checks) {
      const r = await fetch(`${s.url}${p}`, init);
      if (r.status !== 404) throw new Error(`${init.method ?? 'GET'} ${p} answered ${r.status}`);
      await expectProblem(r, 404);
    }
    const list = (await (await fetch(`${s.url}/finetune`, { headers: b })).json()) as any;
    expect(list.data.map((j: any) => j.id)).not.toContain(job.id);
    const models = (await (await fetch(`${s.url}/models`, { headers: b })).json()) as any;
    expect(models.data.map((m: any) => m.name)).not.toContain('alpha-out');
    // merge on a queued (not running) job of one's own → 409
    await expectProblem(await fetch(`${s.url}/merge`, { method: 'POST', headers: as(A), body: JSON.stringify({ job: job.id }) }), 409);
  });

  test('SSE events resume after Last-Event-ID; cancel of a queued job; cancel twice → 409', async () => {
    const h = as(A);
    const jr = await fetch(`${s.url}/finetune`, { method: 'POST', headers: h, body: JSON.stringify({ model: 'stories260K', train: [{ text: 'x' }], epochs: 15, chain: { links: [{ steps: 10, rank: 8 }, { steps: 5, rank: 4 }] } }) });
    expect(jr.status).toBe(202);
    const { id } = (await jr.json()) as any;
    const c = await fetch(`${s.url}/finetune/${id}/cancel`, { method: 'POST', headers: { authorization: h.authorization } });
    expect(c.status).toBe(200);
    expect(((await c.json()) as any).status).toBe('cancelled');
    await expectProblem(await fetch(`${s.url}/finetune/${id}/cancel`, { method: 'POST', headers: { authorization: h.authorization } }), 409);
    const all = await readSSE(await fetch(`${s.url}/finetune/${id}/events`, { headers: h }));
    expect(all.map((e) => [e.id, e.event])).toEqual([['1', 'status'], ['2', 'status'], ['3', 'done']]);
    expect(JSON.parse(all[1]!.data)).toEqual({ status: 'cancelled' });
    const rest = await readSSE(await fetch(`${s.url}/finetune/${id}/events`, { headers: { ...h, 'last-event-id': '1' } }));
    expect(rest.map((e) => e.id)).toEqual(['2', '3']);
    await expectProblem(await fetch(`${s.url}/finetune/${id}/events`, { headers: { ...h, 'last-event-id': 'abc' } }), 400);
  });

  test('quotas: concurrent jobs and requests per minute answer 429 with Retry-After', async () => {
    const mk = async (name: string, quotas: object) =>
      (await (await fetch(`${s.url}/admin/tenants`, { method: 'POST', headers: admin, body: JSON.stringify({ name, quotas }) })).json()) as any;
    const C = await mk('gamma', { concurrent_jobs: 1, max_tokens_per_request: 8 });
    const body = JSON.stringify({ model: 'stories260K', train: [{ text: 'x' }] });
    expect((await fetch(`${s.url}/finetune`, { method: 'POST', headers: as(C), body })).status).toBe(202);
    const r = await fetch(`${s.url}/finetune`, { method: 'POST', headers: as(C), body });
    await expectProblem(r.clone(), 429);
    expect(Number(r.headers.get('retry-after'))).toBeGreaterThan(0);
    const t = await fetch(`${s.url}/generate`, { method: 'POST', headers: as(C), body: JSON.stringify({ model: 'stories260K', prompt: 'x', max_tokens: 9 }) });
    await expectProblem(t.clone(), 429);
    expect(t.headers.get('retry-after')).toBeTruthy();
    const D = await mk('delta', { requests_per_minute: 2 });
    expect((await fetch(`${s.url}/finetune`, { headers: as(D) })).status).toBe(200);
    expect((await fetch(`${s.url}/finetune`, { headers: as(D) })).status).toBe(200);
    const lim = await fetch(`${s.url}/finetune`, { headers: as(D) });
    await expectProblem(lim.clone(), 429);
    expect(Number(lim.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
  });

  test('metrics expose requests by route and status, latency histogram and jobs by status', async () => {
    // This test's own traffic (it does not count on what earlier tests left behind).
    const mk = (await (await fetch(`${s.url}/admin/tenants`, { method: 'POST', headers: admin, body: JSON.stringify({ name: 'metrics' }) })).json()) as any;
    const jr = await fetch(`${s.url}/finetune`, { method: 'POST', headers: as(mk), body: JSON.stringify({ model: 'stories260K', train: [{ text: 'x' }] }) });
    expect(jr.status).toBe(202);
    expect((await fetch(`${s.url}/finetune/${((await jr.json()) as any).id}`, { headers: as(mk) })).status).toBe(200);
    const m = await (await fetch(`${s.url}/metrics`)).text();
    expect(m).toContain('cola_http_requests_total{method="POST",route="/finetune",status="202"}');
    expect(m).toContain('cola_http_request_duration_seconds_bucket{method="GET",route="/finetune/:id",le="+Inf"}');
    expect(m).toMatch(/cola_jobs\{status="queued"\} \d+/);
    expect(m).toContain('cola_tokens_generated_total 0');
  });
});
