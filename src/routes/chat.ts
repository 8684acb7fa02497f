// OpenAI-compatible POST /v1/chat/completions: the messages are rendered by the model's chat
// template (tokenizer_config.json) and generated through the generation service like every other
// request; streaming sends chat.completion.chunk events ending with [DONE]. A model without a chat
// template answers 400.
import crypto from 'node:crypto';
import { createRoute, z } from '@hono/zod-openapi';
import { streamSSE } from 'hono/streaming';
import type { Context } from 'hono';
import type { App, AppDeps, AppEnv } from './deps.ts';
import { problems, ProblemError } from './problem.ts';
import { quotasOf, tenantOf } from './common.ts';
import { MAX_TEXT } from './schemas.ts';
import { admitGeneration, MAX_TOKENS_HARD, StopSchema, toStopList } from './generate.ts';
import { streamRemainder } from './common.ts';
import { ChatTemplate } from '../model/chat.ts';
import { chatTemplateOf } from '../model/versions.ts';
import type { ChatMessage, GenerateRequest, GenerateResult, TokenLogprob } from '../services.ts';

export const MAX_CHAT_MESSAGES = 256;
/** max_tokens when the request gives none, or the tenant's per-request quota if lower (OpenAI's default is the rest of the context). */
export const DEFAULT_CHAT_MAX_TOKENS = 256;

const TextPart = z.object({ type: z.literal('text'), text: z.string().max(MAX_TEXT) });
const Message = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant'], { message: 'role must be system, developer, user or assistant (tool messages are not supported)' }),
  content: z.union([z.string().max(MAX_TEXT), z.array(TextPart).min(1).max(64)], { message: 'content must be a string or a list of text parts ({type: "text", text})' }),
  name: z.string().max(64).optional(),
});

const ChatBody = z
  .object({
    model: z.string().min(1).max(160).regex(/^[A-Za-z0-9][A-Za-z0-9._-]*(@(0|[1-9]\d{0,6}))?$/, 'model is "name" or "name@version"'),
    messages: z.array(Message).min(1).max(MAX_CHAT_MESSAGES),
    max_tokens: z.number().int().min(1).max(MAX_TOKENS_HARD).nullable().optional(),
    max_completion_tokens: z.number().int().min(1).max(MAX_TOKENS_HARD).nullable().optional(),
    temperature: z.number().min(0).max(2).nullable().default(1),
    top_p: z.number().gt(0).max(1).nullable().default(1),
    stop: z.union([z.string().min(1).max(256), StopSchema]).nullable().default([]),
    stream: z.boolean().nullable().default(false),
    stream_options: z.object({ include_usage: z.boolean().optional() }).nullable().optional(),
    seed: z.number().int().min(0).max(4_294_967_295).nullable().default(0),
    logprobs: z.boolean().nullable().default(false),
    top_logprobs: z.number().int().min(0).max(5).nullable().optional(),
    n: z.literal(1, { message: 'only n = 1 is supported' }).nullable().optional(),
    frequency_penalty: z.literal(0, { message: 'frequency_penalty is not supported (0 only)' }).nullable().optional(),
    presence_penalty: z.literal(0, { message: 'presence_penalty is not supported (0 only)' }).nullable().optional(),
    response_format: z.object({ type: z.literal('text', { message: 'only response_format {type: "text"} is supported' }) }).nullable().optional(),
    tools: z.array(z.unknown()).max(0, { message: 'tools are not supported' }).nullable().optional(),
    tool_choice: z.literal('none', { message: 'tools are not supported' }).nullable().optional(),
    user: z.string().max(256).optional(),
  })
  .refine((b) => !b.top_logprobs || b.logprobs, { message: 'top_logprobs needs logprobs: true', path: ['top_logprobs'] })
  .refine((b) => !(b.logprobs && b.stream), { message: 'logprobs with stream is not supported', path: ['logprobs'] })
  .openapi('ChatCompletionRequest');

const TopLogprob = z.object({ token: z.string(), logprob: z.number(), bytes: z.array(z.number()).nullable() });
const ChatLogprobs = z.object({ content: z.array(TopLogprob.extend({ top_logprobs: z.array(TopLogprob) })).nullable() }).nullable();
const Usage = z.object({ prompt_tokens: z.number(), completion_tokens: z.number(), total_tokens: z.number() });

const ChatCompletion = z
  .object({
    id: z.string(),
    object: z.literal('chat.completion'),
    created: z.number(),
    model: z.string(),
    choices: z.array(
      z.object({
        index: z.number(),
        message: z.object({ role: z.literal('assistant'), content: z.string(), refusal: z.null() }),
        logprobs: ChatLogprobs,
        finish_reason: z.enum(['stop', 'length']),
      }),
    ),
    usage: Usage,
  })
  .openapi('ChatCompletion');

/** OpenAI messages → template messages: text parts joined, developer → system (as OpenAI maps it for older models). */
function toChat(ms: z.infer<typeof Message>[]): ChatMessage[] {
  return ms.map((m) => ({
    role: m.role === 'developer' ? 'system' : m.role,
    content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
  }));
}

const bytesOf = (s: string) => Array.from(new TextEncoder().encode(s));

function toChatLogprobs(r: GenerateResult, want: boolean): z.infer<typeof ChatLogprobs> {
  if (!want || !r.logprobs) return null;
  return {
    content: r.logprobs.map((t: TokenLogprob) => ({
      token: t.text,
      logprob: t.logprob ?? 0,
      bytes: bytesOf(t.text),
      top_logprobs: (t.topList ?? []).map((x) => ({ token: x.text, logprob: x.logprob, bytes: bytesOf(x.text) })),
    })),
  };
}

export function chatRoutes(app: App, d: AppDeps) {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/chat/completions',
      tags: ['openai'],
      summary: "OpenAI-compatible chat completions: the model's chat template renders the messages (stream, logprobs); 400 for a model without one",
      request: { body: { required: true, content: { 'application/json': { schema: ChatBody } } } },
      responses: {
        200: {
          description: 'chat completion, or SSE chat.completion.chunk events ending with [DONE]',
          content: { 'application/json': { schema: ChatCompletion }, 'text/event-stream': { schema: z.string() } },
        },
        ...problems(400, 401, 404, 413, 415, 429, 501, 503),
      },
    }),
    (async (c: Context<AppEnv>) => {
      const b = (c.req as any).valid('json') as z.infer<typeof ChatBody>;
      const [name, ver] = b.model.split('@') as [string, string | undefined];
      const maxTokens = b.max_completion_tokens ?? b.max_tokens ?? Math.min(DEFAULT_CHAT_MAX_TOKENS, quotasOf(d, tenantOf(c)).max_tokens_per_request);
      const { gen, target } = await admitGeneration(d, c, name, ver === undefined ? null : Number(ver), maxTokens);
      // Checked before a stream opens: a model without a (usable) chat template is a 400.
      const tpl = chatTemplateOf(d.config.repoRoot, target.config);
      if (!(tpl instanceof ChatTemplate)) {
        const why = tpl ? `its chat template is unusable: ${tpl.message}` : 'it has no chat template (tokenizer_config.json "chat_template"); use /v1/completions with a prompt';
        throw new ProblemError(400, `model "${target.model}" cannot chat: ${why}`, { errors: [{ path: 'model', message: why }] });
      }
      const ac = new AbortController();
      const wantLogprobs = b.logprobs ?? false;
      const req: GenerateRequest = {
        tenant: tenantOf(c).id,
        target,
        prompt: '',
        messages: toChat(b.messages),
        max_tokens: maxTokens,
        temperature: b.temperature ?? 1,
        top_k: 0,
        top_p: b.top_p ?? 1,
        seed: b.seed ?? 0,
        stop: toStopList(b.stop ?? []),
        logprobs: wantLogprobs ? (b.top_logprobs ?? 0) : 0,
        token_logprobs: wantLogprobs,
        echo: false,
        signal: ac.signal,
      };
      const id = `chatcmpl-${crypto.randomBytes(12).toString('hex')}`;
      const created = Math.floor(Date.now() / 1000);
      const modelId = `${target.model}@${target.version}`;
      const usage = (r: GenerateResult) => ({ prompt_tokens: r.usage.prompt_tokens, completion_tokens: r.usage.completion_tokens, total_tokens: r.usage.prompt_tokens + r.usage.completion_tokens });
      if (!b.stream) {
        const r = await gen.generate(req);
        d.metrics.tokensGenerated += r.usage.completion_tokens;
        return c.json(
          {
            id,
            object: 'chat.completion' as const,
            created,
            model: modelId,
            choices: [{ index: 0, message: { role: 'assistant' as const, content: r.text, refusal: null }, logprobs: toChatLogprobs(r, wantLogprobs), finish_reason: r.finish_reason }],
            usage: usage(r),
          },
          200,
        );
      }
      const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) =>
        JSON.stringify({ id, object: 'chat.completion.chunk', created, model: modelId, choices, ...extra });
      return streamSSE(
        c,
        async (s) => {
          s.onAbort(() => ac.abort());
          await s.writeSSE({ data: chunk([{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]) });
          let sent = '';
          const r = await gen.generate(req, async (tok) => {
            if (tok.text === '') return; // a character still incomplete: its bytes come with a later token
            sent += tok.text;
            await s.writeSSE({ data: chunk([{ index: 0, delta: { content: tok.text }, logprobs: null, finish_reason: null }]) });
          });
          d.metrics.tokensGenerated += r.usage.completion_tokens;
          // Text the decoder held back (an incomplete character at the end) completes the deltas.
          const rest = streamRemainder(sent, r.text);
          if (rest) await s.writeSSE({ data: chunk([{ index: 0, delta: { content: rest }, logprobs: null, finish_reason: null }]) });
          await s.writeSSE({ data: chunk([{ index: 0, delta: {}, logprobs: null, finish_reason: r.finish_reason }]) });
          if (b.stream_options?.include_usage) await s.writeSSE({ data: chunk([], { usage: usage(r) }) });
          await s.writeSSE({ data: '[DONE]' });
        },
        async (err, s) => {
          console.error('chat completion stream failed:', err);
          await s.writeSSE({ data: JSON.stringify({ error: { message: 'generation failed', type: 'server_error' } }) });
        },
      );
    }) as never,
  );
}
