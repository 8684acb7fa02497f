// The fine-tune job runner: turns a validated POST /finetune request into a COLA training run and
// persists every knot (merged weights + the link's PEFT adapter) through the job context, which
// fences each write against the job's lease. `admitFinetune` runs the same checks when the request
// arrives, so what the runner would refuse is refused with 400 before a job exists.
import type { Engine } from '../gpu/engine.ts';
import type { GpuScheduler } from '../gpu/scheduler.ts';
import type { MemoryReservations } from '../gpu/reservations.ts';
import { trainingDeviceBytes } from './memory.ts';
import { UserInputError, type FinetuneJobSpec, type JobContext, type JobRunner } from '../services.ts';
import { loadVersion, resolvePath, tokenizerPathOf } from '../model/versions.ts';
import { loadModelFromPath, type LoadedModel } from '../model/registry.ts';
import { configFromRegistration, type ModelConfig } from '../model/config.ts';
import { hasBias } from '../model/names.ts';
import { weightBytes, weightsDtypeOf } from '../model/weights.ts';
import { manifestOrNull, planSnapshot, writeSnapshot } from '../model/snapshots.ts';
import type { ChatEncoder, Example } from './data.ts';
import { ChatTemplateError, encodeChatForTraining } from '../model/chat.ts';
import { ColaConfigError } from './errors.ts';
import { layerModules } from './modules.ts';
import { exportPeftAdapter, parsePeftAdapter, PeftError, type ImportedAdapter } from './peft.ts';
import { baseBiasOf, MAX_ADAPTER_BYTES, readAdapterWeights } from './adapter.ts';
import { SnapshotStore } from '../store/snapshot-store.ts';
import { archConfigOf, initLoraHost, resolveLoraSpec, type LoraHost } from './lora.ts';
import { planFor, trainCola, type ResumePoint, type TrainConfig } from './trainer.ts';
import { checkSchedule } from './lr.ts';
import { decodeCarriedState, encodeCarriedState } from './optimizer.ts';
import { OPTIMIZER_STATE_FILE, unpackExtra } from './peft.ts';
import { readFileSync } from 'node:fs';
import type { ChainConfig, ChainPlan } from './schedule.ts';
import type { FinetuneRequestBody } from '../domain/schemas.ts';

type Req = FinetuneRequestBody;

/**
 * The scheduler key of a job's training steps: its tenant. Device time is shared fairly between
 * tenants, not jobs, so a tenant with two running jobs gets the same share as one with one; the
 * jobs of one tenant take turns in arrival order.
 */
export function trainKey(tenantId: string): string {
  return `job:${tenantId}`;
}

/** The trainer's config from the validated request body (snake_case, defaults applied by zod). Throws ColaConfigError. */
export function trainConfigFromRequest(req: Req, modelConfig: ModelConfig): TrainConfig {
  const lora = req.lora ?? {};
  if ((lora.dropout ?? 0) > 0) throw new ColaConfigError('lora.dropout', 'dropout > 0 is not implemented: this trainer has no dropout; leave it at 0');
  if (req.max_steps !== undefined) {
    throw new ColaConfigError('max_steps', 'is not implemented: the run length is epochs × ceil(examples / batch_size); set epochs (or chain.links steps) instead');
  }
  const spec = resolveLoraSpec(modelConfig, { targets: lora.targets ?? ['q', 'v'], rank: lora.rank ?? 8, alpha: lora.alpha ?? 16, bias: !!lora.bias });
  const chain: ChainConfig = req.method === 'lora' ? { links: 1 } : (req.chain ?? { links: 3 });
  const o = req.optimizer ?? {};
  const s = req.schedule ?? {};
  return {
    lora: spec,
    chain,
    optimizer: { name: o.name ?? 'adamw', lr: o.lr ?? 5e-4, weightDecay: o.weight_decay ?? 0, betas: o.betas ?? [0.9, 0.999], eps: o.eps ?? 1e-8, momentum: o.momentum ?? 0, resetKeep: o.reset_keep ?? 0 },
    schedule: { name: s.name ?? 'linear', warmupSteps: s.warmup_steps ?? 0, knotWarmupSteps: s.knot_warmup_steps ?? 0 },
    epochs: req.epochs ?? 5,
    batchSize: req.batch_size ?? 8,
    maxSeqLen: Math.min(req.max_seq_len ?? 256, modelConfig.maxSeqLen),
    seed: req.seed ?? 0,
    shuffle: req.shuffle ?? true,
    maxGradNorm: o.max_grad_norm ?? 0,
    evalEveryKnot: req.eval?.every_knot ?? true,
  };
}

/** An uploaded adapter (a folder with the two PEFT files) or a knot's ZIP, parsed against the model. */
export function loadInitAdapter(
  modelConfig: ModelConfig,
  a: { config: Record<string, unknown>; path: string },
  baseBias: (layer: number, short: string) => Float32Array | null,
): ImportedAdapter {
  const files = readAdapterWeights(a.path, MAX_ADAPTER_BYTES);
  // The config stored at upload is the normalised one; a ZIP carries its own.
  const config = Object.keys(a.config).length > 0 ? a.config : files.zipConfig;
  return parsePeftAdapter(archConfigOf(modelConfig), config, files.weights, baseBias);
}

/** init_adapter against the run: the first link's rank, modules within lora.targets, a LoRA bias only with lora.bias. */
function checkInitAdapter(imp: ImportedAdapter, config: TrainConfig, plan: ChainPlan): void {
  const first = plan.links[0]!.rank;
  if (imp.rank !== first) {
    throw new ColaConfigError('init_adapter', `has rank ${imp.rank} but the first link has rank ${first}; set lora.rank (or chain.links[0].rank) to ${imp.rank}`);
  }
  const outside = imp.targets.filter((t) => !config.lora.targets.includes(t));
  if (outside.length > 0) {
    throw new ColaConfigError('init_adapter', `adapts ${outside.join(', ')}, outside lora.targets (${config.lora.targets.join(', ')}); add them to lora.targets`);
  }
  if (!config.lora.bias && [...imp.modules.values()].some((m) => m.bias)) {
    throw new ColaConfigError('init_adapter', 'has a LoRA bias (bias = "lora_only"); set lora.bias to true to train it');
  }
}

/**
 * The first link's adapters from init_adapter: its A, B (and bias) where it has them, a fresh link
 * (A Gaussian, B zero) on the other targeted modules, and the adapter's own scale (lora_alpha / r,
 * or / √r with use_rslora), not the request's alpha.
 */
function initHost(imp: ImportedAdapter, modelConfig: ModelConfig, config: TrainConfig): LoraHost {
  const host = initLoraHost(modelConfig, config.lora, imp.rank, config.seed, 0);
  for (const [key, m] of imp.modules) host.modules.set(key, { ...m, bias: m.bias ?? (config.lora.bias ? new Float32Array(m.out) : undefined) });
  return { rank: imp.rank, alpha: imp.alpha, scale: imp.scale, rslora: imp.rslora, modules: host.modules };
}

/**
 * Admission: every check the runner makes that needs no weights — the request against the base
 * model's config (targets, LoRA bias, max_seq_len), the chain plan for `nTrain` examples (links
 * vs steps, per-link steps vs the run), unsupported options, and init_adapter against the model
 * and the first link. Throws UserInputError with `errors: [{path, message}]` (→ 400).
 */
export function admitFinetune(
  req: Req,
  modelConfig: ModelConfig,
  nTrain: number,
  initAdapter?: { config: Record<string, unknown>; path: string },
  limits: { trainMemoryBytes?: number } = {},
): void {
  try {
    const config = trainConfigFromRequest(req, modelConfig);
    const plan = planFor(config, nTrain);
    checkOptions(config, plan);
    const need = trainingBytesOf(modelConfig, config, plan);
    if (limits.trainMemoryBytes !== undefined && need > limits.trainMemoryBytes) {
      const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
      throw new ColaConfigError(
        'batch_size',
        `this run needs about ${mib(need)} of device memory (batch_size × max_seq_len = ${config.batchSize} × ${config.maxSeqLen} tokens per step); ` +
          `this server gives training ${mib(limits.trainMemoryBytes)} (COLA_TRAIN_MEMORY_BYTES): lower batch_size or max_seq_len`,
      );
    }
    if (initAdapter) {
      let imp: ImportedAdapter;
      try {
        // Only the base biases' shapes matter here (the runner uses the real ones).
        imp = loadInitAdapter(modelConfig, initAdapter, zeroBiases(modelConfig));
      } catch (e) {
        if (e instanceof PeftError) throw new ColaConfigError('init_adapter', `does not fit ${modelConfig.arch}: ${e.message}`);
        throw e;
      }
      checkInitAdapter(imp, config, plan);
    }
  } catch (e) {
    if (e instanceof ColaConfigError) throw new UserInputError(e.message, [{ path: e.path, message: e.message }]);
    throw e;
  }
}

/** The schedule against the run, and a partial reset against the chain (same rank in every link). */
function checkOptions(config: TrainConfig, plan: ChainPlan): void {
  checkSchedule({ ...config.schedule, lr: config.optimizer.lr }, plan.totalSteps);
  if ((config.optimizer.resetKeep ?? 0) > 0 && new Set(plan.links.map((l) => l.rank)).size > 1) {
    throw new ColaConfigError('optimizer.reset_keep', 'a partial optimizer reset needs every link to have the same rank (the kept moments are per entry of A and B); use one rank or reset_keep 0');
  }
}

function zeroBiases(c: ModelConfig): (layer: number, short: string) => Float32Array | null {
  const out = new Map(layerModules(archConfigOf(c)).map((m) => [m.short, m.out]));
  return (_layer, short) => (hasBias(c, short) ? new Float32Array(out.get(short) ?? 0) : null);
}

/** The chat template as the trainer's encoder; one whose template is unusable throws its error for chat examples. */
export function chatEncoderOf(m: LoadedModel): ChatEncoder | null {
  const tpl = m.chat;
  if (tpl === null) return null;
  if (tpl instanceof ChatTemplateError) {
    return {
      encode: () => {
        throw tpl;
      },
    };
  }
  return { encode: (messages) => encodeChatForTraining(m.tokenizer, tpl, messages) };
}

function asTrainExamples(xs: FinetuneJobSpec['train'], what: string): Example[] {
  return xs.map((x, i) => {
    if ('candidates' in x) {
      // A classification example trains on its correct answer only.
      const c = x.candidates[x.label];
      if (c === undefined) throw new UserInputError(`${what}[${i}].label is out of range`);
      return { prompt: x.prompt, completion: c };
    }
    return x;
  });
}

/**
 * The runner; its device work goes through `sched` (one GPU scheduler per process), keyed by tenant
 * and job, so jobs of different tenants progress side by side and generation never waits for a
 * whole job.
 */
export function createJobRunner(e: Engine, repoRoot: string, sched: GpuScheduler, memory?: MemoryReservations): JobRunner {
  return {
    async run(job: FinetuneJobSpec, ctx: JobContext) {
      // The run's device memory is reserved before anything is loaded (the base weights take host
      // memory too): a job that does not fit beside the running ones waits here (first come first
      // served), never fails mid-run. The bytes come from the registered config, not the files.
      const release = memory ? await reserveTrainingMemory(memory, admissionBytes(job), ctx) : () => {};
      if (release === null) return { cancelled: true };
      try {
        return await runReserved(job, ctx);
      } finally {
        release();
      }
    },
  };

  async function runReserved(job: FinetuneJobSpec, ctx: JobContext): Promise<{ cancelled: true } | undefined> {
    const base = loadVersion(repoRoot, job.base);
    const tokenizer = base.tokenizer;
    // EOS ends completions and pads batches; BOS is optional (Qwen2 has none).
    if (base.tokenizer.eos === null) throw new UserInputError('the base model has no EOS token; fine-tuning needs one');
    const chat = chatEncoderOf(base);
    const train = asTrainExamples(job.train, 'train');
    const validation = asTrainExamples(job.validation, 'validation');
    let config: TrainConfig;
    let plan: ChainPlan;
    let initAdapter: LoraHost | undefined;
    const mc = base.weights.config;
    try {
      config = trainConfigFromRequest(job.request, mc);
      plan = planFor(config, train.length);
      checkOptions(config, plan);
      if (job.initAdapter && !ctx.resumeFrom) {
        const w = base.weights;
        const stored = { config: job.initAdapter.config, path: resolvePath(repoRoot, job.initAdapter.path) };
        const imp = loadInitAdapter(mc, stored, (layer, short) => baseBiasOf(w, layer, short));
        checkInitAdapter(imp, config, plan);
        initAdapter = initHost(imp, mc, config);
      }
    } catch (err) {
      if (err instanceof ColaConfigError || err instanceof PeftError) throw new UserInputError(err.message);
      throw err;
    }
    const arch = archConfigOf(mc);
    let weights = base.weights;
    let resume: ResumePoint | undefined;
    if (ctx.resumeFrom) {
      // Resume from the last persisted knot: its merged weights plus (seed, link, step) are the
      // whole state; the earlier knots' steps re-create requested and automatic splits
      // (replayKnots). With a partial reset, the kept optimizer state is in the knot's adapter ZIP.
      weights = loadModelFromPath(resolvePath(repoRoot, ctx.resumeFrom.path), { tokenizerPath: tokenizerPathOf(repoRoot, job.base.config) }).weights;
      resume = { step: ctx.resumeFrom.step, knotSteps: ctx.resumeFrom.knotSteps };
      if ((config.optimizer.resetKeep ?? 0) > 0 && ctx.resumeFrom.step < plan.totalSteps) {
        const zip = ctx.resumeFrom.adapterPath ? readFileSync(resolvePath(repoRoot, ctx.resumeFrom.adapterPath)) : null;
        const bytes = zip ? unpackExtra(zip, OPTIMIZER_STATE_FILE) : null;
        if (!bytes) throw new Error(`the last knot (version ${ctx.resumeFrom.version}) has no ${OPTIMIZER_STATE_FILE}; a run with a partial optimizer reset cannot resume without it`);
        resume.optimizerState = decodeCarriedState(bytes);
      }
    }
    const store = new SnapshotStore(job.storeDir);
    // Each knot is a manifest: its tensors the knot did not change are its parent's objects (the
    // base's, or the previous knot's), so a knot on q,v adds only q and v. A parent stored as a
    // whole file (the bundled llama2.c base) has no objects: the first knot writes every tensor once.
    let parent = manifestOrNull(resolvePath(repoRoot, ctx.resumeFrom ? ctx.resumeFrom.path : job.base.path));
    let lastEpoch = 0;
    const res = await trainCola(
      { e, device: { sched, key: trainKey(job.tenantId) }, weights, tokenizer, train, validation, config, initAdapter, resume, plan, chat },
      {
        onLinkStart: ({ link, rank }) => ctx.onLinkStarted({ link, rank }),
        onStep: async (s) => {
          lastEpoch = s.epoch;
          await ctx.onStep({ step: s.step, total_steps: plan.totalSteps, link: s.link, links: s.links, epoch: s.epoch, loss: s.loss, lr: s.lr, tokens: s.tokens });
        },
        onKnot: async (k) => {
          // No job id in the file: the same request must give the same bytes (same sha256) on any run.
          const snapPlan = planSnapshot(k.weights, { parent });
          // With a partial reset the knot's ZIP also carries the state kept for the next link (for a resume).
          const extra = k.optimizerState ? { [OPTIMIZER_STATE_FILE]: encodeCarriedState(k.optimizerState) } : undefined;
          const adapterZip = exportPeftAdapter(arch, { rank: k.adapter.rank, alpha: k.adapter.alpha, rslora: k.adapter.rslora, modules: k.adapter.modules }, { baseModel: job.base.model, extra });
          // The stored-bytes quota is checked before anything of this knot is written.
          await ctx.reserveBytes(snapPlan.addedBytes + adapterZip.length);
          const written = await writeSnapshot(store, snapPlan);
          parent = snapPlan.manifest;
          const precision = { weights_dtype: weightsDtypeOf(k.weights), weight_bytes: weightBytes(k.weights) }; // of the tensors written
          const snap = { path: written.path, sha256: written.sha256, bytes: written.bytes, addedBytes: written.addedBytes, tensors: written.tensors, precision };
          const adapterObj = await store.put(adapterZip, { ext: 'zip' });
          await ctx.onKnot({
            link: k.link,
            step: k.endStep,
            rank: k.rank,
            val_loss: k.valLoss ?? undefined,
            flops: k.flops,
            snapshot: snap,
            adapterPath: adapterObj.path,
            adapterBytes: adapterObj.bytes,
            metrics: { epoch: lastEpoch, start_step: k.startStep, end_step: k.endStep },
          });
          if (k.valLoss !== null) await ctx.onEval({ link: k.link, val_loss: k.valLoss });
        },
        isCancelled: () => ctx.isCancelled() || ctx.signal.aborted,
        takeMergeRequest: () => ctx.takeMergeRequest(),
        onKnotDecision: (d) => ctx.onKnotDecision?.({ ...d }),
      },
    );
    return res.status === 'cancelled' ? { cancelled: true } : undefined;
  }
}

/** The device bytes a job reserves, from the registered model config and the request (no weights loaded). */
function admissionBytes(job: FinetuneJobSpec): number {
  try {
    const mc = configFromRegistration(job.base.config);
    const config = trainConfigFromRequest(job.request, mc);
    return trainingBytesOf(mc, config, planFor(config, job.train.length));
  } catch (err) {
    if (err instanceof ColaConfigError) throw new UserInputError(err.message);
    throw err;
  }
}

/**
 * Waits for the run's device memory (first come first served). A user's cancel only shows in
 * ctx.isCancelled (refreshed by heartbeats), not in ctx.signal (lease loss, shutdown), so it is
 * polled every 250 ms while waiting. Resolves with the release, or null when the job was cancelled.
 */
async function reserveTrainingMemory(memory: MemoryReservations, bytes: number, ctx: JobContext): Promise<(() => void) | null> {
  if (ctx.isCancelled()) return null;
  const cancel = new AbortController();
  const poll = setInterval(() => {
    if (ctx.isCancelled()) cancel.abort(new Error('the job was cancelled while waiting for training memory'));
  }, 250);
  try {
    return await memory.reserve(bytes, AbortSignal.any([ctx.signal, cancel.signal]));
  } catch (err) {
    if (cancel.signal.aborted && !ctx.signal.aborted) return null;
    throw err;
  } finally {
    clearInterval(poll);
  }
}

/** The device bytes a run reserves (see memory.ts): its batch shape, targets and largest rank. */
function trainingBytesOf(mc: ModelConfig, config: TrainConfig, plan: ChainPlan): number {
  const maxRank = Math.max(...plan.links.map((l) => l.rank));
  return trainingDeviceBytes(mc, { batchSize: config.batchSize, maxSeqLen: config.maxSeqLen, targets: config.lora.targets, maxRank });
}

