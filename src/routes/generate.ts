import { createRoute, z } from '@hono/zod-openapi';
import { streamSSE } from 'hono/streaming';
import type { Context } from 'hono';
import type { App, AppDeps, AppEnv } from './deps.ts';
import { problems, ProblemError, notImplemented } from './problem.ts';
import { ModelName, quotasOf, resolveVersion, tenantOf, VersionNumber } from './common.ts';
import { MAX_TEXT } from './schemas.ts';
import { streamRemainder } from './common.ts';
import type { GenerateRequest, GenerateResult, GenerationService, ResolvedVersion } from '../services.ts';

export const MAX_TOKENS_HARD = 32_768;
export const StopSchema = z.array(z.string().min(1).max(256)).max(8);

const GenerateBody = z
  .object({
    model: ModelName,
    version: VersionNumber.optional(),
    prompt: z.string().max(MAX_TEXT),
    max_tokens: z.number().int().min(1).max(MAX_TOKENS_HARD).default(64),
    temperature: z.number().min(0).max(10).default(0),
    top_k: z.number().int().min(0).max(100_000).default(0),
    top_p: z.number().gt(0).max(1).default(1),
    seed: z.number().int().min(0).max(4_294_967_295).default(0),
    stop: z.union([z.string().min(1).max(256), StopSchema]).default([]),
    stream: z.boolean().default(false),
  })
  .strict()
  .openapi('GenerateRequest');

const GenerateOut = z
  .object({
    model: z.string(),
    version: z.number(),
    text: z.string(),
    token_ids: z.array(z.number()),
    finish_reason: z.enum(['stop', 'length']),
    usage: z.object({ prompt_tokens: z.number(), completion_tokens: z.number() }),
    timing: z.object({ prefill_ms: z.number(), decode_ms: z.number(), tokens_per_s: z.number() }),
  })
  .openapi('GenerateResponse');

/**
 * Shared gate for /generate and /v1/completions: generation wired (501), token quota (429), and
 * room in the tenant's generation queue (429, checked before a stream opens). Slots and queueing
 * are the serving engine's (src/model/serving.ts).
 */
export async function admitGeneration(
  d: AppDeps,
  c: Context<AppEnv>,
  name: string,
  version: number | null | undefined,
  maxTokens: number,
): Promise<{ gen: GenerationService; target: ResolvedVersion }> {
  const t = tenantOf(c);
  const q = quotasOf(d, t);
  if (maxTokens > q.max_tokens_per_request) {
    throw new ProblemError(429, `max_tokens ${maxTokens} is over this tenant's quota of ${q.max_tokens_per_request} tokens per request`, {
      headers: { 'retry-after': '60' },
      type: 'quota-exceeded',
    });
  }
  const r = await resolveVersion(d, t, name, version ?? null);
  const gen = d.services.generation;
  if (!gen) throw notImplemented('generation');
  const room = gen.admissible?.(t.id);
  if (room && !room.ok) {
    d.metrics.generateRejected++;
    throw new ProblemError(429, room.detail, { headers: { 'retry-after': String(room.retryAfterS) }, type: 'overloaded' });
  }
  return { gen, target: r.resolved };
}

export function toStopList(s: string | string[]): string[] {
  return typeof s === 'string' ? [s] : s;
}

export function generateRoutes(app: App, d: AppDeps) {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/generate',
      tags: ['generate'],
      summary: 'Generate from a model version (merged weights); SSE `token` events then `done` with stream: true',
      request: { body: { required: true, content: { 'application/json': { schema: GenerateBody } } } },
      responses: {
        200: {
          description: 'generation (JSON), or an SSE stream when stream: true',
          content: { 'application/json': { schema: GenerateOut }, 'text/event-stream': { schema: z.string().openapi({ description: 'SSE; data: JSON of GenerateEvents[event]' }) } },
        },
        ...problems(400, 401, 404, 413, 415, 429, 501, 503),
      },
    }),
    (async (c: Context<AppEnv>) => {
      const body = (c.req as any).valid('json') as z.infer<typeof GenerateBody>;
      const { gen, target } = await admitGeneration(d, c, body.model, body.version, body.max_tokens);
      const ac = new AbortController();
      const req: GenerateRequest = {
        tenant: tenantOf(c).id,
        target,
        prompt: body.prompt,
        max_tokens: body.max_tokens,
        temperature: body.temperature,
        top_k: body.top_k,
        top_p: body.top_p,
        seed: body.seed,
        stop: toStopList(body.stop),
        logprobs: 0,
        echo: false,
        signal: ac.signal,
      };
      const view = (r: GenerateResult) => ({
        model: target.model,
        version: target.version,
        text: r.text,
        token_ids: r.token_ids,
        finish_reason: r.finish_reason,
        usage: r.usage,
        timing: r.timing,
      });
      if (!body.stream) {
        const r = await gen.generate(req);
        d.metrics.tokensGenerated += r.usage.completion_tokens;
        return c.json(view(r), 200);
      }
      return streamSSE(
        c,
        async (s) => {
          s.onAbort(() => ac.abort());
          let sent = '';
          const r = await gen.generate(req, async (tok) => {
            sent += tok.text;
            await s.writeSSE({ event: 'token', data: JSON.stringify({ text: tok.text, id: tok.id }) });
          });
          // Text the stream decoder held back (a partial character at the end) comes out at the
          // end: one more `token` event with id null, so the events' texts add up to `text`.
          const rest = streamRemainder(sent, r.text);
          if (rest) await s.writeSSE({ event: 'token', data: JSON.stringify({ text: rest, id: null }) });
          d.metrics.tokensGenerated += r.usage.completion_tokens;
          await s.writeSSE({ event: 'done', data: JSON.stringify(view(r)) });
        },
        async (err, s) => {
          console.error('generate stream failed:', err);
          await s.writeSSE({ event: 'error', data: JSON.stringify({ detail: 'generation failed' }) });
        },
      );
    }) as never,
  );
}
