// The generation and evaluation services the HTTP layer calls (src/services.ts interfaces), on the
// serving engine: continuous batching per model version, admission per tenant, and every piece of
// device work as a unit of the GPU scheduler.
import { answerSequence } from './answer.ts';
import type { Engine } from '../gpu/engine.ts';
import { MemoryBudgetError, ShapeError } from '../gpu/engine.ts';
import { DeviceLostError } from '../gpu/context.ts';
import type { GpuScheduler } from '../gpu/scheduler.ts';
import {
  DeviceUnavailableError, ServiceBusyError, UserInputError,
  type ChatMessage, type EvaluationService, type GenerateRequest, type GenerateResult, type GenerationService, type TokenLogprob,
} from '../services.ts';
import { logSoftmax } from './generate.ts';
import { ChatTemplate, ChatTemplateError, encodeChatForTraining, encodeChatPrompt } from './chat.ts';
import { contextLimitNote, type ModelConfig } from './config.ts';
import type { TextTokenizer } from './tokenizer.ts';
import { BusyError, ServingEngine, ServingInputError, type ServingOptions } from './serving.ts';

/** Maps engine errors to the service's error kinds (bad input → 400, busy → 429, device → 503). */
function mapError(e: unknown): never {
  if (e instanceof DeviceLostError) throw new DeviceUnavailableError(e.message);
  if (e instanceof BusyError) throw new ServiceBusyError(e.message, e.retryAfterS);
  if (e instanceof ShapeError || e instanceof MemoryBudgetError || e instanceof ServingInputError) throw new UserInputError(e.message);
  if (e instanceof Error && /TokenizerError|ModelLoadError|ChatTemplateError/.test(e.name)) throw new UserInputError(e.message);
  throw e;
}

export interface MlServices {
  generation: GenerationService;
  evaluation: EvaluationService;
  serving: ServingEngine;
}

export const DEFAULT_SERVING: Omit<ServingOptions, 'prefillChunk'> = {
  maxLive: 32,
  maxQueued: 256,
  kvBytes: 64 << 20,
  modelCacheBytes: 1 << 30,
};

/**
 * Prompt tokens per iteration when not configured. A chunk delays every running decoder by its
 * cost: on CPU drivers an iteration costs ~12 ms plus ~0.6 ms per prompt token (stories260K,
 * lavapipe, bench/serve.ts: chunk 64 → decoders' inter-token gap ×13 while a 400-token prompt is
 * admitted, chunk 16 → ×4, the prompt's own prefill 450 → 600 ms); on GPUs a token costs little.
 */
export function defaultPrefillChunk(e: Engine): number {
  return e.ctx.info.isSoftware ? 16 : 256;
}

export function createMlServices(e: Engine, sched: GpuScheduler, repoRoot: string, opts: Partial<ServingOptions> = {}): MlServices {
  const o = Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)) as Partial<ServingOptions>;
  const serving = new ServingEngine(e, sched, repoRoot, { ...DEFAULT_SERVING, prefillChunk: defaultPrefillChunk(e), ...o });

  const generation: GenerationService = {
    admissible: (tenant) => serving.admissible(tenant),
    async generate(req: GenerateRequest, onToken) {
      try {
        const { tokenizer: tok, config, chat } = await serving.modelInfo(req.tenant, req.target);
        const promptIds = promptIdsOf(req, tok, config, chat);
        const { result: r, live } = await serving.generate(
          req.tenant,
          req.target,
          promptIds,
          { maxTokens: req.max_tokens, temperature: req.temperature, topK: req.top_k, topP: req.top_p, seed: req.seed, stop: req.stop, eosIds: config.eosTokenIds },
          { onToken, topLogprobs: req.logprobs, isAborted: () => !!req.signal?.aborted },
          req.signal,
        );
        try {
          const out: GenerateResult = {
            text: r.text,
            token_ids: r.tokenIds,
            finish_reason: r.finishReason,
            usage: { prompt_tokens: promptIds.length, completion_tokens: r.tokenIds.length },
            timing: { prefill_ms: r.timing.prefillMs, decode_ms: r.timing.decodeMs, tokens_per_s: r.timing.tokensPerS },
          };
          if (req.logprobs > 0 || req.echo || req.token_logprobs) {
            const lp: TokenLogprob[] = [];
            let offset = 0;
            const piece = (id: number) => tok.decode([id]);
            if (req.echo) {
              // Prompt tokens' log-probabilities from one batched forward over the prompt (one unit).
              const V = live.model.config.vocabSize;
              const logits = await serving.withModel(req.tenant, req.target, (m) => m.generator.promptLogits(promptIds));
              const textIds = promptIds.filter((id) => id !== tok.bos);
              let prev: number | null = null;
              for (let t = 0; t < promptIds.length; t++) {
                const id = promptIds[t]!;
                if (id === tok.bos && t === 0) {
                  prev = t;
                  continue;
                }
                const s = prev === null ? null : logSoftmax(logits.subarray(prev * V, (prev + 1) * V));
                const text = piece(id);
                lp.push({ id, text, logprob: s ? s[id]! : null, top: s && req.logprobs ? topMap(s, req.logprobs, piece) : undefined, offset });
                offset += text.length;
                prev = t;
              }
              out.prompt_text = tok.decode(textIds);
            }
            r.tokenIds.forEach((id, i) => {
              const text = piece(id);
              const top = r.topLogprobs?.[i];
              lp.push({
                id, text, logprob: r.logprobs[i]!, offset,
                top: top ? Object.fromEntries(top.map((x) => [piece(x.id), x.logprob])) : undefined,
                topList: top?.map((x) => ({ id: x.id, text: piece(x.id), logprob: x.logprob })),
              });
              offset += text.length;
            });
            out.logprobs = lp;
          }
          return out;
        } finally {
          serving.cache.unpin(live);
        }
      } catch (err) {
        mapError(err);
      }
    },
  };

  const evaluation: EvaluationService = {
    async evaluate({ tenant, target, examples, signal }) {
      try {
        /** Σ log p(assistant tokens) of a chat and their count: one scheduler unit per conversation. */
        const scoreChat = (messages: ChatMessage[]): Promise<{ lp: number; n: number }> =>
          serving.withModel(tenant, target, async (live) => {
            const tpl = live.loaded.chat;
            if (!(tpl instanceof ChatTemplate)) throw new UserInputError(noChatMessage(target.model, tpl));
            const { ids, assistant } = encodeChatForTraining(live.loaded.tokenizer, tpl, messages);
            const V = live.model.config.vocabSize;
            if (ids.length > live.model.config.maxSeqLen) throw new UserInputError(`a conversation of ${ids.length} tokens exceeds the model's context of ${live.model.config.maxSeqLen}${contextLimitNote(live.model.config)}`);
            const logits = await live.generator.promptLogits(ids);
            let lp = 0;
            let n = 0;
            for (let t = 1; t < ids.length; t++) {
              if (!assistant[t]) continue;
              lp += logSoftmax(logits.subarray((t - 1) * V, t * V))[ids[t]!]!;
              n++;
            }
            return { lp, n };
          });
        /** Σ log p(completion tokens | prompt) and the token count: one scheduler unit per scored sequence. */
        const score = (prompt: string, completion: string): Promise<{ lp: number; n: number }> =>
          serving.withModel(tenant, target, async (live) => {
            const V = live.model.config.vocabSize;
            // The answer tokens as training and bench/lib/score.ts find them (model/answer.ts).
            const { ids: full, start } = answerSequence(live.loaded.tokenizer, prompt, completion);
            const k = Math.max(1, start); // a first token with nothing before it cannot be scored
            if (k >= full.length) throw new UserInputError(`an example's completion ${JSON.stringify(completion.slice(0, 40))} encodes to no tokens after its prompt`);
            if (full.length > live.model.config.maxSeqLen) throw new UserInputError(`an example of ${full.length} tokens exceeds the model's context of ${live.model.config.maxSeqLen}`);
            const logits = await live.generator.promptLogits(full);
            let lp = 0;
            for (let t = k; t < full.length; t++) lp += logSoftmax(logits.subarray((t - 1) * V, t * V))[full[t]!]!;
            return { lp, n: full.length - k };
          });
        let correct = 0;
        let classified = 0;
        let nll = 0;
        let tokens = 0;
        for (const ex of examples) {
          if (signal?.aborted) break;
          if ('candidates' in ex) {
            const scores = [];
            for (const c of ex.candidates) scores.push(await score(ex.prompt, c));
            let best = 0;
            for (let i = 1; i < scores.length; i++) if (scores[i]!.lp > scores[best]!.lp) best = i;
            if (best === ex.label) correct++;
            classified++;
            nll -= scores[ex.label]!.lp;
            tokens += scores[ex.label]!.n;
          } else if ('messages' in ex) {
            const s = await scoreChat(ex.messages);
            nll -= s.lp;
            tokens += s.n;
          } else if ('completion' in ex) {
            const s = await score(ex.prompt, ex.completion);
            nll -= s.lp;
            tokens += s.n;
          } else {
            const s = await score('', ex.text);
            nll -= s.lp;
            tokens += s.n;
          }
        }
        return { accuracy: classified ? correct / classified : undefined, loss: tokens ? nll / tokens : NaN, examples: examples.length };
      } catch (err) {
        mapError(err);
      }
    },
  };

  return { generation, evaluation, serving };
}

/** Why a model cannot chat: no template, or an unusable one. */
function noChatMessage(model: string, tpl: ChatTemplateError | null): string {
  return tpl
    ? `model "${model}" has an unusable chat template: ${tpl.message}`
    : `model "${model}" has no chat template (tokenizer_config.json "chat_template"); use /v1/completions with a prompt`;
}

/**
 * The prompt's token ids: token ids as given (checked against the model's and the tokenizer's
 * vocabulary), a chat rendered by the template, or the text encoded with BOS. A prompt that leaves
 * no room in the context is refused here, with the reason when a sliding window or dynamic RoPE
 * scaling sets the context.
 */
function promptIdsOf(req: GenerateRequest, tok: TextTokenizer, config: ModelConfig, chat: ChatTemplate | ChatTemplateError | null): number[] {
  let ids: number[];
  if (req.messages) {
    if (!(chat instanceof ChatTemplate)) throw new UserInputError(noChatMessage(req.target.model, chat));
    ids = encodeChatPrompt(tok, chat, req.messages);
  } else if (req.prompt_ids) {
    ids = req.prompt_ids;
    const limit = Math.min(config.vocabSize, tok.vocabSize);
    const bad = ids.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= limit);
    if (bad >= 0) {
      throw new UserInputError(`prompt token id ${ids[bad]} at index ${bad} is outside the vocabulary (ids 0..${limit - 1}${tok.vocabSize < config.vocabSize ? `: the tokenizer has ${tok.vocabSize} tokens` : ''})`);
    }
  } else {
    ids = tok.encode(req.prompt, { bos: true });
  }
  if (ids.length === 0) throw new UserInputError('the prompt has no tokens');
  if (ids.length >= config.maxSeqLen) {
    throw new UserInputError(`prompt of ${ids.length} tokens leaves no room in the model's context of ${config.maxSeqLen}${contextLimitNote(config)}`);
  }
  return ids;
}

function topMap(s: Float64Array, k: number, piece: (id: number) => string): Record<string, number> {
  const idx = Array.from(s.keys()).sort((a, b) => s[b]! - s[a]! || a - b).slice(0, k);
  return Object.fromEntries(idx.map((i) => [piece(i), s[i]!]));
}
