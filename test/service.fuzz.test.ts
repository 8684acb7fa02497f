// Fuzz: a few thousand malformed requests (broken JSON, wrong types, out-of-range numbers, deep
// nesting, random bytes as model files, JSONL and adapters) against the app with the real CPU
// model services (import, adapter validation) and a test-double generator. Every answer must be
// a 4xx problem (or a success for an input that happens to be valid) — never a 5xx — and the
// server stays healthy.
import path from 'node:path';
import { afterAll, beforeAll, expect, test } from 'bun:test';
import { makePglite, type TestDb } from './db.fixtures.ts';
import { stories260kAdapter } from './service.fixtures.ts';
import { loadConfig } from '../src/config.ts';
import { createApp } from '../src/app.ts';
import { createTenant } from '../src/db/repos/tenants.ts';
import { registerBaseModel } from '../src/main.ts';
import { createModelServices } from '../src/cola/services.ts';
import { Rng } from '../src/util/rng.ts';
import type { Services } from '../src/services.ts';

let T: TestDb;
let server: ReturnType<typeof Bun.serve>;
let url: string;
let key: string;

beforeAll(async () => {
  T = await makePglite();
  const config = loadConfig({ COLA_DATA_DIR: T.dataDir, COLA_QUOTA_RPM: '1000000', COLA_BODY_LIMIT_BYTES: '262144', COLA_UPLOAD_LIMIT_BYTES: '1048576', COLA_QUOTA_CONCURRENT_JOBS: '1000' });
  key = (await createTenant(T.database.db, { name: 'fuzz' })).apiKey;
  await registerBaseModel(T.database.db, config, () => {});
  const services: Services = {
    ...createModelServices({ repoRoot: config.repoRoot, exportDir: path.join(T.dataDir, 'exports') }),
    evaluation: { evaluate: async (req) => ({ loss: 1, examples: req.examples.length }) },
    generation: {
      async generate(req) {
        return { text: 'x', token_ids: [1], finish_reason: 'length', usage: { prompt_tokens: 1, completion_tokens: 1 }, timing: { prefill_ms: 0, decode_ms: 0, tokens_per_s: 0 } };
      },
    },
  };
  const app = createApp({ config, db: T.database, services });
  server = Bun.serve({ port: 0, hostname: '127.0.0.1', fetch: app.fetch });
  url = `http://127.0.0.1:${server.port}`;
}, 60_000);

afterAll(async () => {
  server?.stop(true);
  await T?.cleanup();
});

const VALID: Record<string, unknown> = {
  '/finetune': { model: 'stories260K', train: [{ prompt: 'a', completion: 'b' }], chain: { links: 2 }, lora: { rank: 4 }, optimizer: { lr: 0.001 }, epochs: 2 },
  '/generate': { model: 'stories260K', prompt: 'Once', max_tokens: 4, temperature: 0.5, stop: ['\n'] },
  '/v1/completions': { model: 'stories260K@0', prompt: 'Once', max_tokens: 4, logprobs: 2, echo: true },
  '/merge': { model: 'stories260K', version: 0, adapter: 'adp_x', scale: 1 },
  '/evaluate': { model: 'stories260K', examples: [{ prompt: 'p', candidates: ['a', 'b'], label: 1 }] },
  '/models': { name: 'm', source: { path: 'models/stories260K' } },
};

const WEIRD: unknown[] = [null, true, -1, 0, 1e308, -1e308, 1.5, 2 ** 53 + 1, '', 'x'.repeat(300), '\u0000', '💥', [], {}, [[[]]], { __proto__: { a: 1 } }, 'NaN', '1e999'];

function mutate(v: unknown, rnd: () => number): unknown {
  if (v && typeof v === 'object') {
    const o: any = Array.isArray(v) ? [...v] : { ...(v as object) };
    const keys = Object.keys(o);
    const r = rnd();
    if (keys.length && r < 0.4) {
      const k = keys[Math.floor(rnd() * keys.length)]!;
      o[k] = rnd() < 0.5 ? WEIRD[Math.floor(rnd() * WEIRD.length)] : mutate(o[k], rnd);
    } else if (keys.length && r < 0.6) {
      delete o[keys[Math.floor(rnd() * keys.length)]!];
    } else if (r < 0.8) {
      o[`extra${Math.floor(rnd() * 5)}`] = WEIRD[Math.floor(rnd() * WEIRD.length)];
    } else if (keys.length) {
      const k = keys[Math.floor(rnd() * keys.length)]!;
      o[k] = mutate(o[k], rnd);
    }
    return o;
  }
  return WEIRD[Math.floor(rnd() * WEIRD.length)];
}

function randomBytes(rnd: () => number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}

test('thousands of malformed requests: never a 5xx, always problem+json for errors, server healthy', async () => {
  const rng = new Rng(1234);
  const rnd = () => rng.next();
  const h = { authorization: `Bearer ${key}` };
  const statuses = new Map<number, number>();
  const bad: string[] = [];
  const send = async (label: string, p: string, init: RequestInit) => {
    const r = await fetch(`${url}${p}`, init);
    statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
    if (r.status >= 500) bad.push(`${label} ${p} → ${r.status} ${await r.text()}`);
    else if (r.status >= 400 && !(r.headers.get('content-type') ?? '').includes('application/problem+json')) bad.push(`${label} ${p} → ${r.status} without problem+json`);
    else await r.arrayBuffer();
  };
  const jobs: Promise<void>[] = [];
  const flush = async () => {
    await Promise.all(jobs);
    jobs.length = 0;
  };
  const paths = Object.keys(VALID);
  for (let i = 0; i < 2400; i++) {
    const p = paths[i % paths.length]!;
    const kind = i % 8;
    let body: string | Uint8Array;
    let ct = 'application/json';
    if (kind === 0) body = JSON.stringify(VALID[p]).slice(0, Math.floor(rnd() * 40)); // truncated JSON
    else if (kind === 1) body = randomBytes(rnd, 1 + Math.floor(rnd() * 200)); // garbage
    else if (kind === 2) body = '['.repeat(5000) + ']'.repeat(5000); // deep nesting
    else if (kind === 3) {
      body = JSON.stringify(mutate(VALID[p], rnd));
      ct = ['text/plain', 'application/xml', '', 'application/json; charset=utf-8'][Math.floor(rnd() * 4)]!;
    } else body = JSON.stringify(mutate(mutate(VALID[p], rnd), rnd));
    const headers: Record<string, string> = { ...h };
    if (ct) headers['content-type'] = ct;
    jobs.push(send(`json#${i}`, p, { method: 'POST', headers, body }));
    if (jobs.length >= 16) await flush();
  }
  await flush();
  // uploads: random files as JSONL, adapters and model files
  for (let i = 0; i < 600; i++) {
    const kind = i % 3;
    if (kind === 0) {
      const lines = Array.from({ length: 1 + Math.floor(rnd() * 5) }, () => (rnd() < 0.5 ? JSON.stringify(mutate({ prompt: 'a', completion: 'b' }, rnd)) : new TextDecoder().decode(randomBytes(rnd, 20))));
      jobs.push(send(`jsonl#${i}`, '/files', { method: 'POST', headers: { ...h, 'content-type': 'application/jsonl' }, body: lines.join('\n') }));
    } else if (kind === 1) {
      const a = stories260kAdapter();
      const w = rnd() < 0.5 ? randomBytes(rnd, Math.floor(rnd() * 300)) : a.weights.slice(0, Math.floor(rnd() * a.weights.length));
      if (rnd() < 0.3) w[8 + Math.floor(rnd() * 20)] ^= 0xff;
      const form = new FormData();
      form.append('adapter_config.json', rnd() < 0.5 ? a.config : JSON.stringify(mutate(JSON.parse(a.config), rnd)));
      form.append('adapter_model.safetensors', new Blob([w]), 'adapter_model.safetensors');
      jobs.push(send(`adapter#${i}`, '/adapters', { method: 'POST', headers: h, body: form }));
    } else {
      const form = new FormData();
      form.append('name', `fz${i}`);
      const header = new Int32Array([64, 172, 5, 8, 4, 512, 512].map((x) => (rnd() < 0.3 ? Math.floor(rnd() * 2 ** 31) * (rnd() < 0.5 ? -1 : 1) : x)));
      const bytes = new Uint8Array(28 + Math.floor(rnd() * 4000));
      bytes.set(new Uint8Array(header.buffer), 0);
      form.append('files', new Blob([bytes]), rnd() < 0.5 ? 'model.bin' : 'model.safetensors');
      if (rnd() < 0.5) form.append('files', new Blob([randomBytes(rnd, 100)]), 'tok512.bin');
      jobs.push(send(`model#${i}`, '/models', { method: 'POST', headers: h, body: form }));
    }
    if (jobs.length >= 8) await flush();
  }
  await flush();
  const total = [...statuses.values()].reduce((a, b) => a + b, 0);
  console.log(`fuzz: ${total} requests, statuses ${JSON.stringify(Object.fromEntries(statuses))}`);
  expect(bad.slice(0, 10)).toEqual([]);
  expect(total).toBe(3000);
  expect((await fetch(`${url}/healthz`)).status).toBe(200);
  const ok = await fetch(`${url}/generate`, { method: 'POST', headers: { ...h, 'content-type': 'application/json' }, body: JSON.stringify(VALID['/generate']) });
  expect(ok.status).toBe(200);
}, 120_000);
