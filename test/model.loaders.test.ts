import { afterAll, describe, expect, test } from 'bun:test';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, configFromHf, configToHf, type ModelConfig } from '../src/model/config.ts';
import { ModelLoadError, hfFolderFiles, loadHfWeights, shardWeights } from '../src/model/hf.ts';
import { Llama2cError, loadLlama2c } from '../src/model/llama2c.ts';
import { DEFAULT_MODEL, DEFAULT_MODEL_DIR, loadBundledModel, loadModelFromPath } from '../src/model/registry.ts';
import { encodeSafetensors, parseSafetensors, SafetensorsError } from '../src/model/safetensors.ts';
import { f32ToBf16Bits, f32ToF16Bits } from '../src/util/f16.ts';
import {
  type ModelWeights,
  WeightsError,
  classifierWeight,
  expectedTensors,
  linearWeight,
  loadSavedSafetensorsWeights,
  saveSafetensorsWeights,
  validateWeights,
} from '../src/model/weights.ts';
import { Rng } from '../src/util/rng.ts';

// A random tiny HF GPT-2 (12 KB, Apache-2.0; see its SOURCE.txt) kept with the tests.
const GPT2_DIR = join(import.meta.dir, 'fixtures/random-tiny-gpt2-lmbuddy');
const STORIES_BIN = join(DEFAULT_MODEL_DIR, 'stories260K.bin');

const tmp = mkdtempSync(join(tmpdir(), 'cola-model-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let dirCount = 0;
function newDir(files: Record<string, string | Uint8Array>): string {
  const d = join(tmp, `d${dirCount++}`);
  require('node:fs').mkdirSync(d);
  for (const [n, v] of Object.entries(files)) writeFileSync(join(d, n), v);
  return d;
}

function expectSameTensors(a: ModelWeights, b: ModelWeights): void {
  expect([...b.tensors.keys()].sort()).toEqual([...a.tensors.keys()].sort());
  for (const [name, t] of a.tensors) {
    const u = b.tensors.get(name)!;
    expect(u.shape).toEqual(t.shape);
    // Bitwise identity: compare the raw bytes.
    expect(Buffer.from(u.data.buffer, u.data.byteOffset, u.data.byteLength).equals(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))).toBe(true);
  }
}

function randomWeights(config: ModelConfig, seed: number): ModelWeights {
  const rng = new Rng(seed);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, shape] of expectedTensors(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    tensors.set(name, { shape, data: Float32Array.from({ length: n }, () => rng.normal() * 0.1) });
  }
  return { config, tensors };
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe('bundled stories260K', () => {
  test('files are the unmodified upstream files (sha256 as in SOURCE.txt/README)', () => {
    expect(sha256(readFileSync(STORIES_BIN))).toBe('b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696');
    expect(sha256(readFileSync(join(DEFAULT_MODEL_DIR, 'tok512.bin')))).toBe('037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312');
    expect(sha256(readFileSync(join(DEFAULT_MODEL_DIR, 'tok512.model')))).toBe('dfff07d929db979913f166ec94a6f5ecad4c70cfed8eb5c9cbe7e464455e46f5');
    expect(readFileSync(join(DEFAULT_MODEL_DIR, 'LICENSE.icpp_llm.txt'), 'utf8')).toContain('MIT License');
    expect(DEFAULT_MODEL.name).toBe('stories260K');
  });

  test('llama2.c checkpoint loads with HF names, the documented config, and values at the right offsets', () => {
    const bytes = readFileSync(STORIES_BIN);
    const w = loadLlama2c(bytes);
    const c = w.config;
    expect([c.arch, c.dim, c.hiddenDim, c.nLayers, c.nHeads, c.nKvHeads, c.vocabSize, c.maxSeqLen]).toEqual(['llama', 64, 172, 5, 8, 4, 512, 512]);
    expect(c.tiedEmbeddings).toBe(true);
    expect(c.ropeInterleaved).toBe(true);
    expect(c.headDim).toBe(8);
    expect(w.tensors.size).toBe(1 + 5 * 9 + 1); // embed, 9 per layer, final norm; lm_head tied
    expect(w.tensors.has('lm_head.weight')).toBe(false);
    expect(classifierWeight(w)).toBe(w.tensors.get('model.embed_tokens.weight')!);
    // Independent offset arithmetic (in floats after the 7-int header) for a few tensors.
    const f = (i: number) => new DataView(bytes.buffer, bytes.byteOffset).getFloat32(28 + 4 * i, true);
    const D = 64, F = 172, L = 5, V = 512, KV = 32;
    const emb = 0, rmsAtt = emb + V * D, wq = rmsAtt + L * D, wk = wq + L * D * D, wv = wk + L * KV * D, wo = wv + L * KV * D;
    const rmsFfn = wo + L * D * D, w1 = rmsFfn + L * D, w2 = w1 + L * F * D, w3 = w2 + L * D * F, rmsFinal = w3 + L * F * D;
    const get = (n: string, i: number) => w.tensors.get(n)!.data[i]!;
    expect(get('model.embed_tokens.weight', 5)).toBe(f(emb + 5));
    expect(get('model.layers.2.input_layernorm.weight', 3)).toBe(f(rmsAtt + 2 * D + 3));
    expect(get('model.layers.1.self_attn.q_proj.weight', 70)).toBe(f(wq + 1 * D * D + 70));
    expect(get('model.layers.4.self_attn.k_proj.weight', 2047)).toBe(f(wk + 4 * KV * D + 2047));
    expect(w.tensors.get('model.layers.4.self_attn.k_proj.weight')!.shape).toEqual([KV, D]);
    expect(get('model.layers.3.self_attn.v_proj.weight', 9)).toBe(f(wv + 3 * KV * D + 9));
    expect(get('model.layers.0.self_attn.o_proj.weight', 100)).toBe(f(wo + 100));
    expect(get('model.layers.1.post_attention_layernorm.weight', 0)).toBe(f(rmsFfn + D));
    expect(get('model.layers.2.mlp.gate_proj.weight', 11)).toBe(f(w1 + 2 * F * D + 11));
    expect(w.tensors.get('model.layers.2.mlp.down_proj.weight')!.shape).toEqual([D, F]);
    expect(get('model.layers.2.mlp.down_proj.weight', 12)).toBe(f(w2 + 2 * D * F + 12));
    expect(get('model.layers.4.mlp.up_proj.weight', 13)).toBe(f(w3 + 4 * F * D + 13));
    expect(get('model.norm.weight', 63)).toBe(f(rmsFinal + 63));
  });

  test('llama2.c → safetensors → reload gives identical tensors and config', () => {
    const w = loadLlama2c(readFileSync(STORIES_BIN));
    const st = saveSafetensorsWeights(w);
    const back = loadSavedSafetensorsWeights(parseSafetensors(st));
    expectSameTensors(w, back);
    expect(back.config).toEqual(w.config);
    // Deterministic bytes.
    expect(sha256(saveSafetensorsWeights(back))).toBe(sha256(st));
    // As an HF folder (config.json + model.safetensors): same tensors, RoPE layout preserved.
    const files = hfFolderFiles(w);
    const dir = newDir(files);
    const hf = loadHfWeights(dir);
    expectSameTensors(w, hf);
    expect(hf.config).toEqual(w.config);
    // Through the registry: .safetensors file + tokenizer beside it.
    const d2 = newDir({ 'stories260K.safetensors': st, 'tok512.bin': readFileSync(join(DEFAULT_MODEL_DIR, 'tok512.bin')) });
    const m = loadModelFromPath(join(d2, 'stories260K.safetensors'));
    expect(m.format).toBe('safetensors');
    expectSameTensors(w, m.weights);
    expect(m.tokenizer.encode('Once upon a time')).toEqual([1, 403, 407, 261, 378]);
  });

  test('the identity check can fail: one flipped low bit is detected', () => {
    const w = loadLlama2c(readFileSync(STORIES_BIN));
    const back = loadSavedSafetensorsWeights(parseSafetensors(saveSafetensorsWeights(w)));
    const t = back.tensors.get('model.layers.3.mlp.up_proj.weight')!;
    new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length)[17]! ^= 1;
    expect(() => expectSameTensors(w, back)).toThrow();
  });

  test('registry: default path, folder detection, bundled loader', () => {
    const a = loadModelFromPath();
    expect(a.format).toBe('llama2c');
    expect(a.tokenizer.kind).toBe('llama2c');
    expect(a.tokenizer.vocabSize).toBe(512);
    const b = loadBundledModel('stories260K');
    expectSameTensors(a.weights, b.weights);
    expect(() => loadBundledModel('nope')).toThrow(/no bundled model named "nope"/);
    expect(() => loadModelFromPath(join(tmp, 'missing'))).toThrow(ModelLoadError);
    const two = newDir({ 'a.bin': readFileSync(STORIES_BIN), 'b.bin': readFileSync(STORIES_BIN), 'tok.bin': readFileSync(join(DEFAULT_MODEL_DIR, 'tok512.bin')) });
    expect(() => loadModelFromPath(two)).toThrow(/several checkpoints/);
    const noTok = newDir({ 'a.bin': readFileSync(STORIES_BIN) });
    expect(() => loadModelFromPath(noTok)).toThrow(/no llama2.c tokenizer/);
    const sp = newDir({ 'm.bin': readFileSync(STORIES_BIN), 'tokenizer.model': readFileSync(join(DEFAULT_MODEL_DIR, 'tok512.model')) });
    expect(loadModelFromPath(sp).tokenizer.kind).toBe('sentencepiece');
  });
});

describe('llama2.c checkpoint validation', () => {
  const good = readFileSync(STORIES_BIN);
  const withHeader = (vals: number[], floats: number) => {
    const b = new Uint8Array(28 + 4 * floats);
    const dv = new DataView(b.buffer);
    vals.forEach((v, i) => dv.setInt32(4 * i, v, true));
    return b;
  };
  const cases: [string, Uint8Array, RegExp][] = [
    ['empty', new Uint8Array(0), /28-byte header/],
    ['truncated by one float', good.subarray(0, good.length - 4), /does not match the header/],
    ['one extra byte', Buffer.concat([good, Buffer.from([0])]), /does not match the header/],
    ['dim 0', withHeader([0, 172, 5, 8, 4, 512, 512], 10), /dim = 0 is outside/],
    ['negative n_layers', withHeader([64, 172, -5, 8, 4, 512, 512], 10), /n_layers = -5/],
    ['huge dim', withHeader([2 ** 30, 172, 5, 8, 4, 512, 512], 10), /dim = 1073741824 is outside/],
    ['dim not divisible by heads', withHeader([64, 172, 5, 7, 7, 512, 512], 10), /not divisible by n_heads/],
    ['kv heads do not divide heads', withHeader([64, 172, 5, 8, 3, 512, 512], 10), /not a multiple of nKvHeads/],
    ['vocab 0', withHeader([64, 172, 5, 8, 4, 0, 512], 10), /vocab_size\| = 0/],
    ['a safetensors file', encodeSafetensors({ a: { dtype: 'F32', shape: [8], data: new Float32Array(8) } }), /not a valid llama2.c checkpoint|does not match/],
  ];
  for (const [name, bytes, re] of cases) {
    test(name, () => {
      let err: unknown;
      try {
        loadLlama2c(bytes);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(Llama2cError);
      expect((err as Error).message).toMatch(re);
    });
  }

  test('negative vocab_size: separate classifier (wcls) after the freq_cis tables', () => {
    const [D, F, L, H, KV, V, T] = [8, 12, 2, 2, 1, 10, 6];
    const hd = D / H, kvDim = KV * hd;
    const n = V * D + L * D + L * D * D + 2 * L * kvDim * D + L * D * D + L * D + 3 * L * F * D + D + T * hd + V * D;
    const b = withHeader([D, F, L, H, KV, -V, T], n);
    const f = new Float32Array(b.buffer, 28, n);
    for (let i = 0; i < n; i++) f[i] = i;
    const w = loadLlama2c(b);
    expect(w.config.tiedEmbeddings).toBe(false);
    expect(w.config.vocabSize).toBe(V);
    const head = w.tensors.get('lm_head.weight')!;
    expect(head.shape).toEqual([V, D]);
    expect(head.data[0]).toBe(n - V * D);
    expect(head.data[V * D - 1]).toBe(n - 1);
    expect(w.tensors.get('model.norm.weight')!.data[0]).toBe(n - V * D - T * hd - D);
    expect(w.tensors.get('model.layers.1.self_attn.k_proj.weight')!.shape).toEqual([kvDim, D]);
    // Round trip through safetensors keeps lm_head.
    expectSameTensors(w, loadSavedSafetensorsWeights(parseSafetensors(saveSafetensorsWeights(w))));
  });
});

describe('Hugging Face folders', () => {
  test('random tiny GPT-2 (headless GPT2Model keys) loads with canonical names; Conv1D kept as (in, out)', () => {
    const w = loadHfWeights(GPT2_DIR);
    const c = w.config;
    expect([c.arch, c.dim, c.nLayers, c.nHeads, c.hiddenDim, c.vocabSize, c.maxSeqLen]).toEqual(['gpt2', 2, 1, 1, 8, 21, 1024]);
    expect(c.activation).toBe('gelu_tanh');
    expect(c.tiedEmbeddings).toBe(true);
    expect(c.bosTokenId).toBe(20);
    expect(w.tensors.size).toBe(16);
    expect(w.tensors.get('transformer.wte.weight')!.shape).toEqual([21, 2]);
    expect(w.tensors.get('transformer.wpe.weight')!.shape).toEqual([1024, 2]);
    const cattn = w.tensors.get('transformer.h.0.attn.c_attn.weight')!;
    expect(cattn.shape).toEqual([2, 6]);
    // Values equal the raw file's.
    const raw = parseSafetensors(readFileSync(join(GPT2_DIR, 'model.safetensors')));
    const r = raw.tensors.get('h.0.attn.c_attn.weight')!;
    expect([...cattn.data]).toEqual([...new Float32Array(new Uint8Array(r.data).buffer)]);
    const lin = linearWeight(w, 'transformer.h.0.attn.c_attn.weight');
    expect(lin.shape).toEqual([6, 2]);
    expect(lin.data[1 * 2 + 0]).toBe(cattn.data[0 * 6 + 1]!); // W_lin[out=1, in=0] = W_conv[in=0, out=1]
    expect(linearWeight(w, 'transformer.wte.weight')).toBe(w.tensors.get('transformer.wte.weight')!);
    // Through the registry, with its tokenizer.
    const m = loadModelFromPath(GPT2_DIR);
    expect(m.format).toBe('hf');
    expect(m.tokenizer.vocabSize).toBe(21);
    // Save (canonical names) and reload.
    const d = newDir({ ...hfFolderFiles(w) });
    expectSameTensors(w, loadHfWeights(d));
  });

  const llamaCfg = configFromHf({
    model_type: 'llama', hidden_size: 16, intermediate_size: 24, num_hidden_layers: 3, num_attention_heads: 4, num_key_value_heads: 2,
    vocab_size: 40, max_position_embeddings: 32, rms_norm_eps: 1e-5, tie_word_embeddings: false,
  });

  test('sharded folder with model.safetensors.index.json loads identically', () => {
    const w = randomWeights(llamaCfg, 3);
    const { files, index } = shardWeights(w, 4000);
    expect(files.size).toBeGreaterThan(2);
    const d = newDir({ 'config.json': JSON.stringify(configToHf(llamaCfg)), 'model.safetensors.index.json': JSON.stringify(index), ...Object.fromEntries(files) });
    const back = loadHfWeights(d);
    expectSameTensors(w, back);
    expect(back.config.ropeInterleaved).toBe(false);
    expect(back.tensors.has('lm_head.weight')).toBe(true);
  });

  test('bad shard indexes are refused clearly', () => {
    const w = randomWeights(llamaCfg, 4);
    const { files, index } = shardWeights(w, 4000);
    const names = [...files.keys()];
    const cfg = JSON.stringify(configToHf(llamaCfg));
    const wm = index.weight_map as Record<string, string>;
    const mk = (weight_map: Record<string, string>, drop?: string) => {
      const fs = Object.fromEntries([...files].filter(([n]) => n !== drop));
      return newDir({ 'config.json': cfg, 'model.safetensors.index.json': JSON.stringify({ weight_map }), ...fs });
    };
    // A tensor whose shard also holds others (so the shard stays listed when it is moved/dropped).
    const first = Object.keys(wm).find((k) => Object.values(wm).filter((f) => f === wm[k]).length > 1)!;
    expect(() => loadHfWeights(mk({ ...wm, [first]: '../evil.safetensors' }))).toThrow(/plain file name/);
    expect(() => loadHfWeights(mk({ ...wm, [first]: '/etc/passwd' }))).toThrow(/plain file name/);
    expect(() => loadHfWeights(mk({ ...wm, [first]: 'x.bin' }))).toThrow(/not a .safetensors file/);
    expect(() => loadHfWeights(mk(wm, names[1]))).toThrow(/is not in the model folder/);
    const moved = { ...wm, [first]: names.find((n) => n !== wm[first])! };
    expect(() => loadHfWeights(mk(moved))).toThrow(/index says/);
    const { [first]: _, ...less } = wm;
    void _;
    expect(() => loadHfWeights(mk(less))).toThrow(/does not list/);
    expect(() => loadHfWeights(mk({ ...wm, 'model.extra.weight': names[0]! }))).toThrow(/does not hold it/);
    expect(() => loadHfWeights(mk({}))).toThrow(/weight_map is empty/);
  });

  test('F16 and BF16 checkpoints are converted to f32', () => {
    const w = randomWeights(llamaCfg, 5);
    const half = new Map<string, { dtype: 'F16' | 'BF16'; shape: number[]; data: Uint16Array }>();
    let k = 0;
    for (const [n, t] of w.tensors) {
      const bf = k++ % 2 === 0;
      half.set(n, { dtype: bf ? 'BF16' : 'F16', shape: t.shape, data: Uint16Array.from(t.data, bf ? f32ToBf16Bits : f32ToF16Bits) });
    }
    const d = newDir({ 'config.json': JSON.stringify(configToHf(llamaCfg)), 'model.safetensors': encodeSafetensors(half) });
    const back = loadHfWeights(d);
    for (const [n, t] of w.tensors) {
      const u = back.tensors.get(n)!;
      const tol = half.get(n)!.dtype === 'BF16' ? 2 ** -8 : 2 ** -11; // relative rounding of the format
      for (let i = 0; i < t.data.length; i++) expect(Math.abs(u.data[i]! - t.data[i]!)).toBeLessThanOrEqual(Math.abs(t.data[i]!) * tol + 2 ** -24);
    }
  });

  test('OPT: learned positions with offset 2, biases, tied head', () => {
    const cfg = configFromHf({ model_type: 'opt', hidden_size: 8, ffn_dim: 16, num_hidden_layers: 2, num_attention_heads: 2, vocab_size: 30, max_position_embeddings: 20, pad_token_id: 1, bos_token_id: 2, eos_token_id: 2 });
    expect(cfg.positionOffset).toBe(2);
    const exp = expectedTensors(cfg);
    expect(exp.get('model.decoder.embed_positions.weight')).toEqual([22, 8]);
    expect(exp.get('model.decoder.layers.1.self_attn.out_proj.bias')).toEqual([8]);
    expect(exp.get('model.decoder.layers.0.fc1.weight')).toEqual([16, 8]);
    expect(exp.has('lm_head.weight')).toBe(false);
    const w = randomWeights(cfg, 6);
    // Headless OPTModel names ("decoder.*") and a stored-but-identical lm_head are accepted.
    const headless = new Map<string, { dtype: 'F32'; shape: number[]; data: Float32Array }>();
    for (const [n, t] of w.tensors) headless.set(n.replace(/^model\./, ''), { dtype: 'F32', shape: t.shape, data: t.data });
    headless.set('lm_head.weight', { ...headless.get('decoder.embed_tokens.weight')! });
    const d = newDir({ 'config.json': JSON.stringify(configToHf(cfg)), 'model.safetensors': encodeSafetensors(headless) });
    expectSameTensors(w, loadHfWeights(d));
    // A different lm_head with tie_word_embeddings true is an error.
    headless.set('lm_head.weight', { dtype: 'F32', shape: [30, 8], data: new Float32Array(240) });
    const d2 = newDir({ 'config.json': JSON.stringify(configToHf(cfg)), 'model.safetensors': encodeSafetensors(headless) });
    expect(() => loadHfWeights(d2)).toThrow(/lm_head.weight differs/);
  });

  test('missing, unexpected and mis-shaped tensors give clear errors', () => {
    const w = randomWeights(llamaCfg, 7);
    const save = (m: Map<string, { shape: number[]; data: Float32Array }>) =>
      newDir({ 'config.json': JSON.stringify(configToHf(llamaCfg)), 'model.safetensors': encodeSafetensors(new Map([...m].map(([n, t]) => [n, { dtype: 'F32' as const, ...t }]))) });
    const noHead = new Map(w.tensors);
    noHead.delete('lm_head.weight');
    expect(() => loadHfWeights(save(noHead))).toThrow(/missing tensors for llama: lm_head.weight \(lm_head.weight is required because tie_word_embeddings is false\)/);
    const noK = new Map(w.tensors);
    noK.delete('model.layers.1.self_attn.k_proj.weight');
    expect(() => loadHfWeights(save(noK))).toThrow(/missing tensors for llama: model.layers.1.self_attn.k_proj.weight/);
    const extra = new Map(w.tensors);
    extra.set('model.layers.9.mlp.up_proj.weight', { shape: [1], data: new Float32Array(1) });
    expect(() => loadHfWeights(save(extra))).toThrow(/unexpected tensors for llama: model.layers.9.mlp.up_proj.weight/);
    const bad = new Map(w.tensors);
    bad.set('model.norm.weight', { shape: [15], data: new Float32Array(15) });
    expect(() => loadHfWeights(save(bad))).toThrow(/wrong shapes: model.norm.weight: shape \[15\], expected \[16\]/);
    const i32 = newDir({ 'config.json': JSON.stringify(configToHf(llamaCfg)), 'model.safetensors': encodeSafetensors({ 'model.norm.weight': { dtype: 'I32', shape: [16], data: new Int32Array(16) } }) });
    expect(() => loadHfWeights(i32)).toThrow(/dtype I32/);
    expect(() => validateWeights({ config: llamaCfg, tensors: new Map() })).toThrow(WeightsError);
    // A corrupt shard is reported with its file name.
    const corrupt = newDir({ 'config.json': JSON.stringify(configToHf(llamaCfg)), 'model.safetensors': new Uint8Array(4) });
    expect(() => loadHfWeights(corrupt)).toThrow(/model.safetensors: file is 4 bytes/);
    try {
      loadHfWeights(corrupt);
    } catch (e) {
      expect(e).toBeInstanceOf(SafetensorsError);
    }
  });

  test('PyTorch pickle checkpoints are refused, never unpickled', () => {
    const pickle = new Uint8Array([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]);
    const zip = new Uint8Array([0x50, 0x4b, 0x03, 0x04, 0x14, 0, 0, 0, 8, 0, 0, 0]);
    const cfg = JSON.stringify(configToHf(llamaCfg));
    expect(() => loadHfWeights(newDir({ 'config.json': cfg, 'pytorch_model.bin': zip }))).toThrow(/pytorch_model.bin found .*pickle/);
    expect(() => loadModelFromPath(join(newDir({ 'pytorch_model.bin': pickle }), 'pytorch_model.bin'))).toThrow(/pickle/);
    expect(() => loadModelFromPath(join(newDir({ 'model.pt': zip }), 'model.pt'))).toThrow(/pickle/);
    expect(() => parseSafetensors(zip)).toThrow(/pickle/);
  });
});

describe('config.json validation', () => {
  const base = { model_type: 'llama', hidden_size: 64, intermediate_size: 172, num_hidden_layers: 5, num_attention_heads: 8, vocab_size: 512, max_position_embeddings: 512 };
  test('defaults and HF Llama RoPE layout', () => {
    const c = configFromHf(base);
    expect(c.nKvHeads).toBe(8);
    expect(c.ropeInterleaved).toBe(false);
    expect(c.ropeTheta).toBe(10000);
    expect(c.tiedEmbeddings).toBe(false);
    expect(configFromHf(configToHf(c))).toEqual(c);
  });
  const bad: [string, unknown, RegExp][] = [
    ['not an object', [1], /must be a JSON object/],
    ['unknown model_type', { ...base, model_type: 'bert' }, /unsupported model_type "bert" \(supported: llama, qwen2, mistral, opt, gpt2\)/],
    ['huge hidden_size', { ...base, hidden_size: 1e9 }, /hidden_size/],
    ['fractional layers', { ...base, num_hidden_layers: 2.5 }, /num_hidden_layers/],
    ['negative vocab', { ...base, vocab_size: -1 }, /vocab_size/],
    ['string number', { ...base, hidden_size: '64' }, /hidden_size/],
    ['heads do not divide dim', { ...base, num_attention_heads: 7 }, /not divisible/],
    ['kv heads do not divide heads', { ...base, num_key_value_heads: 3 }, /not a multiple of nKvHeads/],
    ['rope_scaling yarn', { ...base, rope_scaling: { type: 'yarn', factor: 2 } }, /rope_type "yarn" is not supported/],
    ['zero eps', { ...base, rms_norm_eps: 0 }, /rms_norm_eps/],
    ['bos outside vocab', { ...base, bos_token_id: 600 }, /bosTokenId 600 is outside/],
    ['OPT post-LN', { model_type: 'opt', hidden_size: 8, ffn_dim: 16, num_hidden_layers: 1, num_attention_heads: 2, vocab_size: 30, max_position_embeddings: 20, do_layer_norm_before: false }, /post-LayerNorm OPT/],
    ['OPT project_in', { model_type: 'opt', hidden_size: 8, ffn_dim: 16, num_hidden_layers: 1, num_attention_heads: 2, vocab_size: 30, max_position_embeddings: 20, word_embed_proj_dim: 4 }, /word_embed_proj_dim/],
    ['GPT-2 inverse layer scaling', { model_type: 'gpt2', n_embd: 4, n_layer: 1, n_head: 1, vocab_size: 10, n_positions: 8, scale_attn_by_inverse_layer_idx: true }, /scale_attn_by_inverse_layer_idx/],
  ];
  for (const [name, json, re] of bad) {
    test(name, () => {
      let err: unknown;
      try {
        configFromHf(json);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toMatch(re);
    });
  }
});
