// The COLA trainer: a chain of LoRAs over one training run (MISSION.md).
//
//   for each link j of the plan (steps [start_j, end_j), rank r_j):
//     1. tune LoRA: train only (A_j, B_j) (and LoRA bias) on the frozen weights;
//     2. tie a knot: W ← W + s_j·B_j·A_j on the GPU (refusing non-finite results), persist;
//     3. extend the chain: fresh (A, B) (A Gaussian from (seed, link), B = 0), reset all
//        optimizer state; the LR schedule continues over the whole run.
//
// Every link ends with a knot, so a run of M links yields M versions (the last one is the final
// model). Resume: the merged weights of the last persisted knot plus (seed, link, step) are the
// whole state (optimizer state is zero at a knot, A comes from (seed, link), the data order from
// (seed, epoch)), so a run restarted from its last knot reproduces the uninterrupted run bit for bit.
// Two options beyond the paper (issue 13), both off by default:
//  - partial optimizer reset (optimizer.resetKeep > 0): at a knot the link's optimizer state is
//    pruned to its largest entries (pruneState) and loaded into the next link's optimizer; the
//    pruned state is part of the knot (KnotInfo.optimizerState) and is given back on resume;
//  - automatic knots (chain {auto}): the plan is one link and the trainer splits it where the
//    loss-improvement rate says so (src/cola/auto.ts); each decision goes to onKnotDecision.
import type { Engine, Tensor } from '../gpu/engine.ts';
import type { GpuScheduler } from '../gpu/scheduler.ts';
import { mergeLoraMany, type MergeItem } from '../gpu/ops/merge.ts';
import { createOptimizer, loadState, pruneState, type CarriedState, type Optimizer, type OptimizerConfig } from './optimizer.ts';
import { AutoKnots, type KnotDecision } from './auto.ts';
import type { ModelWeights } from '../model/weights.ts';
import { TransformerModel, bucketLen, moduleWeightName, type GpuBatch, type GpuLinear, type LoraWeights } from '../model/transformer.ts';
import { familyOf } from '../model/names.ts';
import { encodeExample, makeBatch, batchAt, totalSteps as epochTotalSteps, stepsPerEpoch, type ChatEncoder, type Example, type EncodedExample, type TokenizerLike } from './data.ts';
import { autoOf, planChain, replayKnots, splitAt, type ChainConfig, type ChainPlan, type PlannedLink } from './schedule.ts';
import { lrAt, type LrSchedule } from './lr.ts';
import { chainFlops } from './flops.ts';
import { archConfigOf, freeLora, initLoraHost, loraParams, readLora, uploadLora, type LoraHost, type LoraSpec } from './lora.ts';
import { ColaConfigError } from './errors.ts';

export interface TrainConfig {
  lora: LoraSpec;
  chain: ChainConfig;
  optimizer: OptimizerConfig;
  schedule: Omit<LrSchedule, 'lr'>;
  epochs: number;
  batchSize: number;
  maxSeqLen: number;
  seed: number;
  shuffle: boolean;
  /** Clip the global gradient norm of the adapters to this value (0 = off). */
  maxGradNorm: number;
  /** Evaluate the validation loss after each knot. */
  evalEveryKnot: boolean;
}

export interface StepInfo {
  step: number; // 1-based count of completed steps
  loss: number;
  lr: number;
  link: number;
  epoch: number;
  /** Links of the chain as planned now (grows when a knot is tied on request or automatically). */
  links: number;
  /** Tokens this step processed (its batch's non-padding tokens), for tokens/s. */
  tokens?: number;
}

export interface KnotInfo {
  link: number;
  rank: number;
  startStep: number;
  endStep: number;
  /** The merged model after this knot (CPU copy; HF names). */
  weights: ModelWeights;
  /** The link's adapters as trained (before merging), for the PEFT export. */
  adapter: LoraHost;
  valLoss: number | null;
  flops: number;
  /** With a partial reset: the optimizer state carried into the next link (null otherwise and at the last knot). */
  optimizerState: CarriedState | null;
}

export interface TrainerCallbacks {
  /** A link starts: its fresh adapters and its optimizer (state all zero) are passed for inspection. */
  onLinkStart?(info: { link: number; rank: number; step: number; lora: LoraWeights; optimizer: Optimizer }): void | Promise<void>;
  onStep?(info: StepInfo): void | Promise<void>;
  /** Persist the knot. Training continues only after this resolves (a knot is durable before the job moves on). */
  onKnot(info: KnotInfo): Promise<void>;
  /** Checked between steps: true stops the run (knots already tied stay). */
  isCancelled?(): boolean | Promise<boolean>;
  /** Checked between steps: true ties a knot now (POST /merge {job}); the link is split there. */
  takeMergeRequest?(): boolean;
  /** Automatic knots: every decision, with the signal values it was taken on. */
  onKnotDecision?(d: KnotDecision): void | Promise<void>;
}

export interface ResumePoint {
  /** Completed steps at the last persisted knot (its merged weights are the `weights` given to train). */
  step: number;
  /** Steps of every knot persisted so far, in order (default: [step]); see replayKnots. */
  knotSteps?: readonly number[];
  /** With a partial reset: the state carried by that knot (KnotInfo.optimizerState). */
  optimizerState?: CarriedState | null;
}

export interface TrainResult {
  status: 'succeeded' | 'cancelled';
  steps: number;
  plan: ChainPlan;
  tokens: number;
  seconds: number;
}

/**
 * Where the trainer's device work runs: as units of the process's GPU scheduler (the service: a
 * step is one turn, handed over between layers when generation is waiting), or directly when
 * absent (tests, benchmarks). The dispatches and their order are the same either way, so a job's
 * versions are bit-identical with and without concurrent work.
 */
export interface TrainDevice {
  sched: GpuScheduler;
  /** Scheduler key: jobs are shared fairly by key (the service uses the job's tenant and id). */
  key: string;
}

export interface TrainInput {
  e: Engine;
  device?: TrainDevice;
  /** Starting weights: the base model, or the last knot's merged weights when resuming. */
  weights: ModelWeights;
  /** BOS may be absent (Qwen2); EOS is needed: it ends completions and pads batches. */
  tokenizer: TokenizerLike;
  train: Example[];
  validation?: Example[];
  config: TrainConfig;
  /** Optional initial adapter for the first link (PEFT init_adapter); shapes must match. */
  initAdapter?: LoraHost;
  resume?: ResumePoint;
  /** Explicit plan (e.g. after POST /merge split a link); default: planned from the config. */
  plan?: ChainPlan;
  /** The model's chat template, for {messages} examples. */
  chat?: ChatEncoder | null;
}

/** Encodes the examples once; errors name the offending example. */
export function encodeAll(tok: TokenizerLike, xs: Example[], maxSeqLen: number, what: string, chat: ChatEncoder | null = null): EncodedExample[] {
  return xs.map((x, i) => encodeExample(tok, x, { maxSeqLen, chat }, `${what}[${i}]`));
}

/** The chain plan for a config and a training-set size. */
export function planFor(config: TrainConfig, nTrain: number): ChainPlan {
  const total = epochTotalSteps({ n: nTrain, batchSize: config.batchSize, epochs: config.epochs, seed: config.seed, shuffle: config.shuffle });
  return planChain({ totalSteps: total, chain: config.chain, rank: config.lora.rank });
}

function uploadBatch(e: Engine, rows: EncodedExample[], padId: number, maxLen: number): GpuBatch & { lossTokens: number; tokens: number } {
  const longest = Math.max(...rows.map((r) => r.ids.length));
  const b = makeBatch(rows, { padId, pad: 'max', maxSeqLen: bucketLen(longest, maxLen) });
  return {
    B: b.B,
    T: b.T,
    ids: e.upload(b.ids, [b.B * b.T], 'i32'),
    targets: e.upload(b.targets, [b.B * b.T], 'i32'),
    keyMask: e.upload(b.keyMask, [b.B, b.T], 'u32'),
    lossTokens: b.lossTokens,
    tokens: b.realTokens,
  };
}

function freeBatch(b: GpuBatch): void {
  b.ids.free();
  b.targets?.free();
  b.keyMask?.free();
}

/** Mean validation loss over all validation targets (token-weighted), merged weights, no adapter. */
export async function validationLoss(
  e: Engine, model: TransformerModel, rows: EncodedExample[], batchSize: number, padId: number, maxLen: number,
  /** Runs each batch's device work (one scheduler unit per batch in the service). */
  unit: <T>(fn: () => Promise<T>) => Promise<T> = (fn) => fn(),
): Promise<number> {
  let sum = 0;
  let count = 0;
  for (let i = 0; i < rows.length; i += batchSize) {
    const { v, n } = await unit(async () => {
      const b = uploadBatch(e, rows.slice(i, i + batchSize), padId, maxLen);
      const loss = model.loss(b, null);
      const v = (await e.readF32(loss))[0]!;
      loss.free();
      freeBatch(b);
      return { v, n: b.lossTokens };
    });
    sum += v * n;
    count += n;
  }
  return count ? sum / count : NaN;
}

/** Reads the merged target weights back into a copy of the CPU weights (GPT-2 Conv1D re-transposed). */
async function snapshotWeights(e: Engine, model: TransformerModel, base: ModelWeights, spec: LoraSpec): Promise<ModelWeights> {
  const c = base.config;
  const tensors = new Map(base.tensors);
  const items: { name: string; t: Tensor; transpose: boolean }[] = [];
  for (let layer = 0; layer < c.nLayers; layer++) {
    for (const short of spec.targets) {
      const lin = model.linearOf(layer, short);
      const name = moduleWeightName(c.arch, layer, short);
      // A module still 16-bit was not merged (tieKnot makes merged ones f32): its base tensor stands.
      if (lin.w.dtype === 'f32') items.push({ name, t: lin.w, transpose: familyOf(c.arch).conv1d });
      if (spec.bias && lin.b) items.push({ name: name.replace(/\.weight$/, '.bias'), t: lin.b, transpose: false });
    }
  }
  const data = await e.readManyF32(items.map((x) => x.t)); // one wait for the whole snapshot
  items.forEach(({ name, t, transpose }, i) => {
    let d = data[i]!;
    if (transpose) {
      // GPU holds (out, in); GPT-2's Conv1D file layout is (in, out).
      const [out, inF] = t.shape as [number, number];
      const tr = new Float32Array(out * inF);
      for (let o = 0; o < out; o++) for (let k = 0; k < inF; k++) tr[k * out + o] = d[o * inF + k]!;
      d = tr;
    }
    tensors.set(name, { shape: base.tensors.get(name)!.shape, data: d });
  });
  return { config: c, tensors };
}

/** Ties the knot: W += s·B·A (and bias += LoRA bias) for every adapted module, refusing non-finite results. */
async function tieKnot(e: Engine, model: TransformerModel, lora: LoraWeights): Promise<void> {
  const items: MergeItem[] = [];
  const lins: GpuLinear[] = [];
  const biases: { b: Tensor; delta: Tensor; key: string }[] = [];
  for (const [key, m] of lora.modules) {
    const dot = key.indexOf('.');
    const lin = model.linearOf(Number(key.slice(0, dot)), key.slice(dot + 1));
    lins.push(lin);
    items.push({ w: lin.w, a: m.a, b: m.b, scale: lora.scale });
    if (m.bias) {
      if (!lin.b) throw new ColaConfigError('lora.bias', `module ${key} has no bias to merge the LoRA bias into`);
      biases.push({ b: lin.b, delta: m.bias, key });
    }
  }
  const merged = await mergeLoraMany(e, items); // one wait for the whole knot
  // A 16-bit module comes back as a new f32 tensor (ops/merge.ts: rounding back would drop the update).
  lins.forEach((lin, i) => {
    if (merged[i] !== lin.w) {
      lin.w.free();
      lin.w = merged[i]!;
    }
  });
  for (const x of biases) await mergeBias(e, x.b, x.delta);
}

async function mergeBias(e: Engine, b: Tensor, delta: Tensor): Promise<void> {
  const [bv, dv] = [await e.readF32(b), await e.readF32(delta)];
  const out = new Float32Array(bv.length);
  for (let i = 0; i < bv.length; i++) {
    out[i] = bv[i]! + dv[i]!;
    if (!Number.isFinite(out[i]!)) throw new Error('merging the LoRA bias gave a non-finite value; the weights were left unchanged');
  }
  e.write(b, out);
}

/**
 * Runs (or resumes) a COLA training run. The model is built from `weights` on the engine and freed
 * at the end. Returns when every link is tied, or when cancelled.
 */
export async function trainCola(input: TrainInput, cb: TrainerCallbacks): Promise<TrainResult> {
  const { e, config: cfg, tokenizer } = input;
  const t0 = performance.now();
  const rows = encodeAll(tokenizer, input.train, cfg.maxSeqLen, 'train', input.chat);
  const valRows = input.validation?.length ? encodeAll(tokenizer, input.validation, cfg.maxSeqLen, 'validation', input.chat) : [];
  let plan = input.plan ?? planFor(cfg, rows.length);
  // Knots tied on request (POST /merge) before an interruption are not in the planned schedule.
  if (input.resume) plan = replayKnots(plan, input.resume.knotSteps ?? [input.resume.step]);
  const epochCfg = { n: rows.length, batchSize: cfg.batchSize, epochs: cfg.epochs, seed: cfg.seed, shuffle: cfg.shuffle };
  const sched: LrSchedule = { ...cfg.schedule, lr: cfg.optimizer.lr };
  const padId = tokenizer.eos;
  if (padId === null) throw new ColaConfigError('model', 'the tokenizer has no EOS token; fine-tuning needs one');
  const arch = archConfigOf(input.weights.config);
  const flopsOf = (p: ChainPlan) => chainFlops(arch, p, { targets: cfg.lora.targets, tokensPerStep: cfg.batchSize * cfg.maxSeqLen, seqLen: cfg.maxSeqLen });
  let flops = flopsOf(plan);
  const startLink = input.resume ? plan.links.findIndex((l) => l.endStep === input.resume!.step) + 1 : 0;
  if (input.resume && startLink === 0) throw new Error(`resume step ${input.resume.step} is not a knot of the plan`);
  const dev = input.device;
  const unit = <T>(fn: () => Promise<T>): Promise<T> => (dev ? dev.sched.run('train', dev.key, fn) : fn());
  let weights = input.weights;
  const model = await unit(async () => TransformerModel.upload(e, weights));
  let tokens = 0;
  let done = startLink < plan.links.length ? plan.links[startLink]!.startStep : plan.totalSteps;
  const keep = cfg.optimizer.resetKeep ?? 0;
  if (keep > 0 && new Set(plan.links.map((l) => l.rank)).size > 1) {
    throw new ColaConfigError('optimizer.reset_keep', 'a partial optimizer reset needs every link to have the same rank (the kept moments are per entry of A and B)');
  }
  let carried: CarriedState | null = input.resume?.optimizerState ?? null;
  if (input.resume && startLink > 0 && keep > 0 && !carried) throw new Error('resuming a run with a partial optimizer reset needs the optimizer state of its last knot');
  const autoCfg = autoOf(cfg.chain, plan.totalSteps);
  const auto = autoCfg ? new AutoKnots(autoCfg) : null;

  /** One training step: forward, backward, optimizer update; returns the loss and the batch's tokens. */
  const step = async (lora: LoraWeights, params: ReturnType<typeof loraParams>, opt: Optimizer, at: number, lr: number, indices: number[]) => {
    const turn = dev ? await dev.sched.session('train', dev.key) : null;
    try {
      const batch = uploadBatch(e, indices.map((i) => rows[i]!), padId, cfg.maxSeqLen);
      const it = model.lossAndGradsSteps(batch, lora);
      let r = it.next();
      while (!r.done) {
        if (turn) await turn.checkpoint(); // between layers: generation may take the device here
        r = it.next();
      }
      const { loss, grads } = r.value;
      const gradList = params.map((p) => {
        const g = grads.get(p.key)!;
        return p.kind === 'a' ? g.dA : p.kind === 'b' ? g.dB : g.dBias!;
      });
      opt.step(gradList, lr, cfg.maxGradNorm);
      for (const g of gradList) g.free();
      freeBatch(batch);
      const lossV = (await e.readF32(loss))[0]!;
      loss.free();
      return { lossV, tokens: batch.tokens };
    } finally {
      await turn?.end();
    }
  };

  try {
    for (let j = startLink; j < plan.links.length; j++) {
      let link: PlannedLink = plan.links[j]!;
      const host = j === 0 && input.initAdapter ? input.initAdapter : initLoraHost(weights.config, cfg.lora, link.rank, cfg.seed, j);
      const { lora, params, opt } = await unit(async () => {
        const lora = uploadLora(e, host);
        const params = loraParams(lora);
        const opt = createOptimizer(e, cfg.optimizer, params.map((p) => p.t)) as Optimizer;
        if (carried) loadState(e, opt.states, carried);
        return { lora, params, opt };
      });
      carried = null;
      try {
        await cb.onLinkStart?.({ link: j, rank: link.rank, step: done, lora, optimizer: opt });
        const last = auto?.startLink(j, done);
        if (last) await cb.onKnotDecision?.(last);
        let autoTie = false;
        for (; done < link.endStep; done++) {
          if (await cb.isCancelled?.()) return { status: 'cancelled', steps: done, plan, tokens, seconds: (performance.now() - t0) / 1000 };
          // A pending merge request is taken even when an automatic knot ties here: that knot satisfies it.
          const requested = done > link.startStep && (cb.takeMergeRequest?.() ?? false);
          if (done > link.startStep && (autoTie || requested)) {
            plan = splitAt(plan, done);
            flops = flopsOf(plan);
            link = plan.links[j]!;
            break;
          }
          const { epoch, indices } = batchAt(epochCfg, done);
          const lr = lrAt(done, sched, plan.totalSteps, plan);
          const r = await step(lora, params, opt, done, lr, indices);
          tokens += r.tokens;
          await cb.onStep?.({ step: done + 1, loss: r.lossV, lr, link: j, epoch, links: plan.links.length, tokens: r.tokens });
          const d = auto?.observe(done + 1, r.lossV, link.endStep);
          if (d) {
            await cb.onKnotDecision?.(d);
            autoTie = true; // tied before the next step (the loop's split above)
          }
        }
        // Tie the knot: keep the link's adapter for export, merge, persist, then extend.
        const adapter = await unit(async () => {
          const a = await readLora(e, lora, host);
          await tieKnot(e, model, lora);
          weights = await snapshotWeights(e, model, weights, cfg.lora);
          // Partial reset: the pruned state goes to the next link (none after the last knot).
          if (keep > 0 && link.endStep < plan.totalSteps) carried = await pruneState(e, opt.states, keep);
          return a;
        });
        const valLoss = cfg.evalEveryKnot && valRows.length ? await validationLoss(e, model, valRows, cfg.batchSize, padId, cfg.maxSeqLen, unit) : null;
        await cb.onKnot({ link: j, rank: link.rank, startStep: link.startStep, endStep: link.endStep, weights, adapter, valLoss, flops: flops.links[j]!.flops, optimizerState: carried });
      } finally {
        opt.free();
        freeLora(lora);
      }
    }
    return { status: 'succeeded', steps: done, plan, tokens, seconds: (performance.now() - t0) / 1000 };
  } finally {
    model.free();
  }
}

export { stepsPerEpoch };
