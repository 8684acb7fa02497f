// The Llama-layout families (Llama with rope_scaling llama3 / linear / dynamic, Qwen2, Mistral,
// SmolLM2, TinyLlama): real checkpoints' config.json files load; RoPE inverse frequencies equal
// transformers' bit for bit; every tiny random checkpoint matches its PyTorch golden
// (scripts/goldens/llama_families.py) in the training forward/backward with LoRA(q, v), and in
// every generation path (batch-1 layered and one-dispatch decoders, the paged continuous batch).
import { beforeAll, describe, expect, test } from 'bun:test';
import { join } from 'node:path';
import { Engine } from '../src/gpu/engine.ts';
import { GpuScheduler } from '../src/gpu/scheduler.ts';
import { ConfigError, configFromHf, configToHf, contextLimitNote, type ModelConfig } from '../src/model/config.ts';
import { loadHfWeights } from '../src/model/hf.ts';
import { modelInvFreq, ropeInvFreq } from '../src/model/rope.ts';
import { TransformerModel, type LoraWeights } from '../src/model/transformer.ts';
import { Generator, TokenStream, logSoftmax, type GenerateResult, type SamplingOptions } from '../src/model/generate.ts';
import { KvPool } from '../src/model/kvpool.ts';
import { DecodeBatch, type BatchSequence } from '../src/model/batcher.ts';
import type { TextTokenizer } from '../src/model/tokenizer.ts';
import { goldenTensor, readGolden, type Golden } from './golden/read.ts';
import { diff, expectClose } from './helpers/compare.ts';

const GOLDEN = join(import.meta.dir, 'golden');

// ------------------------------------------------------------------------------------ config.json

// config.json of public checkpoints (the fields that matter, transcribed from the releases).
const REAL: Record<string, Record<string, unknown>> = {
  'SmolLM2-135M': {
    architectures: ['LlamaForCausalLM'], attention_bias: false, attention_dropout: 0.0, bos_token_id: 0, eos_token_id: 0, head_dim: 64,
    hidden_act: 'silu', hidden_size: 576, initializer_range: 0.041666666666666664, intermediate_size: 1536, is_llama_config: true,
    max_position_embeddings: 8192, mlp_bias: false, model_type: 'llama', num_attention_heads: 9, num_hidden_layers: 30, num_key_value_heads: 3,
    pretraining_tp: 1, rms_norm_eps: 1e-5, rope_interleaved: false, rope_scaling: null, rope_theta: 100000, tie_word_embeddings: true,
    torch_dtype: 'bfloat16', transformers_version: '4.40.1', use_cache: true, vocab_size: 49152,
  },
  'TinyLlama-1.1B-Chat-v1.0': {
    architectures: ['LlamaForCausalLM'], attention_bias: false, bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu', hidden_size: 2048,
    initializer_range: 0.02, intermediate_size: 5632, max_position_embeddings: 2048, model_type: 'llama', num_attention_heads: 32,
    num_hidden_layers: 22, num_key_value_heads: 4, pretraining_tp: 1, rms_norm_eps: 1e-5, rope_scaling: null, rope_theta: 10000.0,
    tie_word_embeddings: false, torch_dtype: 'bfloat16', transformers_version: '4.35.0', use_cache: true, vocab_size: 32000,
  },
  'Llama-3.2-1B-Instruct': {
    architectures: ['LlamaForCausalLM'], attention_bias: false, attention_dropout: 0.0, bos_token_id: 128000, eos_token_id: [128001, 128008, 128009],
    head_dim: 64, hidden_act: 'silu', hidden_size: 2048, initializer_range: 0.02, intermediate_size: 8192, max_position_embeddings: 131072,
    mlp_bias: false, model_type: 'llama', num_attention_heads: 32, num_hidden_layers: 16, num_key_value_heads: 8, pretraining_tp: 1,
    rms_norm_eps: 1e-5, rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
    rope_theta: 500000.0, tie_word_embeddings: true, torch_dtype: 'bfloat16', transformers_version: '4.45.0.dev0', use_cache: true, vocab_size: 128256,
  },
  'Qwen2.5-0.5B-Instruct': {
    architectures: ['Qwen2ForCausalLM'], attention_dropout: 0.0, bos_token_id: 151643, eos_token_id: 151645, hidden_act: 'silu', hidden_size: 896,
    initializer_range: 0.02, intermediate_size: 4864, max_position_embeddings: 32768, max_window_layers: 21, model_type: 'qwen2',
    num_attention_heads: 14, num_hidden_layers: 24, num_key_value_heads: 2, rms_norm_eps: 1e-6, rope_theta: 1000000.0, sliding_window: 32768,
    tie_word_embeddings: true, torch_dtype: 'bfloat16', transformers_version: '4.43.1', use_cache: true, use_sliding_window: false, vocab_size: 151936,
  },
  'Mistral-7B-v0.1': {
    architectures: ['MistralForCausalLM'], bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu', hidden_size: 4096, initializer_range: 0.02,
    intermediate_size: 14336, max_position_embeddings: 32768, model_type: 'mistral', num_attention_heads: 32, num_hidden_layers: 32,
    num_key_value_heads: 8, rms_norm_eps: 1e-5, rope_theta: 10000.0, sliding_window: 4096, tie_word_embeddings: false, torch_dtype: 'bfloat16',
    transformers_version: '4.34.0.dev0', use_cache: true, vocab_size: 32000,
  },
  'Mistral-7B-v0.3': {
    architectures: ['MistralForCausalLM'], attention_dropout: 0.0, bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu', hidden_size: 4096,
    initializer_range: 0.02, intermediate_size: 14336, max_position_embeddings: 32768, model_type: 'mistral', num_attention_heads: 32,
    num_hidden_layers: 32, num_key_value_heads: 8, rms_norm_eps: 1e-5, rope_theta: 1000000.0, sliding_window: null, tie_word_embeddings: false,
    torch_dtype: 'bfloat16', transformers_version: '4.42.0.dev0', use_cache: true, vocab_size: 32768,
  },
};

describe('config.json of real checkpoints', () => {
  const want: Record<string, Partial<ModelConfig>> = {
    'SmolLM2-135M': { family: 'llama', arch: 'llama', nKvHeads: 3, headDim: 64, tiedEmbeddings: true, ropeTheta: 100000, ropeScaling: null, maxSeqLen: 8192, eosTokenIds: [0] },
    'TinyLlama-1.1B-Chat-v1.0': { family: 'llama', nKvHeads: 4, tiedEmbeddings: false, maxSeqLen: 2048, qkvBias: false },
    'Llama-3.2-1B-Instruct': {
      family: 'llama', nKvHeads: 8, tiedEmbeddings: true, maxSeqLen: 131072, eosTokenId: 128001, eosTokenIds: [128001, 128008, 128009],
      ropeScaling: { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
    },
    'Qwen2.5-0.5B-Instruct': { family: 'qwen2', arch: 'llama', nKvHeads: 2, headDim: 64, qkvBias: true, oBias: false, mlpBias: false, tiedEmbeddings: true, normEps: 1e-6, slidingWindow: null, maxSeqLen: 32768 },
    // v0.1: the 4096-token sliding window caps the context (sequences within one window are exact).
    'Mistral-7B-v0.1': { family: 'mistral', nKvHeads: 8, maxSeqLen: 4096, maxPositionEmbeddings: 32768, slidingWindow: { size: 4096, fromLayer: 0 } },
    'Mistral-7B-v0.3': { family: 'mistral', maxSeqLen: 32768, slidingWindow: null, ropeTheta: 1e6 },
  };
  for (const [name, json] of Object.entries(REAL)) {
    test(`${name} loads, and configToHf round-trips it`, () => {
      const c = configFromHf(json);
      expect(c).toMatchObject(want[name]!);
      expect(configFromHf(configToHf(c))).toEqual(c);
      expect(configToHf(c).model_type).toBe(json.model_type as string);
    });
  }

  test('rope_parameters (transformers v5) is read like rope_theta + rope_scaling', () => {
    const { rope_scaling: rs, rope_theta, ...rest } = REAL['Llama-3.2-1B-Instruct']!;
    const c = configFromHf({ ...rest, rope_parameters: { ...(rs as object), rope_theta } });
    expect(c).toEqual(configFromHf(REAL['Llama-3.2-1B-Instruct']!));
  });

  test('HF class defaults: an absent num_key_value_heads is 8 for Mistral (null: the head count); absent sliding_window is 4096', () => {
    const { num_key_value_heads: _, sliding_window: __, ...m } = REAL['Mistral-7B-v0.1']!;
    expect(configFromHf(m).nKvHeads).toBe(8);
    expect(configFromHf({ ...m, num_key_value_heads: null }).nKvHeads).toBe(32);
    expect(configFromHf(m).maxSeqLen).toBe(4096);
    // Qwen2 with use_sliding_window from layer 21: capped too; a window >= the context changes nothing.
    const q = REAL['Qwen2.5-0.5B-Instruct']!;
    expect(configFromHf({ ...q, use_sliding_window: true, sliding_window: 4096 })).toMatchObject({ maxSeqLen: 4096, slidingWindow: { size: 4096, fromLayer: 21 } });
    expect(configFromHf({ ...q, use_sliding_window: true, sliding_window: 32768 }).slidingWindow).toBeNull();
  });

  test('a context set by a sliding window or dynamic RoPE says so when it refuses a longer prompt', () => {
    expect(contextLimitNote(configFromHf(REAL['Mistral-7B-v0.1']!))).toMatch(/sliding_window 4096 < max_position_embeddings 32768: sliding-window attention is not implemented/);
    expect(contextLimitNote(loadHfWeights(join(GOLDEN, 'tiny-llama-dynamic')).config)).toMatch(/rope_scaling "dynamic": HF rescales RoPE only past max_position_embeddings/);
    expect(contextLimitNote(configFromHf(REAL['Mistral-7B-v0.3']!))).toBe('');
    // The tiny Mistral (window 24 < 64 positions) serves 24 positions: 24 prompt tokens leave no room.
    const m = loadHfWeights(join(GOLDEN, 'tiny-mistral')).config;
    expect(m.maxSeqLen).toBe(24);
    expect(() => new TokenStream(idTokenizer(64), new Array(24).fill(5), greedy, {}, m.maxSeqLen)).toThrow(/context of 24/);
  });

  const base = REAL['TinyLlama-1.1B-Chat-v1.0']!;
  const bad: [string, Record<string, unknown>, RegExp][] = [
    ['yarn', { ...base, rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 2048 } }, /rope_type "yarn" is not supported/],
    ['longrope', { ...base, rope_scaling: { type: 'longrope', short_factor: [1], long_factor: [1] } }, /"longrope" is not supported/],
    ['llama3 without its keys', { ...base, rope_scaling: { rope_type: 'llama3', factor: 8 } }, /needs "low_freq_factor"/],
    ['llama3 high <= low', { ...base, rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 4, high_freq_factor: 1, original_max_position_embeddings: 8 } }, /must be greater/],
    ['linear without factor', { ...base, rope_scaling: { type: 'linear' } }, /needs "factor"/],
    ['both rope keys', { ...base, rope_scaling: { type: 'linear', factor: 2 }, rope_parameters: { rope_type: 'default' } }, /both rope_scaling and rope_parameters/],
    ['partial rotary', { ...base, partial_rotary_factor: 0.5 }, /partial RoPE/],
    ['gelu act', { ...base, hidden_act: 'gelu' }, /silu/],
    ['eos outside vocab', { ...base, eos_token_id: [2, 40000] }, /eos_token_id 40000 is outside/],
  ];
  for (const [name, json, re] of bad) {
    test(`refused: ${name}`, () => {
      expect(() => configFromHf(json)).toThrow(ConfigError);
      expect(() => configFromHf(json)).toThrow(re);
    });
  }
});

// ------------------------------------------------------------------------- RoPE inverse frequencies

/** Distance in units in the last place between f32 arrays of positive values. */
function ulpDiff(a: Float32Array, b: Float32Array): number[] {
  expect(a.length).toBe(b.length);
  const ia = new Int32Array(a.buffer, a.byteOffset, a.length);
  const ib = new Int32Array(Float32Array.from(b).buffer);
  return Array.from(ia, (x, i) => Math.abs(x - ib[i]!));
}

describe('RoPE inverse frequencies = transformers (f32, within 1 ulp)', () => {
  const g = readGolden(join(GOLDEN, 'rope_inv_freq.gld'), { golden: 'rope_inv_freq', goldenVersion: 1 });
  const meta = g.header.meta as Record<string, { config: Record<string, unknown>; seq_len: number | null }>;
  for (const [name, { config, seq_len }] of Object.entries(meta)) {
    test(name, () => {
      const want = goldenTensor(g, name, 'f32');
      const D = (config.head_dim as number | undefined) ?? (config.hidden_size as number) / (config.num_attention_heads as number);
      const c = configFromHf({ model_type: 'llama', intermediate_size: 8, num_hidden_layers: 1, vocab_size: 8, ...config });
      const got = ropeInvFreq(D, c.ropeTheta, c.ropeScaling, c.maxPositionEmbeddings, seq_len ?? undefined);
      // Every step is one f32 rounding of the same operation. The one difference: θ^x is rounded
      // correctly here (as glibc's powf, which llama2.c uses), while torch's vectorised powf (SLEEF,
      // 1-ulp accurate) sometimes rounds the other way; so ≤ 1 ulp, and exact in all but a few.
      const ulps = ulpDiff(got, want);
      expect(Math.max(...ulps)).toBeLessThanOrEqual(1);
      expect(ulps.filter((u) => u > 0).length).toBeLessThanOrEqual(4);
      if (seq_len === null || seq_len <= c.maxPositionEmbeddings) expect(Array.from(modelInvFreq(c)!)).toEqual(Array.from(got));
    });
  }
  test('the scalings really change the frequencies (llama3: three regimes; linear: all; dynamic: only beyond the context)', () => {
    const plain = ropeInvFreq(64, 500000, null, 131072);
    const l3 = goldenTensor(g, 'llama3_2_1b', 'f32');
    const kept = l3.filter((v, i) => v === plain[i]!).length;
    const divided = l3.filter((v, i) => v === Math.fround(plain[i]! / 32)).length;
    expect(kept).toBeGreaterThan(0);
    expect(divided).toBeGreaterThan(0);
    expect(kept + divided).toBeLessThan(32); // the rest are smoothed
    expect(Array.from(goldenTensor(g, 'dynamic_x2_within', 'f32'))).toEqual(Array.from(ropeInvFreq(128, 10000, null, 4096)));
    expect(goldenTensor(g, 'dynamic_x2_beyond_8192', 'f32')[5]).toBeLessThan(goldenTensor(g, 'dynamic_x2_within', 'f32')[5]!);
  });
});

// --------------------------------------------------------------------------- tiny models vs goldens

// `fused`: also run the one-dispatch decoders (CPU drivers). Each compiles its own pipelines (seconds
// on lavapipe with a cold shader cache), so they run for the two scaled-RoPE models;
// the RoPE code they share with the others is the same.
const FAMILIES = [
  { name: 'llama3', family: 'llama', fused: true },
  { name: 'llama_linear', family: 'llama', fused: true },
  { name: 'llama_dynamic', family: 'llama', fused: false },
  { name: 'qwen2', family: 'qwen2', fused: false },
  { name: 'mistral', family: 'mistral', fused: false },
  { name: 'smollm2', family: 'llama', fused: false },
  { name: 'tinyllama', family: 'llama', fused: false },
] as const;

let e: Engine;
beforeAll(async () => {
  e = await Engine.create();
});

function load(name: string) {
  const g = readGolden(join(GOLDEN, `tiny_${name}.gld`), { golden: `tiny_${name}`, goldenVersion: 1 });
  const weights = loadHfWeights(join(GOLDEN, `tiny-${name.replace('_', '-')}`));
  return { g, weights };
}

function maxAbs(x: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]!));
  return m;
}

/** Training forward with LoRA(q, v) from the golden: logits, loss, gradients. */
async function trainingPass(model: TransformerModel, g: Golden) {
  const c = model.config;
  const B = 2, T = 16, r = 4;
  const modules: LoraWeights['modules'] = new Map();
  for (let i = 0; i < c.nLayers; i++) {
    for (const m of ['q', 'v']) {
      const a = goldenTensor(g, `layers.${i}.${m}.lora_A`, 'f32');
      const b = goldenTensor(g, `layers.${i}.${m}.lora_B`, 'f32');
      modules.set(`${i}.${m}`, { a: e.upload(a, [r, c.dim]), b: e.upload(b, [b.length / r, r]) });
    }
  }
  const lora: LoraWeights = { scale: 2, modules };
  const batch = {
    B, T,
    ids: e.upload(goldenTensor(g, 'input_ids', 'i32', [B, T]), [B * T], 'i32'),
    targets: e.upload(goldenTensor(g, 'targets', 'i32', [B, T]), [B * T], 'i32'),
    keyMask: e.upload(Uint32Array.from(goldenTensor(g, 'key_mask', 'i32', [B, T])), [B, T], 'u32'),
  };
  const fwd = model.forward(batch, lora, false);
  const logits = await e.readF32(model.logits(fwd.hidden));
  const base = model.forward(batch, null, false);
  const logitsBase = await e.readF32(model.logits(base.hidden));
  const { loss, grads } = model.lossAndGrads(batch, lora);
  const out = { logits, logitsBase, loss: (await e.readF32(loss))[0]!, grads: new Map<string, { dA: Float32Array; dB: Float32Array }>() };
  for (const [k, gr] of grads) out.grads.set(k, { dA: await e.readF32(gr.dA), dB: await e.readF32(gr.dB) });
  return out;
}

describe('tiny checkpoints vs PyTorch goldens: training forward/backward with LoRA(q, v)', () => {
  for (const f of FAMILIES) {
    test(`${f.name}: logits, loss and every LoRA gradient`, async () => {
      const { g, weights } = load(f.name);
      expect(weights.config.family).toBe(f.family);
      expect(Array.from(modelInvFreq(weights.config)!)).toEqual(Array.from(goldenTensor(g, 'inv_freq', 'f32')));
      const model = TransformerModel.upload(e, weights);
      const r = await trainingPass(model, g);
      // PyTorch f32 vs f64 differs by ≤ 1.5e-5 on these logits (meta.f32_vs_f64, |logit| ≤ ~15); our
      // kernels sum in other orders over ≤ 64 terms, 2 layers: 1e-4 + 1e-5·|x|, as for stories260K.
      expectClose(r.logits, goldenTensor(g, 'logits', 'f32'), 1e-4, 1e-5, `${f.name} logits`);
      expectClose(r.logitsBase, goldenTensor(g, 'logits_base', 'f32'), 1e-4, 1e-5, `${f.name} logits without LoRA`);
      // Mean of ~25 log-probabilities: f32 error ~1e-6; allow 1e-5.
      expect(Math.abs(r.loss - goldenTensor(g, 'loss', 'f32')[0]!)).toBeLessThan(1e-5);
      expect(r.grads.size).toBe(2 * weights.config.nLayers);
      for (const [key, gr] of r.grads) {
        const [layer, m] = key.split('.');
        for (const [which, got] of [['A', gr.dA], ['B', gr.dB]] as const) {
          const want = goldenTensor(g, `grad.layers.${layer}.${m}.lora_${which}`, 'f32');
          // PyTorch f32 vs f64: ≤ 6.2e-6 of the largest entry; allow 2e-4 of it (as for stories260K).
          expect(diff(got, want).maxAbs).toBeLessThanOrEqual(2e-4 * maxAbs(want));
        }
      }
      model.free();
    });
  }

  test('the goldens can fail: ignoring rope_scaling (plain RoPE) misses the llama3 and linear logits', async () => {
    for (const name of ['llama3', 'llama_linear']) {
      const { g, weights } = load(name);
      const plain = TransformerModel.upload(e, { ...weights, config: { ...weights.config, ropeScaling: null } });
      const r = await trainingPass(plain, g);
      expect(diff(r.logitsBase, goldenTensor(g, 'logits_base', 'f32')).maxAbs).toBeGreaterThan(1e-2);
      plain.free();
    }
  });
});

/** A tokenizer that prints ids (the tiny checkpoints have none, except Qwen2's). */
function idTokenizer(vocab: number): TextTokenizer {
  return {
    kind: 'hf', vocabSize: vocab, bos: null, eos: null,
    encode: () => { throw new Error('ids only'); },
    decode: (ids) => ids.map((i) => `<${i}>`).join(''),
    createStreamDecoder: () => ({ decodeToken: (id) => `<${id}>`, flush: () => '' }),
    idToPiece: (id) => `<${id}>`,
  };
}

const greedy: SamplingOptions = { maxTokens: 10, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [], stopAtEos: false };

/** The golden's greedy continuation: exact ids, and log-probs within 1e-4 of PyTorch's f64 ones. */
function expectGreedy(what: string, r: GenerateResult, g: Golden, V: number) {
  const prompt = Array.from(goldenTensor(g, 'greedy_prompt', 'i32'));
  const want = Array.from(goldenTensor(g, 'greedy_ids', 'i32'));
  const gl = goldenTensor(g, 'greedy_logits', 'f32');
  expect(r.tokenIds).toEqual(want); // every step's margin is ≥ 1e-3 (meta.greedy_min_margin)
  r.logprobs.forEach((lp, k) => {
    const t = prompt.length - 1 + k;
    const ref = logSoftmax(gl.subarray(t * V, (t + 1) * V))[want[k]!]!;
    // Log-probs through the KV cache vs the f64 full forward: 1e-4, as the logits.
    if (Math.abs(lp - ref) >= 1e-4) throw new Error(`${what}: step ${k} logprob ${lp} vs ${ref}`);
  });
}

describe('the fused layer products in the continuous batch (forwardRows, ≤ 8 rows)', () => {
  // Llama (GQA) and Qwen2 (q/k/v biases). Prefill chunks of 1 row keep iterations at ≤ 3 rows, so
  // few pipeline variants get compiled on lavapipe.
  for (const name of ['llama3', 'qwen2'] as const) {
    test(`${name}: same greedy ids as the golden, two sequences sharing iterations`, async () => {
      const { g, weights } = load(name);
      const c = weights.config;
      const model = TransformerModel.upload(e, weights);
      const tok = idTokenizer(c.vocabSize);
      const prompt = Array.from(goldenTensor(g, 'greedy_prompt', 'i32'));
      const gen = new Generator(e, model, tok, false, true);
      const layers = gen.layerDecoder();
      expect(layers).not.toBeNull();
      const sched = new GpuScheduler(e, { trainShare: 0 });
      const pool = new KvPool(e, { L: c.nLayers, HKV: c.nKvHeads, D: c.headDim }, 1 << 20);
      const batch = new DecodeBatch(e, sched, model, pool, 'test', { prefillChunk: 1, layers }, () => {});
      const keys = new Set<string>();
      const pipeline = e.pipeline.bind(e);
      e.pipeline = (key, ...rest) => (keys.add(key), pipeline(key, ...rest)); // records which kernels ran
      const runs = [prompt, prompt.slice(0, 3)].map((p) => {
        const stream = new TokenStream(tok, p, greedy, {}, c.maxSeqLen);
        const blocks = pool.alloc(pool.blocksFor(p.length + stream.maxNew))!;
        return new Promise<GenerateResult>((resolve, reject) => batch.add({ stream, blocks, prefilled: 0, next: null, resolve, reject } satisfies BatchSequence));
      });
      const [full, short] = await Promise.all(runs);
      e.pipeline = pipeline;
      expect([...keys].filter((k) => k.startsWith('decode_gemv.')).sort()).toEqual(
        [1, 2].flatMap((m) => [`decode_gemv.gateup.f32_f32.${m}.nb`, `decode_gemv.qkv.f32_f32_f32.${m}.${name === 'qwen2' ? 'b' : 'nb'}`, `decode_gemv.resid.f32.${m}.nb`]).sort(),
      );
      expectGreedy(`${name} batched fused layers`, full!, g, c.vocabSize);
      const unfused = new Generator(e, model, tok, false, false);
      expect(short!.tokenIds).toEqual((await unfused.generate(prompt.slice(0, 3), greedy)).tokenIds);
      pool.dispose();
      gen.free();
      model.free();
    }, 300_000);
  }
});

describe('tiny checkpoints vs PyTorch goldens: generation paths', () => {
  for (const f of FAMILIES) {
    test(`${f.name}: prompt logits and greedy ids (batch-1 decode${f.fused ? ', one-dispatch decoders' : ''}, paged continuous batch)`, async () => {
      const { g, weights } = load(f.name);
      const c = weights.config;
      const V = c.vocabSize;
      const model = TransformerModel.upload(e, weights);
      const tok = idTokenizer(V);
      const prompt = Array.from(goldenTensor(g, 'greedy_prompt', 'i32'));
      const want = Array.from(goldenTensor(g, 'greedy_ids', 'i32'));
      // Prefill path (kvcache.wgsl) over prompt + continuation vs the golden logits.
      const layered = new Generator(e, model, tok, false);
      const pl = await layered.promptLogits([...prompt, ...want.slice(0, -1)]);
      expectClose(pl, goldenTensor(g, 'greedy_logits', 'f32'), 1e-4, 1e-5, `${f.name} prompt logits`);
      const unfusedIds = await layered.generate(prompt, greedy);
      expectGreedy(`${f.name} layered`, unfusedIds, g, V);
      // The fused layer kernels (ops/decode-layer.ts: q/k/v + RMSNorm + Qwen2 biases, attention + RoPE
      // + cache append, o/down + residual, gate/up + RMSNorm + SiLU·mul), forced on (GPU-only default).
      const fusedLayers = new Generator(e, model, tok, false, true);
      expect(fusedLayers.layerFused).toBe(true);
      const fl = await fusedLayers.generate(prompt, greedy);
      expectGreedy(`${f.name} fused layers`, fl, g, V);
      expect(fl.tokenIds).toEqual(unfusedIds.tokenIds);
      fusedLayers.free();
      // One-dispatch decoder (CPU drivers, bias-free Llama layout).
      const fused = new Generator(e, model, tok, f.fused);
      if (f.fused) expectGreedy(`${f.name} fused`, await fused.generate(prompt, greedy), g, V);
      // The continuous batch over the paged cache (paged.wgsl; the batched one-dispatch decoder where it applies).
      const sched = new GpuScheduler(e, { trainShare: 0 });
      const bd = fused.batchDecoder();
      for (const dec of bd ? [null, bd] : [null]) {
        const pool = new KvPool(e, { L: c.nLayers, HKV: c.nKvHeads, D: c.headDim }, 1 << 20);
        const batch = new DecodeBatch(e, sched, model, pool, 'test', { prefillChunk: 4, fused: dec ?? undefined }, () => {});
        const runs = [prompt, prompt.slice(0, 3)].map((p) => {
          const stream = new TokenStream(tok, p, greedy, {}, c.maxSeqLen);
          const blocks = pool.alloc(pool.blocksFor(p.length + stream.maxNew))!;
          return new Promise<GenerateResult>((resolve, reject) => batch.add({ stream, blocks, prefilled: 0, next: null, resolve, reject } satisfies BatchSequence));
        });
        const [full, short] = await Promise.all(runs);
        expectGreedy(`${f.name} batched ${dec ? 'fused' : 'layered'}`, full!, g, V);
        expect(short!.tokenIds).toEqual((await layered.generate(prompt.slice(0, 3), greedy)).tokenIds);
        pool.dispose();
      }
      fused.free();
      model.free();
    }, 120_000);
  }
});

describe('end of sequence', () => {
  test("generation stops at any id of config.json's eos_token_id list (Llama 3 Instruct: 128001, 128008, 128009)", async () => {
    const { weights } = load('llama3');
    expect(weights.config.eosTokenIds).toEqual([2, 3]);
    const V = weights.config.vocabSize;
    const logits = (top: number) => Float32Array.from({ length: V }, (_, i) => (i === top ? 5 : 0));
    const run = async (eosIds?: number[]) => {
      const s = new TokenStream(idTokenizer(V), [1, 7], { ...greedy, stopAtEos: true, eosIds }, {}, weights.config.maxSeqLen);
      const next = await s.push(logits(3)); // the second eos id
      return { next, r: s.result() };
    };
    const withList = await run(weights.config.eosTokenIds);
    expect(withList.next).toBeNull();
    expect(withList.r.finishReason).toBe('stop');
    expect(withList.r.tokenIds).toEqual([]);
    const without = await run(); // the tokenizer's EOS only (none here): 3 is an ordinary token
    expect(without.next).toBe(3);
  });
});
