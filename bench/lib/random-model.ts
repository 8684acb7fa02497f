// Random-weight models of real architectures' shapes, for speed and memory benchmarks (no hub is
// reachable here; accuracy work uses the pretrained stories260K).
import { configFromHf, configFromLlama2c, type ModelConfig } from '../../src/model/config.ts';
import { expectedTensors, halfTensor, type ModelWeights, type WeightTensor } from '../../src/model/weights.ts';
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

/**
 * Real layouts at real sizes (config.json fields of the releases): Llama 3.2 1B (GQA 32/8, tied
 * 128256-token classifier) and Mistral 7B v0.1 (GQA 32/8, untied; its 4096-token sliding window
 * caps the context, which decode benchmarks stay far below).
 */
export const HF_SHAPES: Record<'1B' | '7B', Record<string, unknown>> = {
  '1B': {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16,
    num_attention_heads: 32, num_key_value_heads: 8, head_dim: 64, vocab_size: 128256, max_position_embeddings: 131072, rms_norm_eps: 1e-5,
    rope_theta: 500000.0, rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
    tie_word_embeddings: true, bos_token_id: 128000, eos_token_id: 128001, torch_dtype: 'bfloat16',
  },
  '7B': {
    architectures: ['MistralForCausalLM'], model_type: 'mistral', hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32,
    num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 32000, max_position_embeddings: 32768, rms_norm_eps: 1e-5, rope_theta: 10000.0,
    sliding_window: 4096, tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2, torch_dtype: 'bfloat16',
  },
};

export function hfShapeConfig(shape: '1B' | '7B'): ModelConfig {
  return configFromHf(HF_SHAPES[shape]);
}

/**
 * Fast random weights for large shapes: matrices ±[2^-7, 2^-5) (weight-like magnitudes) with random
 * mantissas from xorshift32, norms 1. bf16/f16: held as bits (2 bytes a value on the host, no f32
 * copy); f32: bf16-magnitude values with random low bits. Not normal-distributed: for speed and
 * memory measurements only (normalArray would take minutes at 7B).
 */
export function randomWeightsFast(config: ModelConfig, dtype: 'f32' | 'bf16' | 'f16', seed = 1): ModelWeights {
  let x = (0x9e3779b9 ^ seed) >>> 0 || 1;
  const tensors = new Map<string, WeightTensor>();
  for (const [name, shape] of expectedTensors(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    if (shape.length === 1) {
      tensors.set(name, { shape: [...shape], data: new Float32Array(n).fill(/norm|layernorm|ln_/.test(name) ? 1 : 0) });
      continue;
    }
    if (dtype === 'f32') {
      const d = new Float32Array(n);
      const u = new Uint32Array(d.buffer);
      for (let i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
        u[i] = ((x & 0x80000000) | ((0x3c00 + ((x >>> 8) & 0x1ff)) << 16) | (x & 0xffff)) >>> 0;
      }
      tensors.set(name, { shape: [...shape], data: d });
    } else {
      const b = new Uint16Array(n);
      for (let i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
        // bf16: sign | exponent 120..123 | 7 random mantissa bits; f16: sign | exponent 8..11 | 10 random bits.
        b[i] = dtype === 'bf16' ? ((x >>> 16) & 0x8000) | (0x3c00 + ((x >>> 8) & 0x1ff)) : ((x >>> 16) & 0x8000) | (0x2000 + ((x >>> 4) & 0xfff));
      }
      tensors.set(name, halfTensor([...shape], dtype, b));
    }
  }
  return { config, tensors };
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
