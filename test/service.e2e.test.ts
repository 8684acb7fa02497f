// End to end through the real server processes with the real trainer and generator (needs a
// WebGPU device; lavapipe is fine): a COLA job from POST through its knot versions to generating
// from the last one; kill -9 of a process mid-job, after which another process finishes it from
// its last knot with the same versions as an uninterrupted run; two processes on one Postgres
// sharing 10 jobs, none lost or run twice. The multi-process tier needs DATABASE_TEST_URL.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import OpenAI from 'openai';
import { cleanupDir, readSSE, startServer, type ServerProc } from './service.fixtures.ts';
import { createServerDatabase, SERVER_URL, tempDir } from './db.fixtures.ts';
import { openDatabase } from '../src/db/index.ts';
import { createTenant } from '../src/db/repos/tenants.ts';

type Ex = { prompt: string; completion: string } | { text: string };
const TRAIN: Ex[] = [
  { prompt: 'Once upon a time', completion: ' there was a cat.' },
  { text: 'Lily liked to play in the park.' },
  { text: 'Tom had a big red ball.' },
  { prompt: 'The sun', completion: ' was warm and bright.' },
];

const job = (over: object = {}) => ({ model: 'stories260K', train: TRAIN, chain: { links: 2 }, epochs: 2, batch_size: 2, max_seq_len: 32, seed: 3, ...over });

async function waitJob(url: string, key: string, id: string, pred: (j: any) => boolean, ms = 120_000): Promise<any> {
  const end = Date.now() + ms;
  let j: any;
  while (Date.now() < end) {
    const r = await fetch(`${url}/finetune/${id}`, { headers: { authorization: `Bearer ${key}` } }).catch(() => null);
    if (r && r.ok) {
      j = await r.json();
      if (pred(j)) return j;
    }
    await Bun.sleep(200);
  }
  throw new Error(`timed out waiting for job ${id}: ${JSON.stringify(j)}`);
}

/** A safetensors file's header without __metadata__, and its data section. */
function tensorsOf(buf: Uint8Array): { header: Record<string, unknown>; data: Buffer } {
  const n = Number(new DataView(buf.buffer, buf.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(buf.subarray(8, 8 + n)));
  delete header.__metadata__;
  return { header, data: Buffer.from(buf.subarray(8 + n)) };
}

async function versions(url: string, key: string, model: string): Promise<any[]> {
  const r = await fetch(`${url}/models/${model}`, { headers: { authorization: `Bearer ${key}` } });
  expect(r.status).toBe(200);
  return ((await r.json()) as any).versions;
}

describe('fine-tune to generation on one process (PGlite)', () => {
  let s: ServerProc;
  let key: string;
  beforeAll(async () => {
    s = await startServer({});
    key = fs.readFileSync(path.join(s.dataDir, 'local.key'), 'utf8').trim();
  }, 60_000);
  afterAll(async () => {
    await s?.stop();
    cleanupDir(s.dataDir);
  });

  test('POST /finetune → knots as versions 1..2 → generate from the last one (also via the openai client)', async () => {
    const h = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    const r = await fetch(`${s.url}/finetune`, { method: 'POST', headers: h, body: JSON.stringify(job({ output_model: 'story-bot' })) });
    expect(r.status).toBe(202);
    const { id } = (await r.json()) as any;
    const evs = await readSSE(await fetch(`${s.url}/finetune/${id}/events`, { headers: h }), 10_000, 120_000);
    const types = evs.map((e) => e.event);
    expect(types.at(-1)).toBe('done');
    expect(types.filter((t) => t === 'knot').length).toBe(2);
    expect(types).toContain('step');
    const j = await waitJob(s.url, key, id, (x) => x.status !== 'queued' && x.status !== 'running');
    expect(j.status).toBe('succeeded');
    expect(j.knots.map((k: any) => k.version)).toEqual([1, 2]);
    expect(j.losses.length).toBe(j.progress.total_steps);
    expect(j.losses_count).toBe(j.progress.total_steps);
    const vs = await versions(s.url, key, 'story-bot');
    expect(vs.map((v) => [v.version, v.kind, v.parent])).toEqual([
      [1, 'knot', { model: 'stories260K', version: 0 }],
      [2, 'knot', { model: 'story-bot', version: 1 }],
    ]);
    const wt = await fetch(`${s.url}/models/story-bot/versions/2/weights`, { headers: h });
    expect(wt.status).toBe(200);
    // Streamed from the version's tensor objects (Bun.serve sends a streamed body chunked, without
    // the handler's Content-Length: oven-sh/bun#10507): exactly `bytes` bytes hashing to `sha256`.
    const body = new Uint8Array(await wt.arrayBuffer());
    expect(body.length).toBe(vs[1].bytes);
    expect(new Bun.CryptoHasher('sha256').update(body).digest('hex')).toBe(vs[1].sha256);
    const genReq = { method: 'POST', headers: h, body: JSON.stringify({ model: 'story-bot', prompt: 'Once upon a time', max_tokens: 8 }) };
    const g = await fetch(`${s.url}/generate`, genReq);
    expect(g.status).toBe(200);
    const gen = (await g.json()) as any;
    expect(gen.version).toBe(2);
    expect(gen.usage.completion_tokens).toBeGreaterThan(0);
    const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: key });
    const c = await client.completions.create({ model: 'story-bot@2', prompt: 'Once upon a time', max_tokens: 8, temperature: 0 });
    expect(c.choices[0]!.text).toBe(gen.text);
    let streamed = '';
    for await (const chunk of await client.completions.create({ model: 'story-bot@2', prompt: 'Once upon a time', max_tokens: 8, temperature: 0, stream: true })) {
      streamed += chunk.choices[0]!.text;
    }
    expect(streamed).toBe(gen.text);
    // logprobs: 0 gives the sampled tokens' log-probabilities and no alternatives (OpenAI's meaning).
    const lp = await client.completions.create({ model: 'story-bot@2', prompt: 'Once upon a time', max_tokens: 4, temperature: 0, logprobs: 0 });
    const l = lp.choices[0]!.logprobs!;
    expect(l.token_logprobs!.length).toBe(4);
    for (const x of l.token_logprobs!) expect(x).toBeLessThanOrEqual(0);
    expect(l.top_logprobs).toBeNull();
  }, 180_000);
});

// Regression: the first greedy generation in a fresh process used to differ from later ones (a
// uniform-arena slot reused after a flush between taking and dispatching it; see engine.ts).
test('the first greedy generation in a fresh process equals the next one', async () => {
  const s = await startServer({ COLA_WORKER: '0' });
  try {
    const key = fs.readFileSync(path.join(s.dataDir, 'local.key'), 'utf8').trim();
    const req = { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 8 }) };
    const a = (await (await fetch(`${s.url}/generate`, req)).json()) as any;
    const b = (await (await fetch(`${s.url}/generate`, req)).json()) as any;
    expect(a.token_ids).toEqual(b.token_ids);
  } finally {
    await s.stop();
    cleanupDir(s.dataDir);
  }
}, 120_000);

// The real trainer checks the stored-bytes quota before it writes a knot's files: a job whose second
// knot would go over the quota fails with quota_exceeded, keeps its first version, and the second
// knot's weights are never written to the store.
test('the stored-bytes quota stops a job before its next knot is written', async () => {
  // The first knot (its parent, the bundled llama2.c base, is a whole file) stores every tensor of
  // stories260K, 1.04 MB, plus its adapter archive (~40 kB): it fits under 1.15 MB. The second adds
  // only the new q and v tensors (123 kB) and its archive: over the quota.
  const s = await startServer({ COLA_QUOTA_STORED_BYTES: '1150000' });
  try {
    const key = fs.readFileSync(path.join(s.dataDir, 'local.key'), 'utf8').trim();
    const h = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    const r = await fetch(`${s.url}/finetune`, { method: 'POST', headers: h, body: JSON.stringify(job({ chain: { links: 3 }, epochs: 3, output_model: 'capped' })) });
    expect(r.status).toBe(202);
    const { id } = (await r.json()) as any;
    const j = await waitJob(s.url, key, id, (x) => x.status === 'failed' || x.status === 'succeeded');
    expect(j.status).toBe('failed');
    expect(j.error.type).toBe('quota_exceeded');
    expect(j.knots.map((k: any) => k.version)).toEqual([1]);
    const objects = path.join(s.dataDir, 'store', 'weights', 'objects');
    const written = fs.readdirSync(objects).flatMap((d) => fs.readdirSync(path.join(objects, d))).filter((f) => f.endsWith('.manifest'));
    expect(written.length).toBe(1);
    expect((await versions(s.url, key, 'capped')).map((v) => v.version)).toEqual([1]);
  } finally {
    await s.stop();
    cleanupDir(s.dataDir);
  }
}, 180_000);

describe.skipIf(!SERVER_URL)('several processes on one Postgres server', () => {
  let dbUrl: string;
  let drop: () => Promise<void>;
  let adminKey: string;
  const procs: ServerProc[] = [];
  const env = () => ({ DATABASE_URL: dbUrl, COLA_ADMIN_KEY: adminKey, COLA_LEASE_MS: '3000', COLA_HEARTBEAT_MS: '500', COLA_RECLAIM_INTERVAL_MS: '500', COLA_QUOTA_CONCURRENT_JOBS: '20', COLA_QUOTA_RPM: '100000' }); // tests poll job status often
  const sharedStore = tempDir('cola-shared-');
  let key: string;

  beforeAll(async () => {
    ({ url: dbUrl, drop } = await createServerDatabase());
    adminKey = `admin-${crypto.randomUUID()}`;
    // The tenant every test here uses, made here so that no test depends on another having run.
    const database = await openDatabase({ dataDir: sharedStore, databaseUrl: dbUrl });
    try {
      await database.migrate();
      key = (await createTenant(database.db, { name: 'e2e' })).apiKey;
    } finally {
      await database.close();
    }
  }, 30_000);
  afterAll(async () => {
    for (const p of procs) await p.stop(9).catch(() => {});
    await drop?.();
    cleanupDir(sharedStore);
  }, 30_000);

  test('kill -9 mid-job: another process resumes from the last knot, with the same versions as an uninterrupted run', async () => {
    const p1 = await startServer(env(), { dataDir: sharedStore });
    procs.push(p1);
    const h = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    // 8 examples, batch 2, 4 epochs: 16 steps in 4 links (a knot every 4 steps)
    const body = job({ train: [...TRAIN, ...TRAIN.map((e): Ex => ('text' in e ? { text: e.text.toUpperCase() } : { ...e, completion: e.completion.toUpperCase() }))], chain: { links: 4 }, epochs: 4, output_model: 'crashy' });
    const { id } = (await (await fetch(`${p1.url}/finetune`, { method: 'POST', headers: h, body: JSON.stringify(body) })).json()) as any;
    const before = await waitJob(p1.url, key, id, (x) => x.knots.length >= 1, 180_000);
    p1.proc.kill(9);
    expect(before.status).toBe('running'); // killed mid-job, after its first knot
    await p1.proc.exited;
    const p2 = await startServer(env(), { dataDir: sharedStore });
    procs.push(p2);
    const j = await waitJob(p2.url, key, id, (x) => x.status === 'succeeded' || x.status === 'failed', 180_000);
    expect(j.status).toBe('succeeded');
    expect(j.attempts).toBe(2);
    // the same request, uninterrupted
    const { id: id2 } = (await (await fetch(`${p2.url}/finetune`, { method: 'POST', headers: h, body: JSON.stringify({ ...body, output_model: 'calm' }) })).json()) as any;
    const j2 = await waitJob(p2.url, key, id2, (x) => x.status === 'succeeded' || x.status === 'failed', 180_000);
    expect(j2.status).toBe('succeeded');
    const a = await versions(p2.url, key, 'crashy');
    const b = await versions(p2.url, key, 'calm');
    expect(a.map((v) => v.version)).toEqual([1, 2, 3, 4]);
    // The contract: identical versions, i.e. the same sha256 for every knot.
    expect(a.map((v: any) => v.sha256)).toEqual(b.map((v: any) => v.sha256));
    expect(new Set(a.map((v: any) => v.sha256)).size).toBe(4);
    // ...and the weights themselves: tensor names, shapes and bytes.
    for (const v of [1, 2, 3, 4]) {
      const wa = tensorsOf(new Uint8Array(await (await fetch(`${p2.url}/models/crashy/versions/${v}/weights`, { headers: h })).arrayBuffer()));
      const wb = tensorsOf(new Uint8Array(await (await fetch(`${p2.url}/models/calm/versions/${v}/weights`, { headers: h })).arrayBuffer()));
      expect(wa.header).toEqual(wb.header);
      expect(Buffer.compare(wa.data, wb.data)).toBe(0);
    }
    expect(j.knots.map((k: any) => k.step)).toEqual(j2.knots.map((k: any) => k.step));
    // One loss entry per step although steps after the first knot ran twice (before and after the kill).
    expect(j.losses_count).toBe(j.progress.total_steps);
    expect(j.losses.map((x: any) => x.step)).toEqual(Array.from({ length: j.progress.total_steps }, (_, i) => i + 1));
  }, 300_000);

  test('two processes share 10 jobs: every job runs exactly once', async () => {
    const live = procs.filter((p) => p.proc.exitCode === null && p.proc.signalCode === null);
    while (live.length < 2) {
      const p = await startServer(env(), { dataDir: sharedStore });
      procs.push(p);
      live.push(p);
    }
    const h = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) {
      const r = await fetch(`${live[i % 2]!.url}/finetune`, { method: 'POST', headers: h, body: JSON.stringify(job({ chain: { links: 1 }, epochs: 1, train: TRAIN.slice(0, 2), seed: i })) });
      if (r.status !== 202) throw new Error(`POST /finetune ${i}: ${r.status} ${await r.text()}`);
      ids.push(((await r.json()) as any).id);
    }
    for (const id of ids) {
      const j = await waitJob(live[0]!.url, key, id, (x) => x.status === 'succeeded' || x.status === 'failed', 240_000);
      expect(j.status).toBe('succeeded');
      expect(j.attempts).toBe(1);
      expect(j.knots.length).toBe(1);
      const evs = await readSSE(await fetch(`${live[1]!.url}/finetune/${id}/events`, { headers: h }));
      expect(evs.filter((e) => e.event === 'status' && JSON.parse(e.data).status === 'running').length).toBe(1);
    }
  }, 300_000);
});
