// On-demand matmul benchmark (not a test): `bun run bench:matmul`.
// GFLOP/s (2·M·K·N / time) for our kernel variants, tfjs-webgpu on the same Dawn device, and
// OpenBLAS through /usr/bin/python3 + numpy when present. Each figure is the median of several
// trials; a trial records `reps` back-to-back products and waits once (our engine: one submit +
// onSubmittedWorkDone; tfjs: data() of the last result), after a warm-up that also compiles.
// Prints a Markdown table and, last, one line of JSON with the ratios of our best variant.
// Options (env): BENCH_SHAPES="MxKxN,..."  BENCH_TRIALS=5  BENCH_SECONDS=0.4 (target time per trial)
//                BENCH_SIZES=uniform|override (how our kernels receive sizes; default both for sg)
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { getGpu } from '../src/gpu/context.ts';
import { Engine, type Tensor } from '../src/gpu/engine.ts';
import { availableMatmulVariants, defaultMatmulVariant, matmul, type MatmulVariant, type SizeMode } from '../src/gpu/ops/matmul.ts';
import { Rng } from '../src/util/rng.ts';

type Shape = [number, number, number]; // M, K, N
const SHAPES: Shape[] = (process.env.BENCH_SHAPES ?? '1024x1024x1024,512x768x768,512x768x3072,512x768x8,512x8x768')
  .split(',')
  .map((s) => s.split('x').map(Number) as Shape);
const TRIALS = Number(process.env.BENCH_TRIALS ?? 5);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 0.4);
const flops = ([M, K, N]: Shape) => 2 * M * K * N;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/**
 * CPU seconds used so far by this process's threads other than the main JS thread and Bun's own
 * pools: on lavapipe these are the driver's worker threads that execute the kernels (ours and
 * tfjs's alike). The build machines are shared, so wall-clock figures move with other people's load;
 * flops per worker-CPU-second × cores is a contention-independent estimate of the idle figure.
 */
function workerCpuSeconds(): number {
  let s = 0;
  for (const t of readdirSync('/proc/self/task')) {
    try {
      const st = readFileSync(`/proc/self/task/${t}/stat`, 'utf8');
      if (t === String(process.pid) || /\((JIT|Bun Pool|mi-scav|JSCWarm|bun:disk)/.test(st)) continue;
      const f = st.slice(st.indexOf(')') + 2).split(' ');
      s += (Number(f[11]) + Number(f[12])) / 100; // utime + stime, clock ticks (USER_HZ = 100)
    } catch {
      // thread exited
    }
  }
  return s;
}
const CORES = navigator.hardwareConcurrency ?? 2;

interface Timing {
  wall: number; // median seconds per rep
  cpu: number; // worker CPU seconds per rep over all trials
}

/** Median seconds per rep of `run(reps)` (which must wait for completion), after a warm-up. */
async function timeIt(run: (reps: number) => Promise<void>): Promise<Timing> {
  let t = performance.now();
  await run(1); // warm-up + compile
  t = performance.now();
  await run(1);
  const once = (performance.now() - t) / 1000;
  const reps = Math.max(1, Math.min(200, Math.round(SECONDS / Math.max(once, 1e-5))));
  const per: number[] = [];
  const c0 = workerCpuSeconds();
  for (let i = 0; i < TRIALS; i++) {
    t = performance.now();
    await run(reps);
    per.push((performance.now() - t) / 1000 / reps);
  }
  return { wall: median(per), cpu: (workerCpuSeconds() - c0) / (TRIALS * reps) };
}

type Result = { wall: number; cpuEst: number } | null;
const toResult = (shape: Shape, t: Timing): Result => ({ wall: flops(shape) / t.wall / 1e9, cpuEst: t.cpu > 0 ? (flops(shape) / t.cpu / 1e9) * CORES : NaN });

async function benchOurs(e: Engine, shape: Shape, variant: MatmulVariant, sizes: SizeMode, transB = false): Promise<Result> {
  const [M, K, N] = shape;
  const rng = new Rng(1);
  const a = e.upload(rng.uniformArray(M * K), [M, K]);
  const b = e.upload(rng.uniformArray(K * N), transB ? [N, K] : [K, N]);
  const c = e.empty([M, N]);
  const s = await timeIt(async (reps) => {
    for (let i = 0; i < reps; i++) matmul(e, a, b, { out: c, variant, sizes, transB });
    await e.sync();
  });
  for (const t of [a, b, c] as Tensor[]) t.free();
  return toResult(shape, s);
}

async function benchTfjs(shape: Shape): Promise<Result> {
  try {
    const ctx = await getGpu();
    // tfjs-webgpu asks navigator.gpu for an adapter: hand it the process's Dawn GPU object.
    Object.defineProperty(globalThis, 'navigator', { value: { gpu: ctx.gpu, userAgent: 'bun' }, configurable: true, writable: true });
    const tf = await import('@tensorflow/tfjs-core');
    await import('@tensorflow/tfjs-backend-webgpu');
    if (tf.getBackend() !== 'webgpu') {
      if (!(await tf.setBackend('webgpu'))) return null;
      await tf.ready();
    }
    const [M, K, N] = shape;
    const rng = new Rng(1);
    const a = tf.tensor2d(rng.uniformArray(M * K), [M, K]);
    const b = tf.tensor2d(rng.uniformArray(K * N), [K, N]);
    const s = await timeIt(async (reps) => {
      let c: ReturnType<typeof tf.matMul> | null = null;
      for (let i = 0; i < reps; i++) {
        c?.dispose();
        c = tf.matMul(a, b);
      }
      await c!.data();
      c!.dispose();
    });
    a.dispose();
    b.dispose();
    return toResult(shape, s);
  } catch (err) {
    console.error(`tfjs-webgpu unavailable: ${(err as Error).message}`);
    return null;
  }
}

const PY = `
import json, sys, time
import numpy as np
shapes = json.loads(sys.argv[1]); trials = int(sys.argv[2]); target = float(sys.argv[3]); cores = int(sys.argv[4])
out = []
for M, K, N in shapes:
    rng = np.random.default_rng(1)
    a = rng.random((M, K), dtype=np.float32) - 0.5
    b = rng.random((K, N), dtype=np.float32) - 0.5
    a @ b
    t = time.perf_counter(); a @ b; once = time.perf_counter() - t
    reps = max(1, min(200, round(target / max(once, 1e-5))))
    per = []
    c0 = time.process_time()
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps): a @ b
        per.append((time.perf_counter() - t) / reps)
    cpu = (time.process_time() - c0) / (trials * reps)
    per.sort()
    out.append([2 * M * K * N / per[len(per) // 2] / 1e9, 2 * M * K * N / cpu / 1e9 * cores])
cfg = ''
try:
    from threadpoolctl import threadpool_info
    cfg = ';'.join(f"{i.get('internal_api')} {i.get('num_threads')}t" for i in threadpool_info())
except Exception:
    pass
print(json.dumps({'gflops': out, 'numpy': np.__version__, 'blas': cfg}))
`;

function benchOpenBlas(shapes: Shape[]): { res: Result[]; note: string } | null {
  const env = { ...process.env };
  // As ENVIRONMENT.md notes, these variables (set for other tools) mis-tune OpenBLAS: unset for this command only.
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const r = spawnSync('/usr/bin/python3', ['-c', PY, JSON.stringify(shapes), String(TRIALS), String(SECONDS), String(CORES)], { env, encoding: 'utf8' });
  if (r.status !== 0) {
    console.error(`numpy/OpenBLAS unavailable: ${r.error?.message ?? r.stderr.trim().split('\n').at(-1)}`);
    return null;
  }
  const j = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
  return { res: j.gflops.map(([wall, cpuEst]: number[]) => ({ wall, cpuEst })), note: `numpy ${j.numpy}${j.blas ? ` (${j.blas})` : ''}` };
}

const e = await Engine.create();
const variants = availableMatmulVariants(e);
const best0 = defaultMatmulVariant(e);
const sizeModes = (process.env.BENCH_SIZES?.split(',') as SizeMode[] | undefined) ?? ['uniform', 'override'];
console.error(`device: ${e.ctx.info.description} (software: ${e.ctx.info.isSoftware}); variants: ${variants.join(', ')}; default ${best0}`);

type Col = { name: string; run: (s: Shape) => Promise<Result> };
const cols: Col[] = [];
for (const v of variants) {
  for (const sz of v === best0 ? sizeModes : sizeModes.slice(0, 1)) {
    cols.push({ name: `ours ${v}${sz === 'override' ? ' (override sizes)' : ''}`, run: (s) => benchOurs(e, s, v, sz) });
  }
}
cols.push({ name: `ours ${best0} x·Wᵀ`, run: (s) => benchOurs(e, s, best0, sizeModes[0]!, true) });
const rows: Record<string, Result[]> = {};
for (const c of cols) {
  rows[c.name] = [];
  for (const s of SHAPES) {
    const g = await c.run(s);
    rows[c.name]!.push(g);
    console.error(`${c.name} ${s.join('x')}: ${g?.wall.toFixed(2)} GFLOP/s wall, ${g?.cpuEst.toFixed(2)} cpu-est`);
  }
}
rows['tfjs-webgpu'] = [];
for (const s of SHAPES) {
  const g = await benchTfjs(s);
  rows['tfjs-webgpu']!.push(g);
  console.error(`tfjs-webgpu ${s.join('x')}: ${g?.wall.toFixed(2)} GFLOP/s wall, ${g?.cpuEst.toFixed(2)} cpu-est`);
}
const blas = benchOpenBlas(SHAPES);
const blasName = `OpenBLAS${blas ? ` (${blas.note})` : ''}`;
rows[blasName] = blas ? blas.res : SHAPES.map(() => null);

const fmt = (x: number | null | undefined) => (x == null || Number.isNaN(x) ? 'n/a' : x.toFixed(1));
// "Best" compares like with like: the untransposed product (tfjs and numpy run A·B too); x·Wᵀ is informative.
const ourNames = cols.filter((c) => !c.name.includes('Wᵀ')).map((c) => c.name);
const bestOf = (k: 'wall' | 'cpuEst') => SHAPES.map((_, i) => Math.max(...ourNames.map((n) => rows[n]![i]?.[k] ?? 0)));
const best = { wall: bestOf('wall'), cpuEst: bestOf('cpuEst') };
const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
console.log(`\nGFLOP/s (f32), median of ${TRIALS} trials; ${e.ctx.info.description}; ${CORES} cores; load average ${load}`);
console.log('Each cell: wall-clock / CPU-normalised (flops per worker-CPU-second × cores; see workerCpuSeconds).\n');
console.log(`| variant | ${SHAPES.map((s) => s.join('×')).join(' | ')} |`);
console.log(`|---|${SHAPES.map(() => '---:').join('|')}|`);
for (const [name, vals] of Object.entries(rows)) console.log(`| ${name} | ${vals.map((v) => `${fmt(v?.wall)} / ${fmt(v?.cpuEst)}`).join(' | ')} |`);
console.log(`| **ours best** | ${SHAPES.map((_, i) => `${fmt(best.wall[i])} / ${fmt(best.cpuEst[i])}`).join(' | ')} |`);
const tfjs = rows['tfjs-webgpu']!;
const ratio = (a: number | undefined, b: number | undefined) => (a && b ? Number((a / b).toFixed(2)) : null);
const ratios = SHAPES.map((s, i) => ({
  shape: s.join('x'),
  vsTfjs: { wall: ratio(best.wall[i], tfjs[i]?.wall), cpu: ratio(best.cpuEst[i], tfjs[i]?.cpuEst) },
  vsOpenBlas: { wall: ratio(best.wall[i], blas?.res[i]?.wall), cpu: ratio(best.cpuEst[i], blas?.res[i]?.cpuEst) },
}));
console.log('');
console.log(JSON.stringify({ device: e.ctx.info.description, load, ratios }));
process.exit(0);
