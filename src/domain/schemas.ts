// Request schemas below the HTTP layer: the names, ids and the fine-tune request that routes
// validate and that use cases, the worker (reading a stored request back) and the runner share.
// One zod schema per request; its inferred type is the domain type (FinetuneRequestBody).
import { z } from '@hono/zod-openapi';

export const ModelName = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, ".", "_", "-"; starting with a letter or digit');
export const MAX_VERSION = 1_000_000;
export const VersionNumber = z.number().int().min(0).max(MAX_VERSION);
/**
 * A version in a path ("/versions/{v}"): canonical decimal only. A plain coercion took " ", "0x0"
 * and "0e0" as version 0, so one version had many URLs.
 */
export const VersionParam = z
  .string()
  .regex(/^(0|[1-9][0-9]{0,6})$/, 'must be a version number: decimal digits, no sign, spaces or leading zeros')
  .transform(Number)
  .pipe(VersionNumber);
export const IdParam = z.string().min(1).max(64).regex(/^[A-Za-z0-9_-]+$/, 'malformed id');

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

/** A validated POST /finetune body (defaults applied): what the use case, the job row, the worker and the runner hold. */
export type FinetuneRequestBody = z.infer<typeof FinetuneRequest>;
/** @deprecated the same as FinetuneRequestBody */
export type FinetuneRequestT = FinetuneRequestBody;

