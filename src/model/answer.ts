// Which tokens are a completion's (the "answer tokens"): the one definition used by training
// (cola/data.ts encodeExample), by the evaluation service (POST /evaluate, model/service.ts) and by
// the benchmarks' candidate scoring (bench/lib/score.ts), so that a model's accuracy and loss are
// the same whichever of them measures it.
//
// The prompt and the completion are encoded together, without special tokens, because BPE may
// merge characters across the boundary; the prompt's tokens are the longest common prefix of
// encode(prompt) and encode(prompt + completion), the rest are the answer's. The model reads
// [BOS] (when the tokenizer has one) + prompt + answer, and each answer token is scored from the
// logits at the position before it.

export interface AnswerTokenizer {
  encode(text: string, opts: { bos: boolean }): number[];
  readonly bos: number | null;
}

/** Token ids of a prompt and its completion as they occur in the joined text; `completion` may be empty. */
export function splitAnswer(tok: AnswerTokenizer, prompt: string, completion: string): { prompt: number[]; completion: number[] } {
  const full = tok.encode(prompt + completion, { bos: false });
  const p = prompt.length > 0 ? tok.encode(prompt, { bos: false }) : [];
  let k = 0;
  while (k < p.length && k < full.length && p[k] === full[k]) k++;
  return { prompt: full.slice(0, k), completion: full.slice(k) };
}

/**
 * The sequence the model reads to score `completion` after `prompt`, and where the answer starts:
 * ids[start..] are the answer tokens; ids[t] is scored by the logits at t − 1 (so start ≥ 1 when
 * there is a BOS or a prompt token; a completion scored from nothing has start 0 and its first
 * token cannot be scored: callers refuse or skip it).
 */
export function answerSequence(tok: AnswerTokenizer, prompt: string, completion: string): { ids: number[]; start: number } {
  const s = splitAnswer(tok, prompt, completion);
  const head = tok.bos !== null ? [tok.bos] : [];
  return { ids: [...head, ...s.prompt, ...s.completion], start: head.length + s.prompt.length };
}
