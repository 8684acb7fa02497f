// Serving costs: (1) the same greedy generation through HTTP (the real server process) against
// in-process calls of the generation service — goal: HTTP adds ≤ 5% at 64 tokens; (2) generation
// from a merged knot version against the base model — goal: ratio 1.00 ± 0.03 (merged weights have
// the base model's shapes, so COLA adds no latency).
// Run: bun run bench/serve.ts [--reps 10] [--tokens 64]
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Engine } from '../src/gpu/engine.ts';
import { createMlServices } from '../src/model/service.ts';
import { GpuScheduler } from '../src/gpu/scheduler.ts';
import type { GenerateRequest, ResolvedVersion } from '../src/services.ts';

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]!.replace(/^--/, ''), process.argv[i + 1] ?? '');
const reps = Number(args.get('reps') ?? 10);
const tokens = Number(args.get('tokens') ?? 64);
const ROOT = resolve(import.meta.dir, '..');
const prompt = 'Once upon a time';
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

// ---- the server process
const dataDir = mkdtempSync(join(tmpdir(), 'cola-serve-'));
const proc = Bun.spawn(['bun', 'run', 'src/main.ts'], {
  cwd: ROOT,
  env: { ...process.env, PORT: '0', HOST: '127.0.0.1', COLA_DATA_DIR: dataDir, COLA_QUOTA_RPM: '1000000', COLA_QUOTA_MAX_TOKENS: '100000' },
  stdout: 'pipe',
  stderr: 'pipe',
});
let out = '';
void (async () => {
  for await (const c of proc.stdout as ReadableStream<Uint8Array>) out += new TextDecoder().decode(c);
})();
let url = '';
for (let i = 0; i < 600 && !url; i++) {
  await Bun.sleep(100);
  url = /listening on (http:\/\/[\d.]+:\d+)/.exec(out)?.[1] ?? '';
}
if (!url) throw new Error(`server did not start: ${out}`);
const key = readFileSync(join(dataDir, 'local.key'), 'utf8').trim();
const h = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
const body = (model: string) => JSON.stringify({ model, prompt, max_tokens: tokens, temperature: 0 });

async function http(model: string) {
  const t0 = performance.now();
  const r = await fetch(`${url}/generate`, { method: 'POST', headers: h, body: body(model) });
  const j = (await r.json()) as any;
  if (r.status !== 200) throw new Error(JSON.stringify(j));
  return { ms: performance.now() - t0, n: j.usage.completion_tokens as number, tps: j.timing.tokens_per_s as number, ids: j.token_ids as number[] };
}

try {
  // A knot version: a short COLA job (2 links) on a few stories.
  const train = ['Once upon a time there was a cat.', 'The dog ran to the park and played.', 'Lily liked to sing songs with her mom.'].map((text) => ({ text }));
  const job = (await (await fetch(`${url}/finetune`, { method: 'POST', headers: h, body: JSON.stringify({ model: 'stories260K', output_model: 'bench-merged', train, epochs: 2, batch_size: 1, chain: { links: 2 } }) })).json()) as any;
  for (;;) {
    const j = (await (await fetch(`${url}/finetune/${job.id}`, { headers: h })).json()) as any;
    if (j.status === 'succeeded') break;
    if (j.status === 'failed') throw new Error(JSON.stringify(j.error));
    await Bun.sleep(200);
  }
  // ---- in-process: the same service the server uses, on this process's engine
  const e = await Engine.create();
  const ml = createMlServices(e, new GpuScheduler(e, { trainShare: 0.3 }), ROOT);
  const info = (await (await fetch(`${url}/models/stories260K`, { headers: h })).json()) as any;
  const v0 = info.versions[0];
  const target: ResolvedVersion = { model: 'stories260K', version: 0, architecture: 'llama', config: info.config, path: v0.path ?? 'models/stories260K/stories260K.bin', sha256: v0.sha256 };
  const req: GenerateRequest = { tenant: 'bench', target, prompt, max_tokens: tokens, temperature: 0, top_k: 0, top_p: 1, seed: 0, stop: [], logprobs: 0, echo: false };
  const inproc = async () => {
    const t0 = performance.now();
    const r = await ml.generation.generate(req);
    return { ms: performance.now() - t0, n: r.usage.completion_tokens, tps: r.timing.tokens_per_s, ids: r.token_ids };
  };
  for (let i = 0; i < 3; i++) await Promise.all([inproc(), http('stories260K'), http('bench-merged')]).catch(() => {}); // warm-up (sequential below)
  const A: number[] = [], Atps: number[] = [], Bm: number[] = [], Btps: number[] = [], base: number[] = [], merged: number[] = [];
  let nA = 0, nB = 0;
  for (let i = 0; i < reps; i++) {
    const a = await inproc();
    const b = await http('stories260K');
    const m = await http('bench-merged');
    A.push(a.ms); Atps.push(a.tps); nA = a.n;
    Bm.push(b.ms); Btps.push(b.tps); nB = b.n;
    base.push(b.ms / b.n);
    merged.push(m.ms / m.n);
    if (a.ids.join() !== b.ids.join()) throw new Error('in-process and HTTP generations differ');
  }
  const ratioHttp = median(Bm) / median(A);
  const ratioMerged = median(merged) / median(base);
  console.log(`| measure (${tokens} tokens, greedy, stories260K, ${reps} reps, median) | in-process | HTTP | ratio | goal |`);
  console.log('|---|---|---|---|---|');
  console.log(`| request latency, ms | ${median(A).toFixed(1)} | ${median(Bm).toFixed(1)} | ${ratioHttp.toFixed(3)} | ≤ 1.05 |`);
  console.log(`| decode tokens/s | ${median(Atps).toFixed(0)} | ${median(Btps).toFixed(0)} | ${(median(Btps) / median(Atps)).toFixed(3)} | |`);
  console.log(`\n| measure (HTTP, ms per generated token) | base v0 | merged knot v2 | ratio | goal |`);
  console.log('|---|---|---|---|---|');
  console.log(`| latency per token | ${median(base).toFixed(2)} | ${median(merged).toFixed(2)} | ${ratioMerged.toFixed(3)} | 1.00 ± 0.03 |`);
  console.log(JSON.stringify({ bench: 'serve', tokens: { inproc: nA, http: nB }, inprocMs: median(A), httpMs: median(Bm), httpOverInproc: ratioHttp, baseMsPerToken: median(base), mergedMsPerToken: median(merged), mergedOverBase: ratioMerged }));
} finally {
  proc.kill('SIGTERM');
  await proc.exited;
  rmSync(dataDir, { recursive: true, force: true });
}
process.exit(0);
