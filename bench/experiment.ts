// The COLA paper's evaluation protocol (MeZO-style) on stories260K, run on demand:
//
//   bun run bench/experiment.ts [--tasks sst2,rte,...] [--seeds 5] [--train 1000 --val 500 --test 1000]
//                               [--epochs 5 | --steps-scale s] [--lrs 1e-3,3e-3,1e-2] [--quick]   (--help: all options)
//
// Per task and seed: seeded train / validation / test sets (src/eval/tasks.ts), zero-shot accuracy
// of the base model on the test set, then for every method and learning rate of the grid one
// training run of `epochs` epochs (same total steps for every method, i.e. equal compute):
//   lora      M = 1 (plain LoRA), r = 8
//   cola2     M = 2, the paper's split: link 1 = the first 3/5 of the steps (epochs 1–3), link 2 = the rest
//   cola3     M = 3, equal split of the steps ({links: 3})
//   stepdown  M = 2 with the cola2 split and ranks (8, 4)
// LoRA on q and v, alpha 16, AdamW (β 0.9/0.999, no weight decay), linear LR decay over the whole
// run, no warm-up, gradient clipping at 1, batch 8, sequences ≤ 128 tokens, loss on the answer only.
// The final version (last knot) of each run is scored on validation and test by the summed
// log-likelihood of each candidate answer (bench/lib/score.ts).
// Learning rate: chosen per (task, method) as the grid value with the highest validation accuracy
// averaged over all seeds (ties: lower mean validation NLL of the correct answer, then the smaller
// LR); the reported test accuracy is that LR's, mean ± std over the seeds.
// Outputs in --out (default bench/out): results.md, results.csv, runs.jsonl (one line per run; a
// rerun with the same settings reuses them unless --fresh), loss-<task>.svg (seed 0 training loss
// at the chosen LR, knots marked), accuracy-vs-chain.svg, throughput.json.
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../src/gpu/engine.ts';
import { loadBundledModel } from '../src/model/registry.ts';
import { TransformerModel, bucketLen } from '../src/model/transformer.ts';
import { encodeAll, trainCola, planFor, type TrainConfig } from '../src/cola/trainer.ts';
import { resolveLoraSpec } from '../src/cola/lora.ts';
import { batchAt, type Example, type Tokenizer } from '../src/cola/data.ts';
import type { ChainConfig } from '../src/cola/schedule.ts';
import { defaultTasksDir, loadTask, toTrainingExample, type TaskName } from '../src/eval/tasks.ts';

import type { ModelWeights } from '../src/model/weights.ts';
import { parseArgs, type Method, type Options } from './lib/args.ts';
import { scoreExamples } from './lib/score.ts';
import { csv, mdTable, mean, pm, signed, smooth, std } from './lib/stats.ts';
import { lineChart, PALETTE, type Series } from './lib/svg.ts';

/** The code the numbers come from: HEAD, plus "+dirty" when src/ has uncommitted changes (a shared working tree). */
function codeVersion(): string {
  const run = (args: string[]) => new TextDecoder().decode(Bun.spawnSync(['git', ...args], { cwd: join(import.meta.dir, '..') }).stdout).trim();
  try {
    return `${run(['rev-parse', '--short', 'HEAD'])}${run(['status', '--porcelain', '--', 'src']) ? '+dirty' : ''}`;
  } catch {
    return 'unknown';
  }
}
const CODE = codeVersion();

/** PyTorch CPU reference (measured outside this repository; no PyTorch here): stories260K, LoRA r=8 on q,v, AdamW, batch 8 × 128. */
const PYTORCH_TOKENS_PER_S = 4100;

const METHOD_LABEL: Record<Method, string> = {
  lora: 'LoRA (M=1)',
  cola2: 'COLA (M=2)',
  cola3: 'COLA (M=3)',
  stepdown: 'COLA step-down (8,4)',
};
const METHOD_COLOR: Record<Method, string> = { lora: '#1f77b4', cola2: '#d62728', cola3: '#2ca02c', stepdown: '#9467bd' };

interface RunRecord {
  key: string;
  task: TaskName;
  seed: number;
  method: Method;
  lr: number;
  links: { startStep: number; endStep: number; rank: number; flops: number; linkSeconds: number; knotSeconds: number }[];
  totalSteps: number;
  losses: number[];
  valAcc: number;
  valNll: number;
  testAcc: number;
  trainSeconds: number;
  stepSeconds: number;
  realTokens: number;
  paddedTokens: number;
  evalSeconds: number;
  nTrain: number;
  nVal: number;
  nTest: number;
  load: number;
  /** codeVersion() of the process that ran it (absent in records written before it was recorded). */
  code?: string;
}

interface ZeroShotRecord {
  key: string;
  task: TaskName;
  seed: number;
  zeroShot: true;
  testAcc: number;
  valAcc: number;
  nTest: number;
}

const tag = (o: Options) => `n${o.nTrain}-${o.nVal}-${o.nTest}|e${o.epochs}|b${o.batchSize}|L${o.maxSeqLen}`;
const runKey = (o: Options, task: string, seed: number, method: string, lr: number) => `${task}|s${seed}|${method}|lr${lr}|${tag(o)}`;
const zsKey = (o: Options, task: string, seed: number) => `${task}|s${seed}|zeroshot|${tag(o)}`;

function chainFor(method: Method, total: number): ChainConfig {
  const first = Math.min(total - 1, Math.max(1, Math.round((total * 3) / 5)));
  switch (method) {
    case 'lora':
      return { links: 1 };
    case 'cola3':
      return { links: 3 };
    case 'cola2':
      return { links: [{ steps: first, rank: 8 }, { steps: total - first, rank: 8 }] };
    case 'stepdown':
      return { links: [{ steps: first, rank: 8 }, { steps: total - first, rank: 4 }] };
  }
}

function baseConfig(o: Options, weights: ModelWeights, seed: number, lr: number): TrainConfig {
  return {
    lora: resolveLoraSpec(weights.config, { targets: ['q', 'v'], rank: 8, alpha: 16, bias: false }),
    chain: { links: 1 },
    optimizer: { name: 'adamw', lr, weightDecay: 0, betas: [0.9, 0.999], eps: 1e-8, momentum: 0 },
    schedule: { name: 'linear', warmupSteps: 0 },
    epochs: o.epochs,
    batchSize: o.batchSize,
    maxSeqLen: o.maxSeqLen,
    seed,
    shuffle: true,
    maxGradNorm: 1,
    evalEveryKnot: false,
  };
}

/** Padded tokens (B × bucketed T) of every step, recomputed from the trainer's own batching functions. */
function paddedTokensOf(tok: Tokenizer, train: Example[], cfg: TrainConfig, total: number): number {
  const rows = encodeAll(tok, train, cfg.maxSeqLen, 'train');
  const ec = { n: rows.length, batchSize: cfg.batchSize, epochs: cfg.epochs, seed: cfg.seed, shuffle: cfg.shuffle };
  let padded = 0;
  for (let s = 0; s < total; s++) {
    const { indices } = batchAt(ec, s);
    padded += indices.length * bucketLen(Math.max(...indices.map((i) => rows[i]!.ids.length)), cfg.maxSeqLen);
  }
  return padded;
}

interface TimedTrain {
  finalWeights: ModelWeights;
  losses: number[];
  links: RunRecord['links'];
  totalSteps: number;
  tokens: number;
  seconds: number;
  stepSeconds: number;
  stepTimes: number[];
}

async function timedTrain(e: Engine, base: { weights: ModelWeights; tokenizer: Tokenizer }, train: Example[], cfg: TrainConfig): Promise<TimedTrain> {
  const losses: number[] = [];
  const stepTimes: number[] = [];
  const links: RunRecord['links'] = [];
  let final: ModelWeights | null = null;
  let tLinkStart = 0;
  let tLast = 0;
  let stepSeconds = 0;
  const res = await trainCola(
    { e, weights: base.weights, tokenizer: base.tokenizer, train, config: cfg },
    {
      onLinkStart: () => {
        tLinkStart = tLast = performance.now();
      },
      onStep: (s) => {
        const now = performance.now();
        stepTimes.push((now - tLast) / 1000);
        stepSeconds += (now - tLast) / 1000;
        tLast = now;
        losses.push(s.loss);
        if (!Number.isFinite(s.loss)) throw new Error(`non-finite loss at step ${s.step}`);
      },
      onKnot: async (k) => {
        const now = performance.now();
        links.push({ startStep: k.startStep, endStep: k.endStep, rank: k.rank, flops: k.flops, linkSeconds: (tLast - tLinkStart) / 1000, knotSeconds: (now - tLast) / 1000 });
        final = k.weights;
      },
    },
  );
  if (res.status !== 'succeeded' || !final) throw new Error(`training ended with status ${res.status}`);
  return { finalWeights: final, losses, links, totalSteps: res.plan.totalSteps, tokens: res.tokens, seconds: res.seconds, stepSeconds, stepTimes };
}

// ------------------------------------------------------------------------------------ report

interface Selected {
  lr: number;
  testAccs: number[];
  valMean: number;
  seeds: number;
  flops: number;
}

function selectLr(runs: RunRecord[], task: TaskName, method: Method, o: Options): { sel: Selected | null; grid: { lr: number; val: number; nll: number; test: number; n: number }[] } {
  const rs = runs.filter((r) => r.task === task && r.method === method);
  // Only seeds that have every LR of the grid take part, so the means are comparable.
  const seeds = o.seeds.filter((s) => o.lrs.every((lr) => rs.some((r) => r.seed === s && r.lr === lr)));
  const grid = o.lrs.map((lr) => {
    const g = rs.filter((r) => r.lr === lr && seeds.includes(r.seed));
    return { lr, val: mean(g.map((r) => r.valAcc)), nll: mean(g.map((r) => r.valNll)), test: mean(g.map((r) => r.testAcc)), n: g.length };
  });
  if (!seeds.length) return { sel: null, grid };
  const best = [...grid].sort((a, b) => b.val - a.val || a.nll - b.nll || a.lr - b.lr)[0]!;
  const chosen = rs.filter((r) => r.lr === best.lr && seeds.includes(r.seed));
  return {
    sel: { lr: best.lr, testAccs: chosen.map((r) => r.testAcc), valMean: best.val, seeds: seeds.length, flops: mean(chosen.map((r) => r.links.reduce((a, l) => a + l.flops, 0))) },
    grid,
  };
}

/** Test accuracy of always answering the training set's most frequent label (a floor for "learned the prior only"). */
function majorityAcc(o: Options, task: TaskName, seed: number): number {
  const sp = loadTask(task, { dir: defaultTasksDir(), seed, nTrain: o.nTrain, nVal: o.nVal, nTest: o.nTest });
  const counts = new Map<number, number>();
  for (const x of sp.train) counts.set(x.label, (counts.get(x.label) ?? 0) + 1);
  const maj = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0])[0]![0];
  return sp.test.filter((x) => x.label === maj).length / sp.test.length;
}

function writeReport(o: Options, runs: RunRecord[], zs: ZeroShotRecord[], throughput: Throughput | null): void {
  const header = ['task', 'majority label', 'zero-shot', ...o.methods.map((m) => METHOD_LABEL[m])];
  const mdRows: string[][] = [];
  const csvRows: (string | number)[][] = [];
  const gridRows: string[][] = [];
  const avg: Record<string, number[]> = {};
  const chainPoints: Record<string, { M: number; mean: number; std: number }[]> = {};
  for (const task of o.tasks) {
    const z = zs.filter((r) => r.task === task && o.seeds.includes(r.seed)).map((r) => r.testAcc);
    const seedsWith = o.seeds.filter((sd) => zs.some((r) => r.task === task && r.seed === sd) || runs.some((r) => r.task === task && r.seed === sd));
    const maj = seedsWith.map((sd) => majorityAcc(o, task, sd));
    const row = [task, pm(maj), pm(z)];
    (avg.maj ??= []).push(mean(maj));
    (avg.zero ??= []).push(mean(z));
    csvRows.push([task, 'majority-label', '', maj.length, (100 * mean(maj)).toFixed(2), (100 * std(maj)).toFixed(2), '', '', '', '', maj.map((x) => (100 * x).toFixed(2)).join(' ')]);
    csvRows.push([task, 'zero-shot', '', z.length, (100 * mean(z)).toFixed(2), (100 * std(z)).toFixed(2), '', '', '', '', z.map((x) => (100 * x).toFixed(2)).join(' ')]);
    const lora = selectLr(runs, task, 'lora', o).sel;
    for (const m of o.methods) {
      const { sel, grid } = selectLr(runs, task, m, o);
      gridRows.push([task, METHOD_LABEL[m], ...grid.map((g) => (g.n ? `${(100 * g.val).toFixed(1)} / ${(100 * g.test).toFixed(1)}` : '—')), sel ? String(sel.lr) : '—']);
      if (!sel) {
        row.push('—');
        continue;
      }
      const mu = mean(sel.testAccs);
      const rel = lora ? ((mu - mean(lora.testAccs)) / mean(lora.testAccs)) * 100 : NaN;
      const flopsRel = lora ? sel.flops / lora.flops : NaN;
      (avg[m] ??= []).push(mu);
      row.push(`${pm(sel.testAccs)}${m === 'lora' ? '' : ` (${signed(rel, 1, '%')})`}`);
      csvRows.push([task, m, sel.lr, sel.seeds, (100 * mu).toFixed(2), (100 * std(sel.testAccs)).toFixed(2), (100 * sel.valMean).toFixed(2), Number.isFinite(rel) ? rel.toFixed(2) : '', sel.flops.toExponential(4), Number.isFinite(flopsRel) ? flopsRel.toFixed(4) : '', sel.testAccs.map((x) => (100 * x).toFixed(2)).join(' ')]);
      const M = m === 'lora' ? 1 : m === 'cola2' ? 2 : m === 'cola3' ? 3 : 0;
      if (M) (chainPoints[task] ??= []).push({ M, mean: mu, std: std(sel.testAccs) });
    }
    const nSeeds = Math.max(0, ...o.methods.map((m) => selectLr(runs, task, m, o).sel?.seeds ?? 0)) || z.length;
    row[0] = `${task} (${nSeeds} seed${nSeeds === 1 ? '' : 's'})`;
    mdRows.push(row);
  }
  if (o.tasks.length > 1) {
    const loraAvg = mean(avg.lora ?? []);
    mdRows.push([
      '**average**',
      (100 * mean(avg.maj ?? [])).toFixed(1),
      (100 * mean(avg.zero ?? [])).toFixed(1),
      ...o.methods.map((m) => {
        const a = avg[m];
        if (!a || a.length !== o.tasks.length) return '—';
        const mu = mean(a);
        return `${(100 * mu).toFixed(1)}${m === 'lora' ? '' : ` (${signed(((mu - loraAvg) / loraAvg) * 100, 1, '%')})`}`;
      }),
    ]);
  }
  const seedsDone = new Set(runs.map((r) => r.seed)).size;
  let md = `# COLA vs LoRA on stories260K (MeZO protocol)\n\n`;
  md += `Settings: tasks ${o.tasks.join(', ')}; seeds ${o.seeds.join(', ')}; up to ${o.nTrain} train / ${o.nVal} validation / ${o.nTest} test examples per task; `;
  md += `${o.epochs} epochs, batch ${o.batchSize}, max ${o.maxSeqLen} tokens; LR grid {${o.lrs.join(', ')}}; LoRA r=8 (step-down: 8 then 4), alpha 16, q and v, AdamW, linear decay, clip 1.\n`;
  md += `${runs.length} training runs over ${seedsDone} seed(s) in this report.\n\n`;
  md += `## Test accuracy (%), mean ± std over seeds, at the LR chosen on validation; (relative gain vs LoRA)\n\n`;
  md += mdTable(header, mdRows);
  md += `\nMajority label: always answering the most frequent label of the run's training set (same test sets).\n`;
  md += `LR choice per (task, method): highest validation accuracy averaged over the seeds (ties: lower validation NLL, then smaller LR).\n`;
  const nTests = [...new Set(runs.map((r) => r.nTest))];
  if (nTests.length) {
    md += `Noise scale: one run's test accuracy on ${nTests.join('/')} examples has a binomial standard error of about `;
    md += `${nTests.map((n) => (100 * Math.sqrt(0.25 / n)).toFixed(1)).join('/')} points at 50% accuracy; differences smaller than that are not evidence either way.\n`;
  }
  md += `\n`;
  md += `## Validation / test accuracy (%) per learning rate (mean over seeds)\n\n`;
  md += mdTable(['task', 'method', ...o.lrs.map((lr) => `lr ${lr}: val / test`), 'chosen'], gridRows);
  md += `\n## Training FLOPs relative to LoRA (chosen LR)\n\n`;
  md += mdTable(['task', 'method', 'FLOPs', '× LoRA'], csvRows.filter((r) => r[1] !== 'zero-shot' && r[1] !== 'majority-label').map((r) => [String(r[0]), METHOD_LABEL[r[1] as Method], String(r[8]), String(r[9])]));
  if (throughput) md += `\n## Training throughput\n\n${throughputTable(throughput, runs)}`;
  writeFileSync(join(o.outDir, 'results.md'), md);
  writeFileSync(join(o.outDir, 'results.csv'), csv(['task', 'method', 'lr', 'seeds', 'test_acc_mean', 'test_acc_std', 'val_acc_mean', 'rel_gain_vs_lora_pct', 'train_flops', 'flops_vs_lora', 'test_acc_per_seed'], csvRows));

  // Loss curves: first seed, chosen LR, one chart per task, knots marked.
  for (const task of o.tasks) {
    const series: Series[] = [];
    const markers: { x: number; color: string; label?: string }[] = [];
    let seed = -1;
    for (const m of o.methods) {
      const sel = selectLr(runs, task, m, o).sel;
      const lr = sel?.lr ?? o.lrs[0];
      const r = runs.find((x) => x.task === task && x.method === m && x.lr === lr && (seed < 0 || x.seed === seed)) ?? runs.find((x) => x.task === task && x.method === m);
      if (!r) continue;
      seed = r.seed;
      const w = Math.max(1, Math.round(r.totalSteps / 50));
      series.push({ name: `${METHOD_LABEL[m].replace('COLA step-down', 'step-down')}, lr ${r.lr}`, color: METHOD_COLOR[m], points: smooth(r.losses, w).map((y, i) => ({ x: i + 1, y })) });
      for (const l of r.links.slice(0, -1)) markers.push({ x: l.endStep, color: METHOD_COLOR[m], label: `knot ${m}` });
    }
    if (series.length) {
      writeFileSync(
        join(o.outDir, `loss-${task}.svg`),
        lineChart({ title: `${task}: training loss (seed ${seed}, moving average), knots dashed`, xLabel: 'optimizer step', yLabel: 'loss (answer tokens)', series, markers, integerX: true }),
      );
    }
  }
  // Accuracy against chain length.
  const acc: Series[] = Object.entries(chainPoints).map(([task, pts], i) => ({
    name: task,
    color: PALETTE[i % PALETTE.length]!,
    dots: true,
    points: pts.sort((a, b) => a.M - b.M).map((p) => ({ x: p.M, y: 100 * p.mean, err: 100 * p.std })),
  }));
  if (acc.length) {
    writeFileSync(
      join(o.outDir, 'accuracy-vs-chain.svg'),
      lineChart({ title: 'Test accuracy vs chain length M (equal total steps)', xLabel: 'chain length M (1 = LoRA)', yLabel: 'test accuracy (%)', series: acc, xTicks: [1, 2, 3] }),
    );
  }
}

// ------------------------------------------------------------------------------------ throughput

interface Throughput {
  steps: number;
  measuredSteps: number;
  tokensPerStep: number;
  tokensPerSecond: number;
  medianStepSeconds: number;
  knotSeconds: number[];
  linkSeconds: number[];
  load: number[];
  code?: string;
}

/** COLA (M = 3) training of stories260K at batch 8 × 128 (every row full), r = 8 on q, v, AdamW. */
async function throughputBench(e: Engine, base: { weights: ModelWeights; tokenizer: Tokenizer }, steps: number): Promise<Throughput> {
  const words = readFileSync(join(defaultTasksDir(), 'tinystories-demo/tinystories_val_head.txt'), 'utf8').split(/\s+/).filter(Boolean);
  const train: Example[] = [];
  for (let i = 0; i < 8 * steps; i++) train.push({ text: words.slice(i * 120, i * 120 + 120).join(' ') });
  const cfg = { ...baseConfig({ epochs: 1, batchSize: 8, maxSeqLen: 128 } as Options, base.weights, 0, 3e-3), chain: { links: 3 } };
  const rows = encodeAll(base.tokenizer, train, 128, 'throughput');
  if (rows.some((r) => r.ids.length !== 128)) throw new Error('throughput rows must fill 128 tokens');
  const l0 = loadavg()[0]!;
  const t = await timedTrain(e, base, train, cfg);
  // Exclude the first 2 steps (pipeline compilation on a cold cache).
  const measured = t.stepTimes.slice(2);
  const sorted = [...measured].sort((a, b) => a - b);
  return {
    steps,
    measuredSteps: measured.length,
    tokensPerStep: 8 * 128,
    tokensPerSecond: (measured.length * 8 * 128) / measured.reduce((a, b) => a + b, 0),
    medianStepSeconds: sorted[Math.floor(sorted.length / 2)]!,
    knotSeconds: t.links.map((l) => l.knotSeconds),
    linkSeconds: t.links.map((l) => l.linkSeconds),
    load: [l0, loadavg()[0]!],
    code: CODE,
  };
}

function throughputTable(t: Throughput, runs: RunRecord[]): string {
  const f = (x: number) => Math.round(x).toLocaleString('en-US');
  const rows: string[][] = [
    ['PyTorch CPU (OpenBLAS), ENVIRONMENT.md', 'stories260K, LoRA r=8 q,v, AdamW, batch 8 × 128', f(PYTORCH_TOKENS_PER_S), '1.00×'],
    ['this engine, lavapipe (WebGPU)', `same, COLA M=3, ${t.measuredSteps} steps (real = padded)`, f(t.tokensPerSecond), `${(t.tokensPerSecond / PYTORCH_TOKENS_PER_S).toFixed(2)}×`],
  ];
  rows[1]![1] += `, code ${t.code ?? 'unrecorded'}`;
  // The protocol runs' own throughput, per code version (the engine changed while runs were made).
  const groups = new Map<string, RunRecord[]>();
  for (const r of runs) groups.set(r.code ?? 'unrecorded', [...(groups.get(r.code ?? 'unrecorded') ?? []), r]);
  for (const [code, rs] of groups) {
    const real = rs.reduce((a, r) => a + r.realTokens, 0);
    const padded = rs.reduce((a, r) => a + r.paddedTokens, 0);
    const secs = rs.reduce((a, r) => a + r.stepSeconds, 0);
    if (!(secs > 0)) continue;
    const what = `${rs.length} protocol runs (code ${code}, load ${mean(rs.map((r) => r.load)).toFixed(1)})`;
    rows.push([`this engine, ${what}, real tokens`, 'batch 8, bucketed lengths', f(real / secs), `${(real / secs / PYTORCH_TOKENS_PER_S).toFixed(2)}×`]);
    rows.push([`this engine, ${what}, padded tokens`, 'B × bucketed T actually computed', f(padded / secs), `${(padded / secs / PYTORCH_TOKENS_PER_S).toFixed(2)}×`]);
  }
  let s = mdTable(['implementation', 'setup', 'train tokens/s', 'vs PyTorch'], rows);
  const knotPct = t.knotSeconds.map((k, i) => (100 * k) / Math.max(1e-9, t.linkSeconds[i]!));
  s += `\nThroughput benchmark: median step ${t.medianStepSeconds.toFixed(3)} s; knot (merge + CPU snapshot read-back, no disk write) `;
  s += `${t.knotSeconds.map((k) => k.toFixed(3)).join(' / ')} s = ${knotPct.map((p) => p.toFixed(1)).join(' / ')}% of the link's time; `;
  s += `1-min load average ${t.load.map((x) => x.toFixed(1)).join(' → ')} on 2 shared cores.\n`;
  return s;
}

// ------------------------------------------------------------------------------------ main

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  mkdirSync(o.outDir, { recursive: true });
  const runsPath = join(o.outDir, 'runs.jsonl');
  const cached = new Map<string, RunRecord | ZeroShotRecord>();
  if (!o.fresh && existsSync(runsPath)) {
    for (const line of readFileSync(runsPath, 'utf8').split('\n')) if (line.trim()) {
      const r = JSON.parse(line);
      cached.set(r.key, r);
    }
  }
  const save = (r: RunRecord | ZeroShotRecord) => {
    cached.set(r.key, r);
    appendFileSync(runsPath, JSON.stringify(r) + '\n');
  };
  const e = await Engine.create();
  (globalThis as Record<symbol, unknown>)[Symbol.for('cola.bench.engine')] = e; // keep the device alive (ENVIRONMENT.md)
  const loaded = loadBundledModel();
  const base = { weights: loaded.weights, tokenizer: loaded.tokenizer as unknown as Tokenizer };
  const t0 = performance.now();
  const log = (s: string) => console.log(`[${((performance.now() - t0) / 1000).toFixed(0).padStart(5)}s] ${s}`);
  const runs = () => [...cached.values()].filter((r): r is RunRecord => !('zeroShot' in r) && r.key.endsWith(tag(o)) && o.tasks.includes(r.task) && o.methods.includes(r.method) && o.lrs.includes(r.lr) && o.seeds.includes(r.seed));
  const zs = () => [...cached.values()].filter((r): r is ZeroShotRecord => 'zeroShot' in r && r.key.endsWith(tag(o)));
  const tpPath = join(o.outDir, 'throughput.json');
  let tp: Throughput | null = existsSync(tpPath) ? JSON.parse(readFileSync(tpPath, 'utf8')) : null;

  if (o.throughputSteps > 0) {
    log(`throughput benchmark: ${o.throughputSteps} steps of 8 × 128 tokens, COLA M=3`);
    tp = await throughputBench(e, base, o.throughputSteps);
    writeFileSync(tpPath, JSON.stringify(tp, null, 2));
    log(`throughput ${tp.tokensPerSecond.toFixed(0)} tokens/s (PyTorch CPU ${PYTORCH_TOKENS_PER_S}): ${(tp.tokensPerSecond / PYTORCH_TOKENS_PER_S).toFixed(2)}×`);
  }

  if (!o.skipRuns) {
    const baseModel = TransformerModel.upload(e, base.weights);
    const scoreOpts = { maxSeqLen: o.maxSeqLen, rowsPerBatch: o.evalRows };
    for (const seed of o.seeds) {
      for (const task of o.tasks) {
        const sp = loadTask(task, { dir: defaultTasksDir(), seed, nTrain: o.nTrain, nVal: o.nVal, nTest: o.nTest });
        const train = sp.train.map(toTrainingExample);
        if (!cached.has(zsKey(o, task, seed))) {
          const te = await scoreExamples(e, baseModel, base.tokenizer, sp.test, scoreOpts);
          const va = await scoreExamples(e, baseModel, base.tokenizer, sp.validation, scoreOpts);
          save({ key: zsKey(o, task, seed), task, seed, zeroShot: true, testAcc: te.accuracy, valAcc: va.accuracy, nTest: sp.test.length });
          log(`${task} seed ${seed}: ${sp.train.length}/${sp.validation.length}/${sp.test.length} examples; zero-shot test ${(100 * te.accuracy).toFixed(1)}% (${te.rows} rows in ${te.seconds.toFixed(1)} s)`);
        }
        for (const method of o.methods) {
          for (const lr of o.lrs) {
            const key = runKey(o, task, seed, method, lr);
            if (cached.has(key)) continue;
            const cfg0 = baseConfig(o, base.weights, seed, lr);
            const total = planFor(cfg0, train.length).totalSteps;
            const cfg = { ...cfg0, chain: chainFor(method, total) };
            const load = loadavg()[0]!;
            const t = await timedTrain(e, base, train, cfg);
            const model = TransformerModel.upload(e, t.finalWeights);
            const va = await scoreExamples(e, model, base.tokenizer, sp.validation, scoreOpts);
            const te = await scoreExamples(e, model, base.tokenizer, sp.test, scoreOpts);
            model.free();
            const rec: RunRecord = {
              key, task, seed, method, lr,
              links: t.links,
              totalSteps: t.totalSteps,
              losses: t.losses,
              valAcc: va.accuracy,
              valNll: va.nllCorrect,
              testAcc: te.accuracy,
              trainSeconds: t.seconds,
              stepSeconds: t.stepSeconds,
              realTokens: t.tokens,
              paddedTokens: paddedTokensOf(base.tokenizer, train, cfg, t.totalSteps),
              evalSeconds: va.seconds + te.seconds,
              nTrain: sp.train.length, nVal: sp.validation.length, nTest: sp.test.length,
              load,
              code: CODE,
            };
            save(rec);
            log(`${task} seed ${seed} ${method} lr ${lr}: ${t.totalSteps} steps in ${t.seconds.toFixed(1)} s (${(t.tokens / t.stepSeconds).toFixed(0)} tok/s), loss ${t.losses[0]!.toFixed(2)} → ${mean(t.losses.slice(-5)).toFixed(2)}; val ${(100 * va.accuracy).toFixed(1)}% test ${(100 * te.accuracy).toFixed(1)}% (eval ${(va.seconds + te.seconds).toFixed(1)} s)`);
            writeReport(o, runs(), zs(), tp);
          }
        }
      }
    }
    baseModel.free();
  }
  writeReport(o, runs(), zs(), tp);
  log(`wrote ${join(o.outDir, 'results.md')}`);
  console.log(readFileSync(join(o.outDir, 'results.md'), 'utf8'));
}

await main();
