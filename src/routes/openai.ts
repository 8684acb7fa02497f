// OpenAI-compatible surface: GET /v1/models, POST /v1/completions (logprobs, echo, stream; a prompt
// as text or token ids, several prompts give several choices). /v1/chat/completions is in chat.ts.
import crypto from 'node:crypto';
import { createRoute, z } from '@hono/zod-openapi';
import { streamSSE } from 'hono/streaming';
import type { Context } from 'hono';
import type { App, AppDeps, AppEnv } from './deps.ts';
import { problems, ProblemError } from './problem.ts';
import { streamRemainder, tenantOf } from './common.ts';
import { listModels } from '../db/repos/models.ts';
import { MAX_TEXT } from './schemas.ts';
import { admitGeneration, MAX_TOKENS_HARD, StopSchema, toStopList } from './generate.ts';
import type { GenerateRequest, GenerateResult } from '../services.ts';
import { ConfigError, configFromRegistration } from '../model/config.ts';

/** Prompts per request (choices) and token ids per prompt. */
export const MAX_PROMPTS = 16;
export const MAX_PROMPT_IDS = 131_072;
const TokenId = z.number().int().min(0).max(2 ** 31 - 1);

type Prompt = { text: string } | { ids: number[] };


/** The request's prompts: one per choice. */
function promptsOf(p: string | number[] | number[][] | string[]): Prompt[] {
  if (typeof p === 'string') return [{ text: p }];
  if (p.every((x): x is number => typeof x === 'number')) return [{ ids: p }];
  return (p as (string | number[])[]).map((x) => (typeof x === 'string' ? { text: x } : { ids: x }));
}

/**
 * Token-id prompts against the model's vocabulary (its registration config, so no weights load):
 * 400 naming the first id outside it. The service checks the tokenizer's vocabulary too.
 */
export function checkPromptIds(prompts: Prompt[], registration: Record<string, unknown>, nested: boolean): void {
  if (!prompts.some((p) => 'ids' in p)) return;
  let vocab: number;
  try {
    vocab = configFromRegistration(registration).vocabSize;
  } catch (e) {
    if (e instanceof ConfigError) return; // a registration without a model config: the service checks the ids
    throw e;
  }
  prompts.forEach((p, i) => {
    if (!('ids' in p)) return;
    const j = p.ids.findIndex((id) => id >= vocab);
    if (j < 0) return;
    const path = nested ? `prompt[${i}][${j}]` : `prompt[${j}]`;
    throw new ProblemError(400, `${path}: token id ${p.ids[j]} is outside the model's vocabulary (0..${vocab - 1})`, { errors: [{ path, message: `outside the vocabulary of ${vocab}` }] });
  });
}

const CompletionBody = z
  .object({
    model: z.string().min(1).max(160).regex(/^[A-Za-z0-9][A-Za-z0-9._-]*(@(0|[1-9]\d{0,6}))?$/, 'model is "name" or "name@version"'),
    // OpenAI / vLLM: a string, a list of strings, a list of token ids, or a list of such lists; every
    // prompt in a list is one choice (index in list order).
    prompt: z.union([
      z.string().max(MAX_TEXT),
      z.array(TokenId).min(1).max(MAX_PROMPT_IDS),
      z.array(z.array(TokenId).min(1).max(MAX_PROMPT_IDS)).min(1).max(MAX_PROMPTS),
      z.array(z.string().max(MAX_TEXT)).min(1).max(MAX_PROMPTS),
    ]),
    max_tokens: z.number().int().min(1).max(MAX_TOKENS_HARD).nullable().default(16),
    temperature: z.number().min(0).max(2).nullable().default(1),
    top_p: z.number().gt(0).max(1).nullable().default(1),
    stop: z.union([z.string().min(1).max(256), StopSchema]).nullable().default([]),
    stream: z.boolean().nullable().default(false),
    seed: z.number().int().min(0).max(4_294_967_295).nullable().default(0),
    logprobs: z.number().int().min(0).max(5).nullable().default(null),
    echo: z.boolean().nullable().default(false),
    n: z.literal(1).nullable().optional(),
    best_of: z.literal(1).nullable().optional(),
    frequency_penalty: z.literal(0).nullable().optional(),
    presence_penalty: z.literal(0).nullable().optional(),
    user: z.string().max(256).optional(),
    stream_options: z.object({ include_usage: z.boolean().optional() }).nullable().optional(),
  })
  .openapi('CompletionRequest');

const Logprobs = z
  .object({
    tokens: z.array(z.string()),
    token_logprobs: z.array(z.number().nullable()),
    top_logprobs: z.array(z.record(z.string(), z.number()).nullable()).nullable(),
    text_offset: z.array(z.number()),
  })
  .nullable();

const Completion = z
  .object({
    id: z.string(),
    object: z.literal('text_completion'),
    created: z.number(),
    model: z.string(),
    choices: z.array(z.object({ text: z.string(), index: z.number(), logprobs: Logprobs, finish_reason: z.enum(['stop', 'length']).nullable() })),
    usage: z.object({ prompt_tokens: z.number(), completion_tokens: z.number(), total_tokens: z.number() }).optional(),
  })
  .openapi('Completion');

function toLogprobs(r: GenerateResult, want: number | null): z.infer<typeof Logprobs> {
  if (want == null || !r.logprobs) return null;
  return {
    tokens: r.logprobs.map((t) => t.text),
    token_logprobs: r.logprobs.map((t) => t.logprob),
    top_logprobs: want > 0 ? r.logprobs.map((t) => t.top ?? null) : null,
    text_offset: r.logprobs.map((t) => t.offset),
  };
}

export function openaiRoutes(app: App, d: AppDeps) {
  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/models',
      tags: ['openai'],
      summary: 'Models (OpenAI list shape); use "name" (latest version) or "name@version"',
      responses: {
        200: {
          description: 'models',
          content: {
            'application/json': {
              schema: z.object({
                object: z.literal('list'),
                data: z.array(z.object({ id: z.string(), object: z.literal('model'), created: z.number(), owned_by: z.string() })),
              }),
            },
          },
        },
        ...problems(401),
      },
    }),
    async (c) => {
      const rows = await listModels(d.db, tenantOf(c).id);
      return c.json(
        {
          object: 'list' as const,
          data: rows
            .filter((m) => m.latestVersion !== null)
            .map((m) => ({ id: m.name, object: 'model' as const, created: Math.floor(m.createdAt.getTime() / 1000), owned_by: m.tenantId ? 'tenant' : 'shared' })),
        },
        200,
      );
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/completions',
      tags: ['openai'],
      summary: 'OpenAI-compatible completions (logprobs 0-5, echo, stream)',
      request: { body: { required: true, content: { 'application/json': { schema: CompletionBody } } } },
      responses: {
        200: { description: 'completion, or SSE chunks ending with [DONE]', content: { 'application/json': { schema: Completion }, 'text/event-stream': { schema: z.string() } } },
        ...problems(400, 401, 404, 413, 415, 429, 501, 503),
      },
    }),
    (async (c: Context<AppEnv>) => {
      const b = (c.req as any).valid('json') as z.infer<typeof CompletionBody>;
      const [name, ver] = b.model.split('@') as [string, string | undefined];
      if (b.echo && b.stream) throw new ProblemError(400, 'echo with stream is not supported', { errors: [{ path: 'echo', message: 'not with stream' }] });
      const maxTokens = b.max_tokens ?? 16;
      const prompts = promptsOf(b.prompt);
      const { gen, target } = await admitGeneration(d, c, name, ver === undefined ? null : Number(ver), maxTokens);
      checkPromptIds(prompts, target.config, Array.isArray(b.prompt) && Array.isArray(b.prompt[0]));
      const ac = new AbortController();
      const reqs: GenerateRequest[] = prompts.map((p) => ({
        tenant: tenantOf(c).id,
        target,
        prompt: 'text' in p ? p.text : '',
        ...('ids' in p ? { prompt_ids: p.ids } : {}),
        max_tokens: maxTokens,
        temperature: b.temperature ?? 1,
        top_k: 0,
        top_p: b.top_p ?? 1,
        seed: b.seed ?? 0,
        stop: toStopList(b.stop ?? []),
        logprobs: b.logprobs ?? 0,
        // logprobs: 0 asks for the sampled tokens' log-probabilities with no alternatives (OpenAI).
        token_logprobs: b.logprobs != null,
        echo: b.echo ?? false,
        signal: ac.signal,
      }));
      const id = `cmpl-${crypto.randomBytes(12).toString('hex')}`;
      const created = Math.floor(Date.now() / 1000);
      const modelId = `${target.model}@${target.version}`;
      const usageOf = (rs: GenerateResult[]) => {
        const prompt_tokens = rs.reduce((a, r) => a + r.usage.prompt_tokens, 0);
        const completion_tokens = rs.reduce((a, r) => a + r.usage.completion_tokens, 0);
        return { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens };
      };
      if (!b.stream) {
        // Several prompts run side by side in the model's continuous batch.
        const rs = await Promise.all(reqs.map((r) => gen.generate(r)));
        for (const r of rs) d.metrics.tokensGenerated += r.usage.completion_tokens;
        return c.json(
          {
            id,
            object: 'text_completion' as const,
            created,
            model: modelId,
            choices: rs.map((r, i) => ({ text: (reqs[i]!.echo ? (r.prompt_text ?? reqs[i]!.prompt) : '') + r.text, index: i, logprobs: toLogprobs(r, b.logprobs), finish_reason: r.finish_reason })),
            usage: usageOf(rs),
          },
          200,
        );
      }
      return streamSSE(
        c,
        async (s) => {
          s.onAbort(() => ac.abort());
          const rs = await Promise.all(
            reqs.map(async (req, i) => {
              const piece = (text: string) =>
                s.writeSSE({ data: JSON.stringify({ id, object: 'text_completion', created, model: modelId, choices: [{ text, index: i, logprobs: null, finish_reason: null }] }) });
              let sent = '';
              const r = await gen.generate(req, async (tok) => {
                sent += tok.text;
                await piece(tok.text);
              });
              d.metrics.tokensGenerated += r.usage.completion_tokens;
              const rest = streamRemainder(sent, r.text);
              if (rest) await piece(rest);
              await s.writeSSE({
                data: JSON.stringify({ id, object: 'text_completion', created, model: modelId, choices: [{ text: '', index: i, logprobs: null, finish_reason: r.finish_reason }] }),
              });
              return r;
            }),
          );
          if (b.stream_options?.include_usage) {
            await s.writeSSE({ data: JSON.stringify({ id, object: 'text_completion', created, model: modelId, choices: [], usage: usageOf(rs) }) });
          }
          await s.writeSSE({ data: '[DONE]' });
        },
        async (err, s) => {
          console.error('completion stream failed:', err);
          await s.writeSSE({ data: JSON.stringify({ error: { message: 'generation failed', type: 'server_error' } }) });
        },
      );
    }) as never,
  );
}
