// The fine-tune job runner: turns a validated POST /finetune request into a COLA training run and
// persists every knot (merged weights + the link's PEFT adapter) through the job context, which
// fences each write against the job's lease.
import { readFileSync } from 'node:fs';
import type { Engine } from '../gpu/engine.ts';
import { UserInputError, type FinetuneJobSpec, type JobContext, type JobRunner } from '../services.ts';
import { loadVersion, resolvePath, tokenizerPathOf, type Mutex } from '../model/versions.ts';
import { loadModelFromPath } from '../model/registry.ts';
import { saveSafetensorsWeights } from '../model/weights.ts';
import type { Tokenizer, Example } from './data.ts';
import { ColaConfigError } from './errors.ts';
import { exportPeftAdapter, importPeftAdapter } from './peft.ts';
import { SnapshotStore } from './snapshot-store.ts';
import { archConfigOf, resolveLoraSpec, type LoraHost } from './lora.ts';
import { planFor, trainCola, type TrainConfig } from './trainer.ts';
import type { ChainConfig } from './schedule.ts';

type Req = Record<string, any>;

/** The trainer's config from the validated request body (snake_case, defaults applied by zod). */
export function trainConfigFromRequest(req: Req, modelConfig: Parameters<typeof resolveLoraSpec>[0]): TrainConfig {
  const lora = req.lora ?? {};
  if ((lora.dropout ?? 0) > 0) throw new UserInputError('lora.dropout > 0 is not implemented: this trainer has no dropout');
  if (req.max_steps !== undefined) throw new UserInputError('max_steps is not implemented: the run length is epochs × ceil(examples / batch_size)');
  const spec = resolveLoraSpec(modelConfig, { targets: lora.targets ?? ['q', 'v'], rank: lora.rank ?? 8, alpha: lora.alpha ?? 16, bias: !!lora.bias });
  const chain: ChainConfig = req.method === 'lora' ? { links: 1 } : (req.chain ?? { links: 3 });
  const o = req.optimizer ?? {};
  const s = req.schedule ?? {};
  return {
    lora: spec,
    chain,
    optimizer: { name: o.name ?? 'adamw', lr: o.lr ?? 5e-4, weightDecay: o.weight_decay ?? 0, betas: o.betas ?? [0.9, 0.999], eps: o.eps ?? 1e-8, momentum: o.momentum ?? 0 },
    schedule: { name: s.name ?? 'linear', warmupSteps: s.warmup_steps ?? 0 },
    epochs: req.epochs ?? 5,
    batchSize: req.batch_size ?? 8,
    maxSeqLen: Math.min(req.max_seq_len ?? 256, modelConfig.maxSeqLen),
    seed: req.seed ?? 0,
    shuffle: req.shuffle ?? true,
    maxGradNorm: o.max_grad_norm ?? 0,
    evalEveryKnot: req.eval?.every_knot ?? true,
  };
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

export function createJobRunner(e: Engine, repoRoot: string, gpu: Mutex): JobRunner {
  return {
    async run(job: FinetuneJobSpec, ctx: JobContext) {
      const base = loadVersion(repoRoot, job.base);
      const tokenizer = base.tokenizer as unknown as Tokenizer;
      if (base.tokenizer.bos === null || base.tokenizer.eos === null) throw new UserInputError('the base model has no BOS/EOS tokens; fine-tuning needs both');
      let config: TrainConfig;
      try {
        config = trainConfigFromRequest(job.request, base.weights.config);
      } catch (err) {
        if (err instanceof ColaConfigError) throw new UserInputError(err.message);
        throw err;
      }
      const train = asTrainExamples(job.train, 'train');
      const validation = asTrainExamples(job.validation, 'validation');
      const plan = planFor(config, train.length);
      const arch = archConfigOf(base.weights.config);
      let weights = base.weights;
      let resume: { step: number } | undefined;
      if (ctx.resumeFrom) {
        // Resume from the last persisted knot: its merged weights plus (seed, link, step) are the whole state.
        weights = loadModelFromPath(resolvePath(repoRoot, ctx.resumeFrom.path), { tokenizerPath: tokenizerPathOf(repoRoot, job.base.config) }).weights;
        resume = { step: ctx.resumeFrom.step };
      }
      let initAdapter: LoraHost | undefined;
      if (job.initAdapter && !ctx.resumeFrom) {
        const imp = importPeftAdapter(arch, readFileSync(resolvePath(repoRoot, job.initAdapter.path)));
        if (imp.rank !== plan.links[0]!.rank) throw new UserInputError(`init_adapter has rank ${imp.rank}, the first link ${plan.links[0]!.rank}`);
        const keys = [...imp.modules.keys()].map((k) => k.split('.').slice(1).join('.'));
        if (keys.some((k) => !config.lora.targets.includes(k))) throw new UserInputError(`init_adapter adapts modules outside lora.targets (${config.lora.targets.join(', ')})`);
        initAdapter = { rank: imp.rank, alpha: config.lora.alpha, scale: config.lora.alpha / imp.rank, modules: imp.modules };
      }
      const store = new SnapshotStore(job.storeDir);
      let lastEpoch = 0;
      const res = await gpu.run(() =>
        trainCola(
          { e, weights, tokenizer, train, validation, config, initAdapter, resume, plan },
          {
            onLinkStart: ({ link, rank }) => ctx.onLinkStarted({ link, rank }),
            onStep: async (s) => {
              lastEpoch = s.epoch;
              await ctx.onStep({ step: s.step, total_steps: plan.totalSteps, link: s.link, links: plan.links.length, epoch: s.epoch, loss: s.loss, lr: s.lr });
            },
            onKnot: async (k) => {
              // No job id in the file: the same request must give the same bytes (same sha256) on any run.
              const snap = await store.put(saveSafetensorsWeights(k.weights));
              const adapterZip = exportPeftAdapter(arch, { rank: k.adapter.rank, alpha: k.adapter.alpha, modules: k.adapter.modules }, { baseModel: job.base.model });
              const adapterObj = await store.put(adapterZip, { ext: 'zip' });
              await ctx.onKnot({
                link: k.link,
                step: k.endStep,
                rank: k.rank,
                val_loss: k.valLoss ?? undefined,
                flops: k.flops,
                snapshot: snap,
                adapterPath: adapterObj.path,
                metrics: { epoch: lastEpoch, start_step: k.startStep, end_step: k.endStep },
              });
              if (k.valLoss !== null) await ctx.onEval({ link: k.link, val_loss: k.valLoss });
            },
            isCancelled: () => ctx.isCancelled() || ctx.signal.aborted,
            takeMergeRequest: () => ctx.takeMergeRequest(),
          },
        ),
      );
      return res.status === 'cancelled' ? { cancelled: true } : undefined;
    },
  };
}
