// Request/response schemas shared by several routes (the contract in docs/API.md).
import { z } from '@hono/zod-openapi';
import { JOB_STATES } from '../domain/job-states.ts';

export {
  AnyExample,
  ChainSchema,
  ChatExample,
  ChatMessage,
  ChoiceExample,
  FinetuneRequest,
  MAX_INLINE_EXAMPLES,
  MAX_TEXT,
  PromptCompletion,
  TextExample,
  TrainExample,
  type FinetuneRequestBody,
  type FinetuneRequestT,
} from '../domain/schemas.ts';

export const JobStatusSchema = z.enum(JOB_STATES).openapi('JobStatus');

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
