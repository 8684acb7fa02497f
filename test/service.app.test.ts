// In-process app (createApp + Bun.serve on a free port) with test doubles for the ML services:
// /generate (JSON and SSE), the generation concurrency limit (429 + Retry-After), the official
// `openai` client against /v1/completions (streaming, echo + logprobs), adapter merge into a new
// version, weights download streamed from the store.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import OpenAI from 'openai';
import { makePglite, type TestDb } from './db.fixtures.ts';
import { readSSE, tinySafetensors } from './service.fixtures.ts';
import { loadConfig } from '../src/config.ts';
import { createApp } from '../src/app.ts';
import { createTenant } from '../src/db/repos/tenants.ts';
import { createModel, insertVersion } from '../src/db/repos/models.ts';
import { ServiceBusyError, type GenerateRequest, type GenerationService, type MergeService, type Services } from '../src/services.ts';

/** Test double: emits "w0 w1 ..." one token per `delayMs`; logprobs are -(i+1)/10. */
/**
 * A generation double. With `capacity`, it behaves like a full serving engine: `admissible` says no
 * while `capacity` requests run, and a request over capacity throws ServiceBusyError.
 */
function fakeGeneration(delayMs = 0, capacity = Infinity): GenerationService & { calls: GenerateRequest[] } {
  const calls: GenerateRequest[] = [];
  let running = 0;
  const produce = async (req: GenerateRequest, onToken?: (t: { text: string; id: number }) => void | Promise<void>) => {
      calls.push(req);
      const toks = Array.from({ length: req.max_tokens }, (_, i) => ({ id: 100 + i, text: ` w${i}` }));
      for (const t of toks) {
        if (delayMs) await Bun.sleep(delayMs);
        await onToken?.(t);
      }
      const promptToks = req.prompt.split(' ').map((w, i) => ({ id: i, text: i ? ` ${w}` : w }));
      let off = 0;
      const lp = [...(req.echo ? promptToks : []), ...toks].map((t, i) => {
        const o = { id: t.id, text: t.text, logprob: req.echo && i === 0 ? null : -(i + 1) / 10, top: req.logprobs ? { [t.text]: -(i + 1) / 10 } : undefined, offset: off };
        off += t.text.length;
        return o;
      });
      return {
        // Prompt 'held': the decoder held back a partial character that only the final text carries.
        text: toks.map((t) => t.text).join('') + (req.prompt === 'held' ? 'é' : ''),
        token_ids: toks.map((t) => t.id),
        finish_reason: 'length' as const,
        usage: { prompt_tokens: promptToks.length, completion_tokens: toks.length },
        timing: { prefill_ms: 1, decode_ms: 2, tokens_per_s: 100 },
        ...(req.logprobs || req.echo ? { logprobs: lp, prompt_text: req.prompt } : {}),
      };
  };
  return {
    calls,
    admissible: () => (running < capacity ? { ok: true } : { ok: false, retryAfterS: 1, detail: 'full' }),
    async generate(req, onToken) {
      if (running >= capacity) throw new ServiceBusyError('full', 1);
      running++;
      try {
        return await produce(req, onToken);
      } finally {
        running--;
      }
    },
  };
}

describe('in-process app with test-double ML services', () => {
  let T: TestDb;
  let server: ReturnType<typeof Bun.serve>;
  let url: string;
  let key: string;
  const gen = fakeGeneration(0);
  const slow = fakeGeneration(100, 2);
  let weightsBytes: Uint8Array;

  beforeAll(async () => {
    T = await makePglite();
    const db = T.database.db;
    const config = loadConfig({ COLA_DATA_DIR: T.dataDir, COLA_GENERATE_CONCURRENCY: '2', COLA_QUOTA_RPM: '100000' });
    key = (await createTenant(db, { name: 'app' })).apiKey;
    const m = await createModel(db, { tenantId: null, name: 'm', architecture: 'llama' });
    weightsBytes = tinySafetensors();
    const wp = path.join(T.dataDir, 'm0.safetensors');
    fs.writeFileSync(wp, weightsBytes);
    const sha = crypto.createHash('sha256').update(weightsBytes).digest('hex');
    await insertVersion(db, { modelId: m.id, version: 0, parentModelId: null, parentVersion: null, kind: 'base', jobId: null, link: null, rank: null, sha256: sha, bytes: weightsBytes.length, path: wp, adapterPath: null, metrics: null });
    const s2 = await createModel(db, { tenantId: null, name: 'slow', architecture: 'llama' });
    await insertVersion(db, { modelId: s2.id, version: 0, parentModelId: null, parentVersion: null, kind: 'base', jobId: null, link: null, rank: null, sha256: sha, bytes: 1, path: wp, adapterPath: null, metrics: null });
    const merge: MergeService = {
      async mergeAdapter(req) {
        const p = path.join(T.dataDir, `merged-${req.scale}.safetensors`);
        fs.writeFileSync(p, 'merged');
        return { weights: { path: p, sha256: crypto.createHash('sha256').update('merged').digest('hex'), bytes: 6 } };
      },
    };
    const services: Services = {
      generation: { admissible: (t) => slow.admissible!(t), generate: (req, on) => (req.target.model === 'slow' ? slow : gen).generate(req, on) },
      merge,
    };
    const app = createApp({ config, db: T.database, services, engine: { health: async () => ({ ok: true }), memoryInUse: () => 1234 } });
    server = Bun.serve({ port: 0, hostname: '127.0.0.1', fetch: app.fetch });
    url = `http://127.0.0.1:${server.port}`;
  }, 60_000);
  afterAll(async () => {
    server?.stop(true);
    await T?.cleanup();
  });

  const h = () => ({ authorization: `Bearer ${key}`, 'content-type': 'application/json' });

  test('/generate answers the contract shape; version defaults to the latest', async () => {
    const r = await fetch(`${url}/generate`, { method: 'POST', headers: h(), body: JSON.stringify({ model: 'm', prompt: 'Once upon', max_tokens: 3, stop: '\n' }) });
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({
      model: 'm',
      version: 0,
      text: ' w0 w1 w2',
      token_ids: [100, 101, 102],
      finish_reason: 'length',
      usage: { prompt_tokens: 2, completion_tokens: 3 },
      timing: { prefill_ms: 1, decode_ms: 2, tokens_per_s: 100 },
    });
    const req = gen.calls.at(-1)!;
    expect(req.stop).toEqual(['\n']);
    expect(req.temperature).toBe(0);
    expect(req.target.path.endsWith('m0.safetensors')).toBe(true);
  });

  test('/generate with stream: SSE token events then done', async () => {
    const r = await fetch(`${url}/generate`, { method: 'POST', headers: h(), body: JSON.stringify({ model: 'm', version: 0, prompt: 'x', max_tokens: 4, stream: true }) });
    expect(r.headers.get('content-type')).toContain('text/event-stream');
    const evs = await readSSE(r);
    expect(evs.map((e) => e.event)).toEqual(['token', 'token', 'token', 'token', 'done']);
    expect(JSON.parse(evs[0]!.data)).toEqual({ text: ' w0', id: 100 });
    expect(JSON.parse(evs[4]!.data).text).toBe(' w0 w1 w2 w3');
  });

  test('/generate with stream: text held back by the decoder comes as a last token event (id null); the events add up to the text', async () => {
    const r = await fetch(`${url}/generate`, { method: 'POST', headers: h(), body: JSON.stringify({ model: 'm', prompt: 'held', max_tokens: 2, stream: true }) });
    const evs = await readSSE(r);
    expect(evs.map((e) => e.event)).toEqual(['token', 'token', 'token', 'done']);
    expect(JSON.parse(evs[2]!.data)).toEqual({ text: 'é', id: null });
    const streamed = evs.filter((e) => e.event === 'token').map((e) => JSON.parse(e.data).text).join('');
    expect(streamed).toBe(JSON.parse(evs[3]!.data).text);
  });

  test('a full generation service answers 429 with Retry-After (before a stream opens), not a failure', async () => {
    const body = JSON.stringify({ model: 'slow', prompt: 'x', max_tokens: 3 });
    const rejectedSoFar = async () => Number(/cola_generate_rejected_total (\d+)/.exec(await (await fetch(`${url}/metrics`)).text())![1]);
    const before = await rejectedSoFar(); // counted from here: other tests may run before or after this one
    const rs = await Promise.all(Array.from({ length: 6 }, () => fetch(`${url}/generate`, { method: 'POST', headers: h(), body })));
    const codes = rs.map((r) => r.status).sort();
    expect(codes).toEqual([200, 200, 429, 429, 429, 429]);
    const rejected = rs.find((r) => r.status === 429)!;
    expect(rejected.headers.get('retry-after')).toBe('1');
    expect(((await rejected.json()) as any).status).toBe(429);
    // capacity comes back
    expect((await fetch(`${url}/generate`, { method: 'POST', headers: h(), body })).status).toBe(200);
    // A streaming request is refused before its stream opens (a problem+json 429, not an SSE error).
    const busy = [fetch(`${url}/generate`, { method: 'POST', headers: h(), body }), fetch(`${url}/generate`, { method: 'POST', headers: h(), body })];
    for (let i = 0; i < 100 && slow.admissible!('').ok; i++) await Bun.sleep(5); // both running
    const st = await fetch(`${url}/generate`, { method: 'POST', headers: h(), body: JSON.stringify({ model: 'slow', prompt: 'x', max_tokens: 3, stream: true }) });
    expect(st.status).toBe(429);
    expect(st.headers.get('content-type')).toContain('application/problem+json');
    await Promise.all(busy);
    expect((await rejectedSoFar()) - before).toBe(5);
    const m = await (await fetch(`${url}/metrics`)).text();
    expect(m).toContain('cola_gpu_memory_bytes 1234');
    expect(m).toMatch(/cola_tokens_generated_total \d+/);
  });

  test('the official openai client: completions, name@version, streaming, echo + logprobs', async () => {
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key });
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toContain('m');
    const c = await client.completions.create({ model: 'm@0', prompt: 'Once upon', max_tokens: 2, temperature: 0 });
    expect(c.object).toBe('text_completion');
    expect(c.choices[0]!.text).toBe(' w0 w1');
    expect(c.choices[0]!.finish_reason).toBe('length');
    expect(c.usage).toEqual({ prompt_tokens: 2, completion_tokens: 2, total_tokens: 4 });
    const stream = await client.completions.create({ model: 'm', prompt: 'x', max_tokens: 3, stream: true });
    let text = '';
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]!.text;
      finish = chunk.choices[0]!.finish_reason ?? finish;
    }
    expect(text).toBe(' w0 w1 w2');
    expect(finish).toBe('length');
    const e = await client.completions.create({ model: 'm', prompt: 'Once upon', max_tokens: 1, echo: true, logprobs: 2 });
    expect(e.choices[0]!.text).toBe('Once upon w0');
    expect(e.choices[0]!.logprobs!.tokens).toEqual(['Once', ' upon', ' w0']);
    expect(e.choices[0]!.logprobs!.token_logprobs as unknown).toEqual([null, -0.2, -0.3]);
    expect(e.choices[0]!.logprobs!.text_offset).toEqual([0, 4, 9]);
    expect(e.choices[0]!.logprobs!.top_logprobs!.length).toBe(3);
    const statusOf = async (p: PromiseLike<unknown>) => {
      try {
        await p;
        return 200;
      } catch (err) {
        return (err as { status?: number }).status;
      }
    };
    expect(await statusOf(client.completions.create({ model: 'm', prompt: 'x', logprobs: 6 }))).toBe(400);
    expect(await statusOf(client.completions.create({ model: 'nope', prompt: 'x' }))).toBe(404);
  });

  test('adapter merge makes a new version of the tenant model with its parent', async () => {
    const form = new FormData();
    form.append('adapter_config.json', JSON.stringify({ peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] }));
    form.append('adapter_model.safetensors', new Blob([tinySafetensors()]), 'adapter_model.safetensors');
    const a = await fetch(`${url}/adapters`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: form });
    expect(a.status).toBe(201);
    const { id } = (await a.json()) as any;
    const shared = await fetch(`${url}/merge`, { method: 'POST', headers: h(), body: JSON.stringify({ model: 'm', version: 0, adapter: id }) });
    expect(shared.status).toBe(409);
    const r = await fetch(`${url}/merge`, { method: 'POST', headers: h(), body: JSON.stringify({ model: 'm', version: 0, adapter: id, scale: 0.5, output_model: 'mine' }) });
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ model: 'mine', version: 1 });
    const info = (await (await fetch(`${url}/models/mine`, { headers: h() })).json()) as any;
    expect(info.owner).toBe('tenant');
    expect(info.versions).toEqual([
      expect.objectContaining({ version: 1, kind: 'merge', parent: { model: 'm', version: 0 }, rank: 4, bytes: 6 }),
    ]);
    // a corrupt safetensors is refused and nothing is stored
    const bad = new FormData();
    bad.append('adapter_config.json', JSON.stringify({ r: 4, lora_alpha: 8, target_modules: 'q' }));
    bad.append('adapter_model.safetensors', new Blob([new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9])]), 'x');
    const br = await fetch(`${url}/adapters`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: bad });
    expect(br.status).toBe(400);
    expect(br.headers.get('content-type')).toContain('application/problem+json');
  });

  test('weights download streams the stored safetensors file', async () => {
    const r = await fetch(`${url}/models/m/versions/0/weights`, { headers: h() });
    expect(r.status).toBe(200);
    expect(Buffer.compare(Buffer.from(await r.arrayBuffer()), Buffer.from(weightsBytes))).toBe(0);
    expect((await fetch(`${url}/models/m/versions/9/weights`, { headers: h() })).status).toBe(404);
  });

  test('readyz reports the database and the injected engine health', async () => {
    const r = await fetch(`${url}/readyz`);
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ status: 'ok', database: { ok: true, kind: 'pglite' }, gpu: { ok: true } });
  });
});

describe('app without ML services', () => {
  let T: TestDb;
  let server: ReturnType<typeof Bun.serve>;
  let url: string;
  let key: string;
  beforeAll(async () => {
    T = await makePglite();
    key = (await createTenant(T.database.db, { name: 'bare' })).apiKey;
    const m = await createModel(T.database.db, { tenantId: null, name: 'm', architecture: 'llama' });
    await insertVersion(T.database.db, { modelId: m.id, version: 0, parentModelId: null, parentVersion: null, kind: 'base', jobId: null, link: null, rank: null, sha256: 'c'.repeat(64), bytes: 1, path: '/nonexistent.bin', adapterPath: null, metrics: null });
    const app = createApp({ config: loadConfig({ COLA_DATA_DIR: T.dataDir }), db: T.database });
    server = Bun.serve({ port: 0, hostname: '127.0.0.1', fetch: app.fetch });
    url = `http://127.0.0.1:${server.port}`;
  }, 60_000);
  afterAll(async () => {
    server?.stop(true);
    await T?.cleanup();
  });

  test('endpoints whose service is not wired answer 501 with a clear detail (after 404 checks)', async () => {
    const h = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    const post = (p: string, body: unknown) => fetch(`${url}${p}`, { method: 'POST', headers: h, body: JSON.stringify(body) });
    const cases: [Response, number, string][] = [
      [await post('/generate', { model: 'm', prompt: 'Once' }), 501, 'generation'],
      [await post('/generate', { model: 'nope', prompt: 'Once' }), 404, 'not found'],
      [await post('/v1/completions', { model: 'm@0', prompt: 'Once' }), 501, 'generation'],
      [await post('/evaluate', { model: 'm', examples: [{ text: 'x' }] }), 501, 'evaluation'],
      [await post('/models', { name: 'imp', source: { path: 'models/stories260K' } }), 501, 'import'],
      [await fetch(`${url}/models/m/versions/0/weights`, { headers: h }), 501, 'export'],
    ];
    for (const [r, status, word] of cases) {
      expect(r.status).toBe(status);
      expect(r.headers.get('content-type')).toContain('application/problem+json');
      expect(((await r.json()) as any).detail).toContain(word);
    }
    const r = await fetch(`${url}/readyz`);
    expect(r.status).toBe(503);
    expect(((await r.json()) as any).gpu).toEqual({ ok: false, detail: 'no GPU engine is wired into this server' });
  });
});
