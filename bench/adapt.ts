// The low-noise COLA experiment (issue 13): adapt stories260K (pretrained on children's stories) to
// a new text domain and measure held-out negative log-likelihood per token.
//
//   bun run bench/adapt.ts [--domains boolq,sst2] [--seeds 3] [--steps 120] [--lrs 3e-3,1e-2]
//                          [--methods lora8,cola3,...] [--out bench/results/adapt] [--fresh]
//
// Domains (text only, loss on every token): BoolQ's Wikipedia passages, SST-2's review sentences.
// Each text is cut at word boundaries into windows of ≤ 64 tokens. Splits are fixed (not seeded):
// BoolQ passages are deduplicated and assigned to train / validation / test by a hash of the
// passage, so a passage's windows never straddle splits; SST-2 uses its own train / dev / test files.
// Every method trains the same number of steps on the same data order (batch 8, seed = data
// order and link-0 initialisation, shared by all methods, so runs with the same seed are paired):
//   lora8, lora16, lora24   plain LoRA (M = 1) at r = 8, and at the chain's total rank as references
//   cola2, cola3, cola5     COLA, M equal links of r = 8
//   stepdown                COLA M = 2 (3/5, 2/5 of the steps) with ranks (8, 4)
//   auto                    automatic knots (chain.auto: threshold 0.25, EMA 0.9, window 5,
//                           min link = T/8, at most 5 links)
//   reset                   cola3 with a partial optimizer reset (keep 10 % of the moments) and a
//                           re-warm-up of 5 steps after each knot
// LoRA on q, v, alpha = 2r (s = 2), AdamW, linear decay over the whole run, clipping at 1.
// LR: per (domain, method) the grid value with the lowest validation NLL on seed 0; the other seeds
// run at that LR only. The reported test NLL is per token over the whole test set, mean ± std over
// seeds; COLA − LoRA r8 is tested with a paired t-test over seeds (95 % interval: t quantile),
// next to the test-set-only interval of seed 0 (paired bootstrap over test batches).
// Outputs in --out: runs.jsonl (one line per run; reused unless --fresh), results.md, loss-<domain>.svg.
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { Engine } from '../src/gpu/engine.ts';
import { loadBundledModel } from '../src/model/registry.ts';
import { TransformerModel } from '../src/model/transformer.ts';
import { encodeAll, trainCola, validationLoss, type TrainConfig } from '../src/cola/trainer.ts';
import { resolveLoraSpec } from '../src/cola/lora.ts';
import type { Example, Tokenizer } from '../src/cola/data.ts';
import type { ChainConfig } from '../src/cola/schedule.ts';
import type { ModelWeights } from '../src/model/weights.ts';
import { mdTable, mean, std } from './lib/stats.ts';
import { lineChart, PALETTE, type Series } from './lib/svg.ts';
import { defaultTasksDir } from '../src/eval/tasks.ts';

const METHODS = ['lora8', 'lora16', 'lora24', 'cola2', 'cola3', 'cola5', 'stepdown', 'auto', 'reset'] as const;
type Method = (typeof METHODS)[number];
const DOMAINS = ['boolq', 'sst2'] as const;
type Domain = (typeof DOMAINS)[number];
const MAX_LEN = 64;
const BATCH = 8;

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
}
const opt = {
  domains: arg('domains', DOMAINS.join(',')).split(',') as Domain[],
  seeds: Number(arg('seeds', '3')),
  steps: Number(arg('steps', '120')),
  lrs: arg('lrs', '3e-3,1e-2').split(',').map(Number),
  methods: arg('methods', METHODS.join(',')).split(',') as Method[],
  out: arg('out', 'bench/results/adapt'),
  fresh: process.argv.includes('--fresh'),
  /** Only write results.md from runs.jsonl (e.g. while a run is still going). */
  reportOnly: process.argv.includes('--report-only'),
  /** chain.auto's rate window and threshold (defaults 5 and 0.25). */
  autoWindow: Number(arg('auto-window', '5')),
  autoThreshold: Number(arg('auto-threshold', '0.25')),
  nVal: Number(arg('val', '48')),
  nTest: Number(arg('test', '160')),
};
for (const m of opt.methods) if (!METHODS.includes(m)) throw new Error(`unknown method ${m}`);
mkdirSync(opt.out, { recursive: true });

// ------------------------------------------------------------------------------------ data
/** Cuts a text at word boundaries into pieces of at most `maxTok` tokens (BOS and EOS included). */
function windows(tok: Tokenizer, text: string, maxTok: number): string[] {
  const words = text.replace(/\s+/g, ' ').trim().split(' ');
  const out: string[] = [];
  let cur: string[] = [];
  const fits = (ws: string[]) => tok.encode(ws.join(' '), { bos: false }).length + 2 <= maxTok;
  for (const w of words) {
    if (fits([...cur, w])) cur.push(w);
    else {
      if (cur.length) out.push(cur.join(' '));
      cur = fits([w]) ? [w] : [];
    }
  }
  if (cur.length >= 4) out.push(cur.join(' '));
  return out;
}

const hashSplit = (s: string) => createHash('sha256').update(s).digest()[0]! / 256; // in [0, 1)

function domainData(d: Domain, tok: Tokenizer): { train: Example[]; val: Example[]; test: Example[] } {
  const toEx = (ts: string[]) => ts.map((text) => ({ text }));
  if (d === 'boolq') {
    const seen = new Set<string>();
    const parts: Record<'train' | 'val' | 'test', string[]> = { train: [], val: [], test: [] };
    for (const f of ['val.jsonl', 'test.jsonl']) {
      for (const line of readFileSync(join(defaultTasksDir(), 'boolq', f), 'utf8').split('\n')) {
        if (!line.trim()) continue;
        const p = (JSON.parse(line) as { passage: string }).passage;
        if (seen.has(p)) continue;
        seen.add(p);
        const h = hashSplit(p);
        parts[h < 0.7 ? 'train' : h < 0.8 ? 'val' : 'test'].push(p);
      }
    }
    const w = (ps: string[], cap: number) => {
      const out: string[] = [];
      for (const p of ps) {
        if (out.length >= cap) break;
        out.push(...windows(tok, p, MAX_LEN));
      }
      return out.slice(0, cap);
    };
    return { train: toEx(w(parts.train, 4000)), val: toEx(w(parts.val, opt.nVal)), test: toEx(w(parts.test, opt.nTest)) };
  }
  const read = (f: string, cap: number) => {
    const seen = new Set<string>();
    const out: string[] = [];
    for (const line of readFileSync(join(defaultTasksDir(), 'sst2', f), 'utf8').split('\n')) {
      const s = line.slice(2).trim();
      if (s.split(' ').length < 4 || seen.has(s)) continue;
      seen.add(s);
      out.push(...windows(tok, s, MAX_LEN));
      if (out.length >= cap) break;
    }
    return out.slice(0, cap);
  };
  return { train: toEx(read('stsa.binary.train', 4000)), val: toEx(read('stsa.binary.dev', opt.nVal)), test: toEx(read('stsa.binary.test', opt.nTest)) };
}

// ------------------------------------------------------------------------------------ methods
function configFor(m: Method, w: ModelWeights, seed: number, lr: number, T: number): TrainConfig {
  const rank = m === 'lora16' ? 16 : m === 'lora24' ? 24 : 8;
  const first = Math.round((T * 3) / 5);
  const chain: ChainConfig =
    m === 'cola2' ? { links: 2 } : m === 'cola3' || m === 'reset' ? { links: 3 } : m === 'cola5' ? { links: 5 }
    : m === 'stepdown' ? { links: [{ steps: first, rank: 8 }, { steps: T - first, rank: 4 }] }
    : m === 'auto' ? { auto: { min_link_steps: Math.max(2, Math.floor(T / 8)), max_links: 5, threshold: opt.autoThreshold, ema: 0.9, window: opt.autoWindow } }
    : { links: 1 };
  return {
    lora: resolveLoraSpec(w.config, { targets: ['q', 'v'], rank, alpha: 2 * rank, bias: false }),
    chain,
    optimizer: { name: 'adamw', lr, weightDecay: 0, betas: [0.9, 0.999], eps: 1e-8, momentum: 0, resetKeep: m === 'reset' ? 0.1 : 0 },
    schedule: { name: 'linear', warmupSteps: 0, knotWarmupSteps: m === 'reset' ? 5 : 0 },
    epochs: 1,
    batchSize: BATCH,
    maxSeqLen: MAX_LEN,
    seed,
    shuffle: true,
    maxGradNorm: 1,
    evalEveryKnot: false,
  };
}

interface Run {
  key: string;
  domain: Domain;
  method: Method;
  seed: number;
  lr: number;
  steps: number;
  losses: number[];
  knots: number[];
  flops: number;
  valNll: number;
  testNll: number;
  /** Per test batch: [sum of NLL, tokens], for the paired bootstrap. */
  testBatches: [number, number][];
  trainSeconds: number;
  linkSeconds: number[];
  knotSeconds: number[];
  code: string;
}
const CODE = new TextDecoder().decode(Bun.spawnSync(['git', 'rev-parse', '--short', 'HEAD']).stdout).trim();
const runsFile = join(opt.out, 'runs.jsonl');
const runs: Run[] = !opt.fresh && existsSync(runsFile) ? readFileSync(runsFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : [];
const autoTag = (m: Method) => (m === 'auto' && (opt.autoWindow !== 5 || opt.autoThreshold !== 0.25) ? `|aw${opt.autoWindow}|at${opt.autoThreshold}` : '');
const keyOf = (d: Domain, m: Method, seed: number, lr: number) => `${d}|${m}|s${seed}|lr${lr}|T${opt.steps}|v${opt.nVal}|t${opt.nTest}${autoTag(m)}`;

const e = await Engine.create();
const base = loadBundledModel();
const tok = base.tokenizer as unknown as Tokenizer;

async function nllBatches(w: ModelWeights, rows: ReturnType<typeof encodeAll>): Promise<[number, number][]> {
  const model = TransformerModel.upload(e, w);
  const out: [number, number][] = [];
  try {
    for (let i = 0; i < rows.length; i += BATCH) {
      const chunk = rows.slice(i, i + BATCH);
      const n = chunk.reduce((a, r) => a + r.lossTokens, 0);
      out.push([(await validationLoss(e, model, chunk, BATCH, tok.eos, MAX_LEN)) * n, n]);
    }
  } finally {
    model.free();
  }
  return out;
}
const perToken = (bs: [number, number][]) => bs.reduce((a, b) => a + b[0], 0) / bs.reduce((a, b) => a + b[1], 0);

async function runOne(d: Domain, m: Method, seed: number, lr: number, data: { train: Example[]; val: ReturnType<typeof encodeAll>; test: ReturnType<typeof encodeAll> }): Promise<Run> {
  const key = keyOf(d, m, seed, lr);
  const have = runs.find((r) => r.key === key);
  if (have) return have;
  const cfg = configFor(m, base.weights, seed, lr, opt.steps);
  const losses: number[] = [];
  const knots: number[] = [];
  const linkSeconds: number[] = [];
  const knotSeconds: number[] = [];
  let flops = 0;
  let final: ModelWeights | null = null;
  let tStart = performance.now();
  let tLast = tStart;
  const res = await trainCola(
    { e, weights: base.weights, tokenizer: tok, train: data.train, config: cfg },
    {
      onLinkStart: () => void (tStart = tLast = performance.now()),
      onStep: (s) => {
        tLast = performance.now();
        losses.push(s.loss);
        if (!Number.isFinite(s.loss)) throw new Error(`non-finite loss at step ${s.step}`);
      },
      onKnot: async (k) => {
        const now = performance.now();
        linkSeconds.push((tLast - tStart) / 1000);
        knotSeconds.push((now - tLast) / 1000);
        knots.push(k.endStep);
        flops += k.flops;
        final = k.weights;
      },
    },
  );
  const fin = final as ModelWeights | null;
  if (res.status !== 'succeeded' || !fin) throw new Error(`training ended with ${res.status}`);
  const val = perToken(await nllBatches(fin, data.val));
  const testBatches = await nllBatches(fin, data.test);
  const r: Run = {
    key, domain: d, method: m, seed, lr, steps: res.plan.totalSteps, losses, knots, flops, valNll: val, testNll: perToken(testBatches), testBatches,
    trainSeconds: res.seconds, linkSeconds, knotSeconds, code: CODE,
  };
  appendFileSync(runsFile, JSON.stringify(r) + '\n');
  runs.push(r);
  console.log(`${d} ${m} seed ${seed} lr ${lr}: val ${r.valNll.toFixed(4)} test ${r.testNll.toFixed(4)} knots [${knots.join(',')}] ${res.seconds.toFixed(0)} s`);
  return r;
}

// ------------------------------------------------------------------------------------ stats
/** Two-sided 97.5 % t quantiles for df 1..30. */
const T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.16, 2.145, 2.131, 2.12, 2.11, 2.101, 2.093, 2.086, 2.08, 2.074, 2.069, 2.064, 2.06, 2.056, 2.052, 2.048, 2.045, 2.042];
/** Student t survival (two-sided p) by numerical integration of the density (df small, |t| moderate). */
function pTwoSided(t: number, df: number): number {
  if (!Number.isFinite(t)) return 0;
  const lg = (x: number): number => {
    // Lanczos log-gamma
    const c = [76.18009172947146, -86.50532032941677, 24.01409824083091, -1.231739572450155, 0.1208650973866179e-2, -0.5395239384953e-5];
    let y = x;
    const tmp = x + 5.5 - (x + 0.5) * Math.log(x + 5.5);
    let ser = 1.000000000190015;
    for (const k of c) ser += k / ++y;
    return -tmp + Math.log((2.5066282746310005 * ser) / x);
  };
  const norm = Math.exp(lg((df + 1) / 2) - lg(df / 2)) / Math.sqrt(df * Math.PI);
  const f = (x: number) => norm * Math.pow(1 + (x * x) / df, -(df + 1) / 2);
  const a = Math.abs(t);
  const N = 20000;
  const hi = a + 200;
  let s = 0;
  for (let i = 0; i < N; i++) {
    const x = a + ((i + 0.5) * (hi - a)) / N;
    s += f(x);
  }
  return Math.min(1, 2 * s * ((hi - a) / N));
}
function paired(diffs: number[]): { mean: number; sd: number; lo: number; hi: number; p: number; n: number } {
  const n = diffs.length;
  const m = mean(diffs);
  const sd = n > 1 ? std(diffs) : NaN;
  const half = n > 1 ? T975[Math.min(n - 2, T975.length - 1)]! * (sd / Math.sqrt(n)) : NaN;
  return { mean: m, sd, lo: m - half, hi: m + half, p: n > 1 ? pTwoSided(m / (sd / Math.sqrt(n)), n - 1) : NaN, n };
}
/** 95 % paired bootstrap interval of the per-token NLL difference over test batches (one seed: test-set noise only). */
function bootstrap(a: [number, number][], b: [number, number][], reps = 2000): [number, number] {
  let s = 12345;
  const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const ds: number[] = [];
  for (let r = 0; r < reps; r++) {
    let sa = 0, sb = 0, n = 0;
    for (let i = 0; i < a.length; i++) {
      const j = Math.floor(rnd() * a.length);
      sa += a[j]![0];
      sb += b[j]![0];
      n += a[j]![1];
    }
    ds.push((sa - sb) / n);
  }
  ds.sort((x, y) => x - y);
  return [ds[Math.floor(0.025 * reps)]!, ds[Math.floor(0.975 * reps)]!];
}

// ------------------------------------------------------------------------------------ main
const t0 = performance.now();
const datasets = new Map<Domain, { train: Example[]; val: ReturnType<typeof encodeAll>; test: ReturnType<typeof encodeAll>; nTrain: number; valTok: number; testTok: number }>();
for (const d of opt.domains) {
  const raw = domainData(d, tok);
  const train = raw.train.slice(0, opt.steps * BATCH); // one epoch of exactly `steps` steps
  if (train.length < opt.steps * BATCH) throw new Error(`${d}: only ${raw.train.length} training windows for ${opt.steps} steps`);
  const val = encodeAll(tok, raw.val, MAX_LEN, 'val');
  const test = encodeAll(tok, raw.test, MAX_LEN, 'test');
  datasets.set(d, { train, val, test, nTrain: train.length, valTok: val.reduce((a, r) => a + r.lossTokens, 0), testTok: test.reduce((a, r) => a + r.lossTokens, 0) });
  console.log(`${d}: ${train.length} train windows, ${val.length} val (${datasets.get(d)!.valTok} tokens), ${test.length} test (${datasets.get(d)!.testTok} tokens)`);
}
const chosen = new Map<string, number>();
const baseNll = new Map<Domain, number>();
for (const d of opt.domains) {
  const data = datasets.get(d)!;
  baseNll.set(d, perToken(await nllBatches(base.weights, data.test)));
  // Grid on seed 0, then the other seeds at the chosen LR, seed by seed (a cut-short run still has whole seeds).
  if (!opt.reportOnly) for (const m of opt.methods) for (const lr of opt.lrs) await runOne(d, m, 0, lr, data);
  for (const m of opt.methods) {
    const g = opt.lrs.map((lr) => runs.find((r) => r.key === keyOf(d, m, 0, lr))).filter((r) => r !== undefined);
    if (g.length) chosen.set(`${d}|${m}`, g.reduce((a, b) => (b.valNll < a.valNll ? b : a)).lr);
  }
  if (!opt.reportOnly) for (let s = 1; s < opt.seeds; s++) for (const m of opt.methods) await runOne(d, m, s, chosen.get(`${d}|${m}`)!, data);
  report();
}
report();
console.log(`done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);

function report(): void {
  const lines: string[] = [`# Adaptation experiment (bench/adapt.ts)`, '', `Code ${CODE}; ${opt.steps} steps of batch ${BATCH} × ≤ ${MAX_LEN} tokens; LR grid ${opt.lrs.join(', ')} chosen on validation (seed 0); seeds ${opt.seeds}; auto: window ${opt.autoWindow}, threshold ${opt.autoThreshold}, min link ${Math.max(2, Math.floor(opt.steps / 8))} steps.`, ''];
  for (const d of opt.domains) {
    const data = datasets.get(d)!;
    const sel = (m: Method) => runs.filter((r) => r.domain === d && r.method === m && r.lr === chosen.get(`${d}|${m}`) && r.key.endsWith(`|T${opt.steps}|v${opt.nVal}|t${opt.nTest}${autoTag(m)}`)).sort((a, b) => a.seed - b.seed);
    const ref = sel('lora8');
    lines.push(`## ${d}: ${data.nTrain} training windows, validation ${data.valTok} tokens, test ${data.testTok} tokens; base model test NLL ${baseNll.get(d)?.toFixed(4)}`, '');
    const rows: string[][] = [];
    for (const m of opt.methods) {
      const rs = sel(m);
      if (rs.length === 0) continue;
      const nll = rs.map((r) => r.testNll);
      const seeds = rs.map((r) => r.seed).filter((s) => ref.some((x) => x.seed === s));
      const dif = seeds.map((s) => rs.find((r) => r.seed === s)!.testNll - ref.find((r) => r.seed === s)!.testNll);
      const p = paired(dif);
      const r0 = rs.find((r) => r.seed === 0);
      const l0 = ref.find((r) => r.seed === 0);
      const bs = r0 && l0 && m !== 'lora8' ? bootstrap(r0.testBatches, l0.testBatches) : null;
      const knots = rs.map((r) => r.knots.slice(0, -1).join('/') || '–').join('; ');
      const f = (x: number) => (Number.isFinite(x) ? (x >= 0 ? '+' : '') + x.toFixed(4) : '–');
      rows.push([
        m, String(chosen.get(`${d}|${m}`)), String(rs.length), `${mean(nll).toFixed(4)} ± ${rs.length > 1 ? std(nll).toFixed(4) : '–'}`,
        m === 'lora8' ? '–' : f(p.mean), m === 'lora8' ? '–' : `[${f(p.lo)}, ${f(p.hi)}]`, m === 'lora8' || !Number.isFinite(p.p) ? '–' : p.p.toFixed(3),
        bs ? `[${f(bs[0])}, ${f(bs[1])}]` : '–', (mean(rs.map((r) => r.flops)) / 1e12).toFixed(3), knots,
      ]);
    }
    lines.push(mdTable(['method', 'LR', 'seeds', 'test NLL/token (mean ± std)', 'Δ vs LoRA r8', '95 % CI of Δ (paired t, seeds)', 'p', '95 % CI of Δ, seed 0, test-set only (bootstrap)', 'train TFLOPs', 'knots (per seed)'], rows), '');
    const grid = opt.methods.map((m) => [m, ...opt.lrs.map((lr) => runs.find((r) => r.key === keyOf(d, m, 0, lr))?.valNll.toFixed(4) ?? '–')]);
    lines.push(`Validation NLL of the LR grid (seed 0):`, '', mdTable(['method', ...opt.lrs.map(String)], grid), '');
    const ks = runs.filter((r) => r.domain === d && r.knotSeconds.length > 1);
    const knotShare = ks.flatMap((r) => r.knotSeconds.slice(0, -1).map((k, i) => k / r.linkSeconds[i]!));
    if (knotShare.length) lines.push(`Knot time / link time over ${knotShare.length} internal knots: mean ${(100 * mean(knotShare)).toFixed(2)} %, max ${(100 * Math.max(...knotShare)).toFixed(2)} %.`, '');
    // Training loss (seed 0, chosen LR), smoothed over 5 steps, knots marked.
    const series: Series[] = [];
    const markers: { x: number; color: string; label?: string }[] = [];
    opt.methods.forEach((m, i) => {
      const r = sel(m).find((x) => x.seed === 0);
      if (!r) return;
      const sm = r.losses.map((_, j) => mean(r.losses.slice(Math.max(0, j - 4), j + 1)));
      series.push({ name: m, color: PALETTE[i % PALETTE.length]!, points: sm.map((y, j) => ({ x: j + 1, y })), dashed: m.startsWith('lora') });
      for (const k of r.knots.slice(0, -1)) markers.push({ x: k, color: PALETTE[i % PALETTE.length]! });
    });
    if (series.length) {
      writeFileSync(join(opt.out, `loss-${d}.svg`), lineChart({ title: `${d}: training loss (seed 0, 5-step mean), knots marked`, xLabel: 'step', yLabel: 'loss (nats/token)', series, markers, integerX: true }));
      lines.push(`![training loss, ${d}](loss-${d}.svg)`, '');
    }
  }
  writeFileSync(join(opt.out, arg('report', 'results.md')), lines.join('\n'));
}
