// Random-weight models of real architectures' shapes, for speed and memory benchmarks (no hub is
// reachable here; accuracy work uses the pretrained stories260K).
import { configFromLlama2c, type ModelConfig } from '../../src/model/config.ts';
import { expectedTensors, type ModelWeights } from '../../src/model/weights.ts';
import { Rng } from '../../src/util/rng.ts';
import type { TextTokenizer, StreamDecoder } from '../../src/model/tokenizer.ts';

export const LLAMA_SHAPES = {
  '15M': { dim: 288, hiddenDim: 768, nLayers: 6, nHeads: 6, nKvHeads: 6, vocabSize: 32000, seqLen: 256 },
  '110M': { dim: 768, hiddenDim: 2048, nLayers: 12, nHeads: 12, nKvHeads: 12, vocabSize: 32000, seqLen: 1024 },
} as const;

/** A llama2.c-style Llama config of the given shape (tied classifier). */
export function llamaConfig(shape: keyof typeof LLAMA_SHAPES): ModelConfig {
  return configFromLlama2c(LLAMA_SHAPES[shape]);
}

/** Weights drawn N(0, 0.02²) (norm weights 1), seeded. */
export function randomWeights(config: ModelConfig, seed = 0): ModelWeights {
  const rng = new Rng(seed);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, shape] of expectedTensors(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = /norm|layernorm|ln_/.test(name) && shape.length === 1 ? new Float32Array(n).fill(1) : rng.normalArray(n, 0.02);
    tensors.set(name, { shape: [...shape], data });
  }
  return { config, tensors };
}

/** A tokenizer for id-level benchmarks: token i prints as "<i>". Only decoding is used. */
export function idTokenizer(vocabSize: number): TextTokenizer {
  const dec = (): StreamDecoder => ({ decodeToken: (id) => `<${id}>`, flush: () => '' });
  return {
    kind: 'hf',
    vocabSize,
    bos: 1,
    eos: null,
    encode: () => {
      throw new Error('idTokenizer cannot encode text');
    },
    decode: (ids) => ids.map((i) => `<${i}>`).join(''),
    createStreamDecoder: dec,
    idToPiece: (id) => `<${id}>`,
  };
}
