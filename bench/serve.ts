// Serving benchmarks through the real server (HTTP, PGlite, in-process worker), stories260K:
//  1. continuous batching: aggregate decode tokens/s and p50/p99 time per output token (TPOT) for
//     1, 2, 4, 8, 16, 32 concurrent streaming clients (goal: 8 clients ≥ 4× one client on lavapipe,
//     ≥ 6× on a GPU);
//  2. chunked prefill: decoders' inter-token gaps while a 400-token prompt is admitted;
//  3. serving while tuning: /generate latency (64 tokens) idle vs while a fine-tune job trains
//     (goal: slowest ≤ 3× the idle median; p99 TPOT ≤ 1.5× idle), and the job's training rate idle
//     vs under a steady generation load of 2 requests/s (goal ≥ 80 % kept);
//  4. HTTP overhead: the same greedy request in-process (the service the server uses) vs HTTP;
//     merged knot version vs base model per token (goal 1.00 ± 0.03: same shapes, same kernels).
// Prints tables and one JSON line. Run: bun run bench/serve.ts [--seconds 8] [--tokens 64] [--reps 7]
//   [--clients 1,2,4,8,16,32] [--skip-sweep] [--skip-prefill] [--skip-tuning] [--skip-overhead]
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Engine } from '../src/gpu/engine.ts';
import { GpuScheduler } from '../src/gpu/scheduler.ts';
import { createMlServices } from '../src/model/service.ts';
import type { GenerateRequest, ResolvedVersion } from '../src/services.ts';

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i]!;
  if (!a.startsWith('--')) continue;
  const next = process.argv[i + 1];
  if (next !== undefined && !next.startsWith('--')) {
    args.set(a.slice(2), next);
    i++;
  } else args.set(a.slice(2), '1');
}
const SECONDS = Number(args.get('seconds') ?? 8);
const TOKENS = Number(args.get('tokens') ?? 64);
const REPS = Number(args.get('reps') ?? 7);
const CLIENTS = (args.get('clients') ?? '1,2,4,8,16,32').split(',').map(Number);
const ROOT = resolve(import.meta.dir, '..');
const PROMPTS = ['Once upon a time', 'The little dog', 'Lily and Ben went to the park', 'One day, a cat'];
const q = (xs: number[], p: number) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))]! : NaN);
const median = (xs: number[]) => q(xs, 0.5);
const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '–');

// ---- the server process
const dataDir = mkdtempSync(join(tmpdir(), 'cola-serve-'));
const proc = Bun.spawn(['bun', 'run', 'src/main.ts'], {
  cwd: ROOT,
  env: { ...process.env, PORT: '0', HOST: '127.0.0.1', COLA_DATA_DIR: dataDir, COLA_QUOTA_RPM: '1000000', COLA_QUOTA_MAX_TOKENS: '100000', COLA_QUOTA_CONCURRENT_JOBS: '10' },
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

interface Gen {
  ms: number;
  n: number;
  /** Gaps between consecutive tokens (ms), the first token excluded. */
  gaps: number[];
  /** Time to the first token event (ms). */
  ttft: number;
  /** The server's time from admission to the first token (timing.prefill_ms of the done event). */
  serverPrefill: number;
  ids: number[];
}

/** One streaming /generate: wall time, tokens, inter-token gaps. */
async function generate(model: string, seed: number, opts: { temperature?: number; tokens?: number } = {}): Promise<Gen> {
  const t0 = performance.now();
  const r = await fetch(`${url}/generate`, {
    method: 'POST',
    headers: h,
    body: JSON.stringify({ model, prompt: PROMPTS[seed % PROMPTS.length], max_tokens: opts.tokens ?? TOKENS, temperature: opts.temperature ?? 0.8, seed, stream: true }),
  });
  if (r.status !== 200) throw new Error(`generate: ${r.status} ${await r.text()}`);
  const reader = r.body!.getReader();
  const dec = new TextDecoder();
  let buf = '';
  const times: number[] = [];
  let ids: number[] = [];
  let serverPrefill = NaN;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (ev.includes('event: token')) times.push(performance.now());
      else if (ev.includes('event: done')) {
        const d = JSON.parse(/data: (.*)/.exec(ev)![1]!);
        ids = d.token_ids;
        serverPrefill = d.timing?.prefill_ms ?? NaN;
      }
      else if (ev.includes('event: error')) throw new Error(ev);
    }
  }
  const gaps = times.slice(1).map((t, k) => t - times[k]!);
  return { ms: performance.now() - t0, n: ids.length, gaps, ttft: (times[0] ?? NaN) - t0, serverPrefill, ids };
}

/** `c` clients generating back to back for `seconds`: tokens/s and TPOT percentiles. */
async function sweep(c: number, seconds: number) {
  const end = performance.now() + seconds * 1000;
  let tokens = 0;
  const gaps: number[] = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: c }, async (_, k) => {
      for (let s = k * 1000; performance.now() < end; s++) {
        const g = await generate('stories260K', s);
        tokens += g.n;
        gaps.push(...g.gaps);
      }
    }),
  );
  const wall = (performance.now() - t0) / 1000;
  return { clients: c, tokensPerS: tokens / wall, tpotP50: q(gaps, 0.5), tpotP99: q(gaps, 0.99) };
}

async function jobStatus(id: string): Promise<{ status: string; step: number; total: number }> {
  const j = (await (await fetch(`${url}/finetune/${id}`, { headers: h })).json()) as { status: string; progress?: { step: number; total_steps: number } };
  return { status: j.status, step: j.progress?.step ?? 0, total: j.progress?.total_steps ?? 0 };
}

async function startJob(output: string, epochs: number, batch: number): Promise<string> {
  // Story-like texts of ~40–60 tokens; batch × 64-token rows per step.
  const words = 'the cat dog girl boy sun park ball tree happy big little ran saw liked played went home mom dad friend day'.split(' ');
  const train = Array.from({ length: 64 }, (_, i) => ({ text: Array.from({ length: 40 + (i % 20) }, (_, k) => words[(i * 7 + k * 3) % words.length]).join(' ') + '.' }));
  const r = await fetch(`${url}/finetune`, { method: 'POST', headers: h, body: JSON.stringify({ model: 'stories260K', output_model: output, train, epochs, batch_size: batch, max_seq_len: 64, chain: { links: 3 }, eval: { every_knot: false } }) });
  const j = (await r.json()) as { id: string };
  if (r.status !== 202) throw new Error(`finetune: ${r.status} ${JSON.stringify(j)}`);
  return j.id;
}

/** Steps per second of a running job over `seconds`, while `load` runs. */
async function stepRate(id: string, seconds: number, load?: () => Promise<void>): Promise<number> {
  const a = await jobStatus(id);
  const t0 = performance.now();
  let stop = false;
  const bg = load ? (async () => {
    while (!stop) await load();
  })() : Promise.resolve();
  await Bun.sleep(seconds * 1000);
  stop = true;
  const b = await jobStatus(id);
  const rate = (b.step - a.step) / ((performance.now() - t0) / 1000);
  await bg;
  return rate;
}

const result: Record<string, unknown> = { bench: 'serve', tokens: TOKENS };
try {
  // Warm-up: model upload and pipeline compiles (seconds each on lavapipe with a cold cache).
  await Promise.all(Array.from({ length: 8 }, (_, i) => generate('stories260K', i, { tokens: 8 })));
  await generate('stories260K', 0, { tokens: 8 });

  if (!args.has('skip-sweep')) {
    const rows = [];
    for (const c of CLIENTS) rows.push(await sweep(c, SECONDS));
    const one = rows.find((r) => r.clients === 1)?.tokensPerS ?? rows[0]!.tokensPerS;
    console.log(`\n## Continuous batching: ${TOKENS}-token streaming requests, temperature 0.8, ${SECONDS} s per row`);
    console.log('| clients | aggregate tokens/s | ÷ 1 client | TPOT p50 ms | TPOT p99 ms |');
    console.log('|---:|---:|---:|---:|---:|');
    for (const r of rows) console.log(`| ${r.clients} | ${r.tokensPerS.toFixed(0)} | ${(r.tokensPerS / one).toFixed(2)} | ${f1(r.tpotP50)} | ${f1(r.tpotP99)} |`);
    result.sweep = rows;
  }

  if (!args.has('skip-prefill')) {
    // Chunked prefill: 4 clients decode long completions; a 400-token prompt is admitted meanwhile.
    // The decoders' inter-token gaps while it is prefilled vs before, for two chunk sizes would need
    // two servers; this measures the configured COLA_PREFILL_CHUNK (default 64).
    // ~1.5 stories260K tokens per word: 264 words ≈ 400 tokens (the count is printed).
    const prompt400 = Array.from({ length: 264 }, (_, i) => ['Lily', 'went', 'to', 'the', 'park', 'with', 'her', 'dog.'][i % 8]).join(' ');
    const gapsBefore: number[] = [];
    const gapsDuring: number[] = [];
    let window: 'before' | 'during' | 'after' = 'before';
    const decoders = Array.from({ length: 4 }, async (_, k) => {
      const r = await fetch(`${url}/generate`, { method: 'POST', headers: h, body: JSON.stringify({ model: 'stories260K', prompt: PROMPTS[k], max_tokens: 400, temperature: 0.8, seed: k, stream: true }) });
      const reader = r.body!.getReader();
      let last = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        const n = new TextDecoder().decode(value).split('event: token').length - 1;
        const t = performance.now();
        for (let i = 0; i < n; i++) {
          if (last) (window === 'before' ? gapsBefore : window === 'during' ? gapsDuring : []).push(t - last);
          last = t;
        }
      }
    });
    await Bun.sleep(400);
    window = 'during';
    const t0 = performance.now();
    const r = await fetch(`${url}/generate`, { method: 'POST', headers: h, body: JSON.stringify({ model: 'stories260K', prompt: prompt400, max_tokens: 1, temperature: 0 }) });
    if (r.status !== 200) throw new Error(`long prompt: ${r.status} ${await r.text()}`);
    const pj = (await r.json()) as { usage: { prompt_tokens: number }; timing: { prefill_ms: number } };
    const prefillWall = performance.now() - t0;
    window = 'after';
    await Promise.all(decoders);
    console.log(`\n## Chunked prefill: a ${pj.usage.prompt_tokens}-token prompt admitted while 4 sequences decode (chunk COLA_PREFILL_CHUNK, default 64)`);
    console.log('| decoders\' inter-token gap | before | during the prefill | ratio |');
    console.log('|---|---:|---:|---:|');
    console.log(`| p50 ms | ${f1(q(gapsBefore, 0.5))} | ${f1(q(gapsDuring, 0.5))} | ${(q(gapsDuring, 0.5) / q(gapsBefore, 0.5)).toFixed(2)} |`);
    console.log(`| max ms | ${f1(Math.max(...gapsBefore))} | ${f1(Math.max(...gapsDuring))} | |`);
    console.log(`prefill of the long prompt: ${f1(prefillWall)} ms wall (${f1(pj.timing.prefill_ms)} ms to its first token)`);
    result.prefill = { promptTokens: pj.usage.prompt_tokens, gapP50: [q(gapsBefore, 0.5), q(gapsDuring, 0.5)], gapMax: [Math.max(...gapsBefore), Math.max(...gapsDuring)], prefillMs: prefillWall };
  }

  if (!args.has('skip-tuning')) {
    // Idle latency and TPOT (greedy, sequential).
    const idle: Gen[] = [];
    for (let i = 0; i < REPS; i++) idle.push(await generate('stories260K', i, { temperature: 0 }));
    // A job long enough to outlast the measurements below.
    const id = await startJob('bench-tune', 200, 8);
    for (let i = 0; i < 600 && (await jobStatus(id)).step < 3; i++) await Bun.sleep(100);
    const rateIdle = await stepRate(id, SECONDS);
    // Steady light load: one 64-token request every 500 ms (2 requests/s), each in its own task.
    const steady = async () => {
      void generate('stories260K', Math.floor(Math.random() * 1e6)).catch(() => {});
      await Bun.sleep(500);
    };
    const rateLoaded = await stepRate(id, SECONDS, steady);
    await Bun.sleep(1500); // let the steady requests finish
    const during: Gen[] = [];
    for (let i = 0; i < REPS; i++) during.push(await generate('stories260K', i, { temperature: 0 }));
    const st = await jobStatus(id);
    await fetch(`${url}/finetune/${id}/cancel`, { method: 'POST', headers: h });
    const idleMs = idle.map((g) => g.ms);
    const duringMs = during.map((g) => g.ms);
    const idleGaps = idle.flatMap((g) => g.gaps);
    const duringGaps = during.flatMap((g) => g.gaps);
    const same = during.every((g, i) => g.ids.join() === idle[i]!.ids.join());
    console.log(`\n## Serving while tuning: /generate of ${TOKENS} tokens (greedy, ${REPS} reps) idle vs while a job trains (stories260K, batch 8 × 64, 3 links; job at step ${st.step}/${st.total}, status ${st.status})`);
    console.log('| measure | idle | while training | ratio | goal |');
    console.log('|---|---:|---:|---:|---|');
    console.log(`| /generate median ms | ${f1(median(idleMs))} | ${f1(median(duringMs))} | ${(median(duringMs) / median(idleMs)).toFixed(2)} | |`);
    console.log(`| /generate slowest ms (÷ idle median) | ${f1(Math.max(...idleMs))} | ${f1(Math.max(...duringMs))} | ${(Math.max(...duringMs) / median(idleMs)).toFixed(2)} | ≤ 3 |`);
    console.log(`| time to first token median ms | ${f1(median(idle.map((g) => g.ttft)))} | ${f1(median(during.map((g) => g.ttft)))} | ${(median(during.map((g) => g.ttft)) / median(idle.map((g) => g.ttft))).toFixed(2)} | |`);
    console.log(`| of which in the batcher (server prefill_ms) median | ${f1(median(idle.map((g) => g.serverPrefill)))} | ${f1(median(during.map((g) => g.serverPrefill)))} | ${(median(during.map((g) => g.serverPrefill)) / median(idle.map((g) => g.serverPrefill))).toFixed(2)} | |`);
    console.log(`| longest gap between tokens ms | ${f1(Math.max(...idleGaps))} | ${f1(Math.max(...duringGaps))} | ${(Math.max(...duringGaps) / Math.max(...idleGaps)).toFixed(2)} | |`);
    console.log(`| TPOT p50 ms | ${f1(q(idleGaps, 0.5))} | ${f1(q(duringGaps, 0.5))} | ${(q(duringGaps, 0.5) / q(idleGaps, 0.5)).toFixed(2)} | |`);
    console.log(`| TPOT p99 ms | ${f1(q(idleGaps, 0.99))} | ${f1(q(duringGaps, 0.99))} | ${(q(duringGaps, 0.99) / q(idleGaps, 0.99)).toFixed(2)} | ≤ 1.5 |`);
    console.log(`| training steps/s: alone vs under 2 generations/s | ${rateIdle.toFixed(2)} | ${rateLoaded.toFixed(2)} | ${(rateLoaded / rateIdle).toFixed(2)} | ≥ 0.80 |`);
    console.log(`greedy ids while training = idle: ${same}`);
    result.tuning = {
      idleMedianMs: median(idleMs), duringMedianMs: median(duringMs), slowestOverIdleMedian: Math.max(...duringMs) / median(idleMs),
      tpotP50: [q(idleGaps, 0.5), q(duringGaps, 0.5)], tpotP99: [q(idleGaps, 0.99), q(duringGaps, 0.99)],
      stepsPerS: [rateIdle, rateLoaded], trainingKept: rateLoaded / rateIdle, sameIds: same,
    };
  }

  if (!args.has('skip-overhead')) {
    // A knot version: a short COLA job (2 links) on a few stories.
    const train = ['Once upon a time there was a cat.', 'The dog ran to the park and played.', 'Lily liked to sing songs with her mom.'].map((text) => ({ text }));
    const job = (await (await fetch(`${url}/finetune`, { method: 'POST', headers: h, body: JSON.stringify({ model: 'stories260K', output_model: 'bench-merged', train, epochs: 2, batch_size: 1, chain: { links: 2 } }) })).json()) as { id: string };
    for (;;) {
      const j = await jobStatus(job.id);
      if (j.status === 'succeeded') break;
      if (j.status === 'failed') throw new Error('knot job failed');
      await Bun.sleep(200);
    }
    // In-process: the same service the server uses, on this process's engine.
    const e = await Engine.create();
    const ml = createMlServices(e, new GpuScheduler(e, { trainShare: 0.3 }), ROOT);
    const info = (await (await fetch(`${url}/models/stories260K`, { headers: h })).json()) as { config: Record<string, unknown>; versions: { sha256: string; path?: string }[] };
    const v0 = info.versions[0]!;
    const target: ResolvedVersion = { model: 'stories260K', version: 0, architecture: 'llama', config: info.config, path: v0.path ?? 'models/stories260K/stories260K.bin', sha256: v0.sha256 };
    const req: GenerateRequest = { tenant: 'bench', target, prompt: PROMPTS[0]!, max_tokens: TOKENS, temperature: 0, top_k: 0, top_p: 1, seed: 0, stop: [], logprobs: 0, echo: false };
    const inproc = async () => {
      const t0 = performance.now();
      const r = await ml.generation.generate(req);
      return { ms: performance.now() - t0, ids: r.token_ids };
    };
    const http = async (model: string) => {
      const t0 = performance.now();
      const r = await fetch(`${url}/generate`, { method: 'POST', headers: h, body: JSON.stringify({ model, prompt: PROMPTS[0], max_tokens: TOKENS, temperature: 0 }) });
      const j = (await r.json()) as { token_ids: number[]; usage: { completion_tokens: number }; timing: { decode_ms: number } };
      // Decode time per token after the first (the server's timing): the two models may stop at
      // different lengths (EOS), and request overhead ÷ tokens would then differ.
      return { ms: performance.now() - t0, ids: j.token_ids, n: j.usage.completion_tokens, decodePerToken: j.timing.decode_ms / Math.max(1, j.usage.completion_tokens - 1) };
    };
    for (let i = 0; i < 2; i++) await Promise.all([inproc(), http('stories260K'), http('bench-merged')]);
    const A: number[] = [], B: number[] = [], base: number[] = [], merged: number[] = [];
    for (let i = 0; i < REPS; i++) {
      const a = await inproc();
      const b = await http('stories260K');
      const m = await http('bench-merged');
      A.push(a.ms);
      B.push(b.ms);
      base.push(b.decodePerToken);
      merged.push(m.decodePerToken);
      if (a.ids.join() !== b.ids.join()) throw new Error('in-process and HTTP generations differ');
    }
    console.log(`\n## Overhead (${TOKENS} tokens, greedy, ${REPS} reps, median)`);
    console.log('| measure | reference | measured | ratio | goal |');
    console.log('|---|---:|---:|---:|---|');
    console.log(`| request latency ms: in-process vs HTTP | ${f1(median(A))} | ${f1(median(B))} | ${(median(B) / median(A)).toFixed(3)} | ≤ 1.05 |`);
    console.log(`| decode ms per token: base v0 vs merged knot v2 (HTTP) | ${median(base).toFixed(2)} | ${median(merged).toFixed(2)} | ${(median(merged) / median(base)).toFixed(3)} | 1.00 ± 0.03 |`);
    result.overhead = { inprocMs: median(A), httpMs: median(B), httpOverInproc: median(B) / median(A), mergedOverBase: median(merged) / median(base) };
  }
  const dev = (await (await fetch(`${url}/readyz`)).json()) as Record<string, unknown>;
  result.device = dev;
  const metrics = await (await fetch(`${url}/metrics`)).text();
  console.log('\n' + metrics.split('\n').filter((l) => /^cola_gpu_(bind_groups|collections|busy|units|wait_max|turn_max)/.test(l)).join('\n'));
  console.log(JSON.stringify(result));
} finally {
  proc.kill('SIGTERM');
  await proc.exited;
  rmSync(dataDir, { recursive: true, force: true });
}
process.exit(0);
