// Candidate scoring for the MeZO protocol: each candidate answer is scored by the summed
// log-likelihood of its tokens given the prompt, the candidate with the highest score wins.
//
// A (prompt, candidate) pair is encoded with the trainer's own `encodeExample` (appendEos: false),
// so the prompt/answer token boundary (`splitPromptCompletion`) and the truncation (prompt cut from
// its start, BOS kept, answer kept) are exactly those of training; the score is the sum of
// log p(target) over the positions whose target is not -1, i.e. the answer tokens only (no EOS).
// Rows are sorted by length and batched R at a time, right-padded (EOS id, keyMask 0) to the
// trainer's length buckets (`bucketLen`); a short last batch is filled with copies of its first
// row (ignored), so only a few (R, T) shapes — and GPU pipelines — occur.
import type { Engine } from '../../src/gpu/engine.ts';
import type { TransformerModel } from '../../src/model/transformer.ts';
import { bucketLen } from '../../src/model/transformer.ts';
import { encodeExample, type TokenizerLike } from '../../src/cola/data.ts';
import { argmax, type TaskExample } from '../../src/eval/tasks.ts';

export interface ScoreResult {
  /** Per example: the summed log-likelihood of each candidate. */
  scores: number[][];
  predictions: number[];
  accuracy: number;
  /** Mean negative log-likelihood per answer token of the CORRECT candidate. */
  nllCorrect: number;
  rows: number;
  seconds: number;
}

interface Row {
  ex: number;
  cand: number;
  ids: number[];
  targets: number[];
}

export async function scoreExamples(
  e: Engine,
  model: TransformerModel,
  tok: TokenizerLike,
  examples: readonly TaskExample[],
  opts: { maxSeqLen: number; rowsPerBatch: number },
): Promise<ScoreResult> {
  const t0 = performance.now();
  const rows: Row[] = [];
  examples.forEach((x, ex) => {
    x.candidates.forEach((c, cand) => {
      const enc = encodeExample(tok, { prompt: x.prompt, completion: c }, { maxSeqLen: opts.maxSeqLen, appendEos: false }, `${x.task}[${x.id}].candidates[${cand}]`);
      rows.push({ ex, cand, ids: enc.ids, targets: enc.targets });
    });
  });
  const order = rows.map((_, i) => i).sort((a, b) => rows[a]!.ids.length - rows[b]!.ids.length);
  const scores = examples.map((x) => new Array<number>(x.candidates.length).fill(NaN));
  const tokCount = examples.map((x) => new Array<number>(x.candidates.length).fill(0));
  const R = opts.rowsPerBatch;
  const V = model.config.vocabSize;
  const padId = tok.eos ?? 0;
  for (let i = 0; i < order.length; i += R) {
    const idx = order.slice(i, i + R);
    const longest = Math.max(...idx.map((k) => rows[k]!.ids.length));
    const T = bucketLen(longest, opts.maxSeqLen);
    const ids = new Int32Array(R * T).fill(padId);
    const mask = new Uint32Array(R * T);
    for (let b = 0; b < R; b++) {
      const r = rows[idx[b] ?? idx[0]!]!;
      for (let t = 0; t < r.ids.length; t++) {
        ids[b * T + t] = r.ids[t]!;
        mask[b * T + t] = 1;
      }
    }
    const gIds = e.upload(ids, [R * T], 'i32');
    const gMask = e.upload(mask, [R, T], 'u32');
    const fwd = model.forward({ B: R, T, ids: gIds, keyMask: gMask }, null, false);
    const lg = model.logits(fwd.hidden);
    fwd.hidden.free();
    const logits = await e.readF32(lg);
    lg.free();
    gIds.free();
    gMask.free();
    idx.forEach((k, b) => {
      const r = rows[k]!;
      let s = 0;
      let n = 0;
      for (let t = 0; t < r.targets.length; t++) {
        const y = r.targets[t]!;
        if (y < 0) continue;
        const off = (b * T + t) * V;
        let m = -Infinity;
        for (let v = 0; v < V; v++) m = Math.max(m, logits[off + v]!);
        let z = 0;
        for (let v = 0; v < V; v++) z += Math.exp(logits[off + v]! - m);
        s += logits[off + y]! - m - Math.log(z);
        n++;
      }
      scores[r.ex]![r.cand] = s;
      tokCount[r.ex]![r.cand] = n;
    });
  }
  const predictions = scores.map((s) => argmax(s));
  let ok = 0;
  let nll = 0;
  let nTok = 0;
  examples.forEach((x, i) => {
    if (predictions[i] === x.label) ok++;
    nll -= scores[i]![x.label]!;
    nTok += tokCount[i]![x.label]!;
  });
  return {
    scores,
    predictions,
    accuracy: examples.length ? ok / examples.length : NaN,
    nllCorrect: nTok ? nll / nTok : NaN,
    rows: rows.length,
    seconds: (performance.now() - t0) / 1000,
  };
}
