// One evaluator: POST /evaluate (the evaluation service, model/service.ts) and the benchmarks'
// candidate scoring (bench/lib/score.ts) find the answer tokens the same way (model/answer.ts), so
// on the same model and examples they give the same accuracy and the same loss per answer token.
// Prompts end inside a word or with a space, where BPE merges across the prompt/answer boundary.
import { beforeAll, describe, expect, test } from 'bun:test';
import { Engine } from '../src/gpu/engine.ts';
import { GpuScheduler } from '../src/gpu/scheduler.ts';
import { answerSequence, splitAnswer } from '../src/model/answer.ts';
import { createMlServices } from '../src/model/service.ts';
import { loadBundledModel } from '../src/model/registry.ts';
import { TransformerModel } from '../src/model/transformer.ts';
import { encodeExample } from '../src/cola/data.ts';
import { REPO_ROOT } from '../src/config.ts';
import type { TaskExample } from '../src/eval/tasks.ts';
import type { ResolvedVersion } from '../src/services.ts';
import { scoreExamples } from '../bench/lib/score.ts';

const target: ResolvedVersion = {
  model: 'stories260K', version: 0, architecture: 'llama',
  config: { tokenizer: 'models/stories260K/tok512.bin' }, path: 'models/stories260K/stories260K.bin', sha256: 'stories260K-v0',
};
const base = loadBundledModel();

const EXAMPLES: TaskExample[] = [
  ['Once upon a time, there was a little', [' girl', ' dog', ' tree'], 0],
  ['The cat sat on the', [' mat', ' sky', ' happy'], 0],
  ['Lily went to the park. She saw a big', [' dog', ' run', ' blue ball'], 2],
  ['One day, Tom ', ['wanted to play', 'the', 'ran'], 1],
  ['She was very hap', ['py', 'pen', 'ly'], 0],
  ['He said, "', ['Hello!"', 'no', 'I am sad."'], 2],
].map(([prompt, candidates, label], i) => ({ task: 'copa', id: String(i), prompt, candidates, label }) as TaskExample);

let e: Engine;
beforeAll(async () => {
  e = await Engine.create();
});

describe('one evaluator', () => {
  test('answer tokens: the trainer and the evaluator split the same way', () => {
    const tok = base.tokenizer;
    for (const x of EXAMPLES) {
      for (const c of x.candidates) {
        const seq = answerSequence(tok, x.prompt, c);
        const enc = encodeExample(tok, { prompt: x.prompt, completion: c }, { maxSeqLen: 256, appendEos: false });
        expect(enc.ids).toEqual(seq.ids);
        // the trainer's targets: position t predicts ids[t + 1], exactly for the answer tokens
        const scored = enc.targets.flatMap((y, t) => (y >= 0 ? [t + 1] : []));
        expect(scored).toEqual(seq.ids.map((_, t) => t).filter((t) => t >= seq.start));
        expect(splitAnswer(tok, x.prompt, c).completion.length).toBe(seq.ids.length - seq.start);
      }
    }
  });

  test('POST /evaluate and bench/lib/score.ts agree on accuracy and loss', async () => {
    const ml = createMlServices(e, new GpuScheduler(e, { trainShare: 0.3 }), REPO_ROOT, { maxLive: 4, kvBytes: 8 << 20 });
    const served = await ml.evaluation.evaluate({ tenant: 't-eval', target, examples: EXAMPLES.map(({ prompt, candidates, label }) => ({ prompt, candidates, label })) });
    const model = TransformerModel.upload(e, base.weights);
    const bench = await scoreExamples(e, model, base.tokenizer, EXAMPLES, { maxSeqLen: 256, rowsPerBatch: 4 });
    expect(served.examples).toBe(EXAMPLES.length);
    expect(served.accuracy).toBe(bench.accuracy);
    // the same answer tokens scored by two forward paths (KV-cache prompt logits vs the training forward)
    expect(Math.abs(served.loss - bench.nllCorrect)).toBeLessThan(1e-3 * Math.max(1, bench.nllCorrect));
    expect(bench.accuracy).toBeGreaterThan(0); // an informative comparison: not every prediction wrong
  }, 300_000);
});
