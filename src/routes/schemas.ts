// Request/response schemas shared by several routes (the contract in docs/API.md).
import { z } from '@hono/zod-openapi';
import { JOB_STATES } from '../domain/job-states.ts';
import { IdParam, ModelName, VersionNumber } from './common.ts';

export const MAX_TEXT = 100_000; // characters per prompt/completion/text
export const MAX_INLINE_EXAMPLES = 100_000;

const Str = z.string().max(MAX_TEXT);
export const PromptCompletion = z.object({ prompt: Str, completion: Str.min(1) }).strict();
export const TextExample = z.object({ text: Str.min(1) }).strict();
export const ChoiceExample = z
  .object({ prompt: Str, candidates: z.array(Str.min(1)).min(2).max(64), label: z.number().int().min(0).max(63) })
  .strict()
  .refine((e) => e.label < e.candidates.length, { message: 'label must index into candidates', path: ['label'] });
export const ChatMessage = z
  .object({ role: z.string().regex(/^[a-z_]{1,32}$/, 'a role name such as "system", "user" or "assistant"'), content: Str })
  .strict()
  .openapi('ChatMessage');
/** A chat rendered by the model's chat template; the loss is on the assistant turns only. */
export const ChatExample = z
  .object({ messages: z.array(ChatMessage).min(1).max(256) })
  .strict()
  .refine((e) => e.messages.some((m) => m.role === 'assistant'), { message: 'needs an assistant message to train on', path: ['messages'] })
  .openapi('ChatExample');
export const TrainExample = z.union([PromptCompletion, TextExample, ChatExample]).openapi('TrainExample');
export const AnyExample = z.union([PromptCompletion, TextExample, ChoiceExample, ChatExample]).openapi('Example');

const Rank = z.number().int().min(1).max(1024);

export const ChainSchema = z
  .union([
    z.object({ links: z.number().int().min(1).max(64) }).strict(),
    z.object({ knots: z.array(z.number().int().min(1).max(10_000_000)).min(0).max(63) }).strict(),
    z.object({ links: z.array(z.object({ steps: z.number().int().min(1).max(10_000_000), rank: Rank }).strict()).min(1).max(64) }).strict(),
    // Automatic knots (src/cola/auto.ts); a missing min_link_steps is a tenth of the run, checked against the run at admission.
    z
      .object({
        auto: z
          .object({
            min_link_steps: z.number().int().min(1).max(10_000_000).optional(),
            max_links: z.number().int().min(1).max(64).default(5),
            threshold: z.number().gt(0).lt(1).default(0.25),
            ema: z.number().min(0).lt(1).default(0.9),
            window: z.number().int().min(1).max(10_000_000).optional(),
          })
          .strict(),
      })
      .strict(),
  ])
  .refine((c) => !('knots' in c) || c.knots.every((k, i) => i === 0 || k > c.knots[i - 1]!), {
    message: 'knots must be strictly increasing',
    path: ['knots'],
  })
  .openapi('Chain');

export const FinetuneRequest = z
  .object({
    model: ModelName,
    version: VersionNumber.optional(),
    output_model: ModelName.optional(),
    train: z.array(TrainExample).min(1).max(MAX_INLINE_EXAMPLES).optional(),
    validation: z.array(TrainExample).max(MAX_INLINE_EXAMPLES).optional(),
    training_file: IdParam.optional(),
    validation_file: IdParam.optional(),
    method: z.enum(['cola', 'lora']).default('cola'),
    lora: z
      .object({
        rank: Rank.default(8),
        alpha: z.number().gt(0).max(100_000).default(16),
        targets: z.array(z.string().min(1).max(64).regex(/^[A-Za-z0-9_.]+$/)).min(1).max(32).default(['q', 'v']),
        bias: z.boolean().default(false),
        dropout: z.number().min(0).max(0.99).default(0),
      })
      .strict()
      .default({ rank: 8, alpha: 16, targets: ['q', 'v'], bias: false, dropout: 0 }),
    chain: ChainSchema.optional(),
    optimizer: z
      .object({
        name: z.enum(['adamw', 'sgd', 'adagrad']).default('adamw'),
        lr: z.number().gt(0).max(10).default(5e-4),
        weight_decay: z.number().min(0).max(10).default(0),
        betas: z.tuple([z.number().min(0).lt(1), z.number().min(0).lt(1)]).default([0.9, 0.999]),
        eps: z.number().gt(0).max(1).default(1e-8),
        momentum: z.number().min(0).lt(1).default(0),
        max_grad_norm: z.number().gt(0).max(1e6).optional(),
        /** Partial optimizer reset at knots: the fraction of moment entries kept (largest first); 0 = the paper's full reset. */
        reset_keep: z.number().min(0).lt(1).default(0),
      })
      .strict()
      .default({ name: 'adamw', lr: 5e-4, weight_decay: 0, betas: [0.9, 0.999], eps: 1e-8, momentum: 0, reset_keep: 0 }),
    schedule: z
      .object({
        name: z.enum(['linear', 'constant']).default('linear'),
        warmup_steps: z.number().int().min(0).max(10_000_000).default(0),
        /** LR re-warm-up over this many steps after each knot (0 = none). */
        knot_warmup_steps: z.number().int().min(0).max(10_000_000).default(0),
      })
      .strict()
      .default({ name: 'linear', warmup_steps: 0, knot_warmup_steps: 0 }),
    epochs: z.number().int().min(1).max(1000).default(5),
    max_steps: z.number().int().min(1).max(10_000_000).optional(),
    batch_size: z.number().int().min(1).max(1024).default(8),
    max_seq_len: z.number().int().min(1).max(32_768).default(256),
    seed: z.number().int().min(0).max(4_294_967_295).default(0),
    shuffle: z.boolean().default(true),
    init_adapter: IdParam.optional(),
    eval: z.object({ every_knot: z.boolean().default(true) }).strict().default({ every_knot: true }),
  })
  .strict()
  .superRefine((r, ctx) => {
    if (!r.train === !r.training_file) {
      ctx.addIssue({ code: 'custom', path: ['train'], message: 'give exactly one of "train" (inline examples) or "training_file"' });
    }
    if (r.validation && r.validation_file) {
      ctx.addIssue({ code: 'custom', path: ['validation'], message: 'give at most one of "validation" or "validation_file"' });
    }
    if (r.method === 'lora' && r.chain) {
      const links = 'auto' in r.chain ? r.chain.auto.max_links : 'knots' in r.chain ? r.chain.knots.length + 1 : typeof r.chain.links === 'number' ? r.chain.links : r.chain.links.length;
      if (links !== 1) ctx.addIssue({ code: 'custom', path: ['chain'], message: 'method "lora" is a chain of one link' });
    }
  })
  .openapi('FinetuneRequest');

export type FinetuneRequestT = z.infer<typeof FinetuneRequest>;

export const JobStatusSchema = z.enum(JOB_STATES as unknown as [string, ...string[]]).openapi('JobStatus');

export const JobView = z
  .object({
    id: z.string(),
    status: JobStatusSchema,
    model: z.string(),
    base_version: z.number().int(),
    output_model: z.string(),
    progress: z.object({ step: z.number(), total_steps: z.number(), link: z.number(), links: z.number(), epoch: z.number() }).nullable(),
    /** At most 500 points (50 in a list): every k-th step plus the last; `losses_count` is the curve's length. */
    losses: z.array(z.object({ step: z.number(), link: z.number(), loss: z.number().nullable() })),
    losses_count: z.number().int(),
    knots: z.array(
      z.object({ link: z.number(), step: z.number(), version: z.number(), rank: z.number(), val_loss: z.number().optional(), flops: z.number() }),
    ),
    error: z.object({ type: z.string(), detail: z.string() }).optional(),
    cancel_requested: z.boolean(),
    attempts: z.number().int(),
    created_at: z.string(),
    started_at: z.string().nullable(),
    finished_at: z.string().nullable(),
  })
  .openapi('Job');

export const LossPage = z
  .object({
    data: z.array(z.object({ step: z.number().int(), link: z.number().int(), loss: z.number().nullable(), lr: z.number().nullable(), epoch: z.number().int().nullable() })),
    /** Pass as `after` for the next page; null on the last page. */
    next_after: z.number().int().nullable(),
  })
  .openapi('LossPage');
