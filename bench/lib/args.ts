// Command-line options of bench/experiment.ts.
import { TASKS, isTaskName, type TaskName } from '../../src/eval/tasks.ts';

export const METHODS = ['lora', 'cola2', 'cola3', 'stepdown'] as const;
export type Method = (typeof METHODS)[number];

export interface Options {
  tasks: TaskName[];
  seeds: number[];
  nTrain: number;
  nVal: number;
  nTest: number;
  epochs: number;
  lrs: number[];
  methods: Method[];
  batchSize: number;
  maxSeqLen: number;
  evalRows: number;
  outDir: string;
  fresh: boolean;
  throughputSteps: number;
  skipRuns: boolean;
  quick: boolean;
}

export const USAGE = `bun run bench/experiment.ts [options]
  --tasks a,b,...       tasks (default: ${TASKS.join(',')})
  --seeds N             seeds 0..N-1 (default 5); or --seed-list 0,3,4
  --train N --val N --test N   examples per task (default 1000 / 500 / 1000, capped by the data)
  --epochs N            epochs of every run (default 5, the paper's)
  --steps-scale s       epochs = max(1, round(5·s)) (a coarser knob for the run length)
  --lrs a,b,c           learning-rate grid (default 1e-3,3e-3,1e-2)
  --methods m,...       subset of ${METHODS.join(',')} (default all)
  --batch N             batch size (default 8)
  --max-len N           max sequence length, training and scoring (default 128)
  --eval-rows N         rows per scoring batch (default 32)
  --throughput-steps N  steps of the 8×128 throughput benchmark (default 24; 0 = skip)
  --skip-runs           only the throughput benchmark (and the report from cached runs)
  --out DIR             output folder (default bench/out)
  --fresh               ignore cached runs in DIR/runs.jsonl
  --quick               2 tasks (sst2, rte), 1 seed, 64/64/128 examples, lrs 3e-3,1e-2, 12 throughput steps`;

export function parseArgs(argv: string[]): Options {
  const o: Options = {
    tasks: [...TASKS],
    seeds: [0, 1, 2, 3, 4],
    nTrain: 1000,
    nVal: 500,
    nTest: 1000,
    epochs: 5,
    lrs: [1e-3, 3e-3, 1e-2],
    methods: [...METHODS],
    batchSize: 8,
    maxSeqLen: 128,
    evalRows: 32,
    outDir: 'bench/out',
    fresh: false,
    throughputSteps: 24,
    skipRuns: false,
    quick: false,
  };
  if (argv.includes('--quick')) {
    Object.assign(o, { quick: true, tasks: ['sst2', 'rte'], seeds: [0], nTrain: 64, nVal: 64, nTest: 128, lrs: [3e-3, 1e-2], throughputSteps: 12 });
  }
  const int = (name: string, v: string | undefined, min = 1): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer ≥ ${min}, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = argv[i + 1];
    const take = () => {
      i++;
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--quick':
        break;
      case '--tasks':
        o.tasks = take().split(',').map((t) => {
          if (!isTaskName(t)) throw new Error(`unknown task ${t}; tasks: ${TASKS.join(', ')}`);
          return t;
        });
        break;
      case '--seeds':
        o.seeds = Array.from({ length: int(a, take()) }, (_, k) => k);
        break;
      case '--seed-list':
        o.seeds = take().split(',').map((s) => int(a, s, 0));
        break;
      case '--train':
        o.nTrain = int(a, take());
        break;
      case '--val':
        o.nVal = int(a, take());
        break;
      case '--test':
        o.nTest = int(a, take());
        break;
      case '--epochs':
        o.epochs = int(a, take());
        break;
      case '--steps-scale': {
        const s = Number(take());
        if (!(s > 0)) throw new Error('--steps-scale must be > 0');
        o.epochs = Math.max(1, Math.round(5 * s));
        break;
      }
      case '--lrs':
        o.lrs = take().split(',').map((s) => {
          const x = Number(s);
          if (!(x > 0)) throw new Error(`bad learning rate ${s}`);
          return x;
        });
        break;
      case '--methods':
        o.methods = take().split(',').map((m) => {
          if (!(METHODS as readonly string[]).includes(m)) throw new Error(`unknown method ${m}; methods: ${METHODS.join(', ')}`);
          return m as Method;
        });
        break;
      case '--batch':
        o.batchSize = int(a, take());
        break;
      case '--max-len':
        o.maxSeqLen = int(a, take(), 16);
        break;
      case '--eval-rows':
        o.evalRows = int(a, take());
        break;
      case '--throughput-steps':
        o.throughputSteps = int(a, take(), 0);
        break;
      case '--skip-runs':
        o.skipRuns = true;
        break;
      case '--out':
        o.outDir = take();
        break;
      case '--fresh':
        o.fresh = true;
        break;
      case '-h':
      case '--help':
        console.log(USAGE);
        process.exit(0);
      default:
        throw new Error(`unknown option ${a}\n${USAGE}`);
    }
  }
  return o;
}
