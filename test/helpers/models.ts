// Builders shared by the model tests (model.families, model.half): a tokenizer that prints ids,
// greedy sampling options, and LoRA(q, v) adapters on the device.
import type { Engine } from '../../src/gpu/engine.ts';
import type { ModelConfig } from '../../src/model/config.ts';
import type { SamplingOptions } from '../../src/model/generate.ts';
import type { LoraWeights } from '../../src/model/transformer.ts';
import type { TextTokenizer } from '../../src/model/tokenizer.ts';

/** A tokenizer that prints ids (the tiny checkpoints have none, except Qwen2's). */
export function idTokenizer(vocab: number): TextTokenizer {
  return {
    kind: 'hf', vocabSize: vocab, bos: null, eos: null,
    encode: () => { throw new Error('ids only'); },
    decode: (ids) => ids.map((i) => `<${i}>`).join(''),
    createStreamDecoder: () => ({ decodeToken: (id) => `<${id}>`, flush: () => '' }),
    idToPiece: (id) => `<${id}>`,
  };
}

/** Greedy decoding of 10 tokens, no stop condition. */
export const greedy: SamplingOptions = { maxTokens: 10, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [], stopAtEos: false };

/**
 * LoRA on q and v of every layer, rank r, scale 2: `values(layer, module, out)` gives A (r, dim) and
 * B (out, r) on the host; they are uploaded here.
 */
export function loraQV(e: Engine, c: ModelConfig, r: number, values: (layer: number, m: 'q' | 'v', out: number) => { a: Float32Array; b: Float32Array }): LoraWeights {
  const modules: LoraWeights['modules'] = new Map();
  for (let i = 0; i < c.nLayers; i++) {
    for (const m of ['q', 'v'] as const) {
      const out = m === 'q' ? c.nHeads * c.headDim : c.nKvHeads * c.headDim;
      const { a, b } = values(i, m, out);
      modules.set(`${i}.${m}`, { a: e.upload(a, [r, c.dim]), b: e.upload(b, [out, r]) });
    }
  }
  return { scale: 2, modules };
}
