// Load: 32 concurrent autocannon clients on /generate of the real server (real generator on the
// WebGPU device). Requests beyond COLA_GENERATE_CONCURRENCY decoding plus COLA_GENERATE_QUEUE
// waiting answer 429 (never an error or a timeout), the latencies are reported (p50/p99), and the server's memory stays bounded.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, test } from 'bun:test';
// @ts-expect-error autocannon ships no type declarations
import autocannon from 'autocannon';

interface AutocannonResult {
  requests: { total: number };
  duration: number;
  latency: { p50: number; p99: number };
  errors: number;
  timeouts: number;
  statusCodeStats?: Record<string, { count: number }>;
}
import { cleanupDir, startServer, type ServerProc } from './service.fixtures.ts';
import { GPU_MEMORY_MARGIN_BYTES } from '../src/config.ts';

let s: ServerProc;
let key: string;

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

beforeAll(async () => {
  s = await startServer({ COLA_GENERATE_CONCURRENCY: '4', COLA_GENERATE_QUEUE: '8', COLA_QUOTA_RPM: '1000000', COLA_WORKER: '0' });
  key = fs.readFileSync(path.join(s.dataDir, 'local.key'), 'utf8').trim();
}, 60_000);

afterAll(async () => {
  await s?.stop();
  cleanupDir(s.dataDir);
});

test('32 concurrent clients on /generate: only 200 and 429, bounded memory, p50/p99 reported', async () => {
  const body = JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 8 });
  const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
  // Warm up: load the model and compile the batch kernels (seconds each with a cold shader cache).
  const w = await Promise.all(Array.from({ length: 8 }, () => fetch(`${s.url}/generate`, { method: 'POST', headers, body })));
  expect(w.map((r) => r.status)).toEqual(new Array(8).fill(200));
  const rss0 = rssBytes(s.proc.pid);
  const run = (seconds: number) =>
    new Promise<AutocannonResult>((resolve, reject) =>
      autocannon({ url: `${s.url}/generate`, method: 'POST', headers, body, connections: 32, duration: seconds, timeout: 30 }, (err: Error | null, res: AutocannonResult) => (err ? reject(err) : resolve(res))),
    );
  const res = await run(8);
  const rss1 = rssBytes(s.proc.pid);
  const codes = Object.fromEntries(Object.entries(res.statusCodeStats ?? {}).map(([k, v]) => [k, v.count]));
  console.log(
    `load: ${res.requests.total} requests in ${res.duration}s, status ${JSON.stringify(codes)}, latency p50 ${res.latency.p50} ms p99 ${res.latency.p99} ms (all responses incl. 429), ` +
      `errors ${res.errors}, timeouts ${res.timeouts}, rss ${(rss0 / 2 ** 20).toFixed(0)} → ${(rss1 / 2 ** 20).toFixed(0)} MiB`,
  );
  expect(res.errors).toBe(0);
  expect(res.timeouts).toBe(0);
  expect(Object.keys(codes).sort()).toEqual(expect.arrayContaining(['200']));
  for (const c of Object.keys(codes)) expect(['200', '429']).toContain(c);
  expect(codes['429'] ?? 0).toBeGreaterThan(0);
  expect(rss1 - rss0).toBeLessThan(512 * 2 ** 20);
  const m = await (await fetch(`${s.url}/metrics`)).text();
  expect(m).toMatch(/cola_generate_rejected_total [1-9]/);
  // Training memory: what the default 2 GiB budget leaves after the model cache (1 GiB), the KV
  // pool (64 MiB) and the margin; nothing reserved (no job runs here).
  expect(m).toContain(`cola_train_memory_bytes{kind="capacity"} ${2 ** 31 - 2 ** 30 - 64 * 2 ** 20 - GPU_MEMORY_MARGIN_BYTES}`);
  expect(m).toContain('cola_train_memory_bytes{kind="reserved"} 0');
  expect(m).toContain('cola_train_memory_waiting 0');
  expect((await fetch(`${s.url}/healthz`)).status).toBe(200);
}, 120_000);
