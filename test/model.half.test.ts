// Half-precision checkpoints end to end: a tiny random Llama saved as BF16 and as F16 safetensors
// loads with its precision kept (16-bit on the device, 16-bit when written back), and every path —
// training forward with LoRA and the LoRA gradients, prompt logits, greedy decoding layer by layer,
// the one-dispatch decoders and the paged continuous batch — gives what the same weights upcast to
// f32 give (same values; only the kernels' load instructions differ), greedy ids equal.
import { beforeAll, describe, expect, test } from 'bun:test';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../src/gpu/engine.ts';
import { GpuScheduler } from '../src/gpu/scheduler.ts';
import { hfFolderFiles, loadHfWeights } from '../src/model/hf.ts';
import { parseSafetensors } from '../src/model/safetensors.ts';
import { type ModelWeights, halfBitsOf, halfTensor, setWeightsDtype, tensorToWrite, weightBytes, weightsDtypeOf } from '../src/model/weights.ts';
import { toHalf } from '../src/gpu/half.ts';
import { embedding } from '../src/gpu/ops/embedding.ts';
import { TransformerModel, type LoraWeights } from '../src/model/transformer.ts';
import { Generator, TokenStream, type GenerateResult, type SamplingOptions } from '../src/model/generate.ts';
import { KvPool } from '../src/model/kvpool.ts';
import { DecodeBatch, type BatchSequence } from '../src/model/batcher.ts';
import type { TextTokenizer } from '../src/model/tokenizer.ts';
import { Rng } from '../src/util/rng.ts';
import { expectClose } from './helpers/compare.ts';

const GOLDEN = join(import.meta.dir, 'golden');
let e: Engine;
beforeAll(async () => {
  e = await Engine.create();
});

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

/** The checkpoint converted to `kind`, written as an HF folder and loaded back. */
function halfCheckpoint(name: string, kind: 'bf16' | 'f16'): { half: ModelWeights; upcast: ModelWeights; fileDtypes: Set<string> } {
  const w = setWeightsDtype(loadHfWeights(join(GOLDEN, name)), kind);
  const dir = mkdtempSync(join(tmpdir(), `cola-${kind}-`));
  const files = hfFolderFiles(w);
  writeFileSync(join(dir, 'config.json'), files['config.json']);
  writeFileSync(join(dir, 'model.safetensors'), files['model.safetensors']);
  const fileDtypes = new Set([...parseSafetensors(files['model.safetensors']).tensors.values()].map((t) => t.dtype));
  const half = loadHfWeights(dir);
  const upcast = setWeightsDtype(loadHfWeights(dir), 'f32');
  return { half, upcast, fileDtypes };
}

async function trainingPass(model: TransformerModel, seed: number) {
  const c = model.config;
  const rng = new Rng(seed);
  const B = 2, T = 16, r = 4;
  const modules: LoraWeights['modules'] = new Map();
  for (let i = 0; i < c.nLayers; i++) {
    for (const m of ['q', 'v']) {
      const out = m === 'q' ? c.nHeads * c.headDim : c.nKvHeads * c.headDim;
      modules.set(`${i}.${m}`, { a: e.upload(rng.uniformArray(r * c.dim, -0.3, 0.3), [r, c.dim]), b: e.upload(rng.uniformArray(out * r, -0.3, 0.3), [out, r]) });
    }
  }
  const lora: LoraWeights = { scale: 2, modules };
  const ids = Int32Array.from({ length: B * T }, () => rng.int(c.vocabSize));
  const targets = Int32Array.from({ length: B * T }, (_, i) => (i % T === T - 1 ? -1 : ids[i + 1]!));
  const batch = { B, T, ids: e.upload(ids, [B * T], 'i32'), targets: e.upload(targets, [B * T], 'i32') };
  const logits = await e.readF32(model.logits(model.forward(batch, lora, false).hidden));
  const { loss, grads } = model.lossAndGrads(batch, lora);
  const g: Float32Array[] = [];
  for (const gr of grads.values()) g.push(await e.readF32(gr.dA), await e.readF32(gr.dB));
  return { logits, loss: (await e.readF32(loss))[0]!, grads: g };
}

async function generations(model: TransformerModel) {
  const c = model.config;
  const tok = idTokenizer(c.vocabSize);
  const prompt = [1, 5, 9, 2, 33, 7];
  const layered = new Generator(e, model, tok, false);
  const promptLogits = await layered.promptLogits(prompt);
  const ids: Record<string, number[]> = { layered: (await layered.generate(prompt, greedy)).tokenIds };
  const fused = new Generator(e, model, tok, true);
  ids.fused = (await fused.generate(prompt, greedy)).tokenIds;
  // The fused layer kernels (16-bit weights read 8 values per vec4<u32> load), forced on.
  const fusedLayers = new Generator(e, model, tok, false, true);
  expect(fusedLayers.layerFused).toBe(true);
  ids.fusedLayers = (await fusedLayers.generate(prompt, greedy)).tokenIds;
  fusedLayers.free();
  const bd = fused.batchDecoder();
  const sched = new GpuScheduler(e, { trainShare: 0 });
  for (const dec of bd ? [null, bd] : [null]) {
    const pool = new KvPool(e, { L: c.nLayers, HKV: c.nKvHeads, D: c.headDim }, 1 << 20);
    const batch = new DecodeBatch(e, sched, model, pool, 'test', { prefillChunk: 4, fused: dec ?? undefined }, () => {});
    const stream = new TokenStream(tok, prompt, greedy, {}, c.maxSeqLen);
    const blocks = pool.alloc(pool.blocksFor(prompt.length + stream.maxNew))!;
    const r = await new Promise<GenerateResult>((resolve, reject) => batch.add({ stream, blocks, prefilled: 0, next: null, resolve, reject } satisfies BatchSequence));
    ids[dec ? 'batchFused' : 'batchLayered'] = r.tokenIds;
    pool.dispose();
  }
  fused.free();
  return { promptLogits, ids, fusedBatch: !!bd };
}

// tiny-llama3: untied classifier; tiny-smollm2: tied embeddings (the 16-bit table is the classifier too).
// Each case compiles the one-dispatch decoders for its layout (tens of seconds on lavapipe): both
// formats on the untied model, bf16 on the tied one.
describe.each([['tiny-llama3', ['bf16', 'f16']], ['tiny-smollm2', ['bf16']]] as const)('%s', (name, kinds) => {
  for (const kind of kinds) {
    test(`${kind}: kept 16-bit, same logits, gradients and greedy ids as its f32 upcast`, async () => {
      const { half, upcast, fileDtypes } = halfCheckpoint(name, kind);
      expect(fileDtypes).toEqual(new Set([kind === 'bf16' ? 'BF16' : 'F16']));
      expect(weightsDtypeOf(half)).toBe(kind);
      expect(weightBytes(half) * 2).toBe(weightBytes(upcast));
      // Loaded streamed (safetensors.ts readSafetensorsFile): the 16-bit tensors are held as their
      // bits, 2 bytes a value on the host, and uploading them does not decode them to f32.
      const q0 = half.tensors.get('model.layers.0.self_attn.q_proj.weight')!;
      expect(q0.bits).toBeInstanceOf(Uint16Array);
      const mh = TransformerModel.upload(e, half);
      expect(q0.bits).toBeInstanceOf(Uint16Array);
      const mf = TransformerModel.upload(e, upcast);
      expect(mh.linearOf(0, 'q').w.dtype).toBe(kind);
      expect(mh.embedding.dtype).toBe(kind);
      expect(mh.classifierWeight.dtype).toBe(kind);
      expect(mf.linearOf(0, 'q').w.dtype).toBe('f32');
      // Norms stay f32: the device holds a bit over half the f32 bytes.
      expect(mh.weightBytes).toBeLessThan(0.55 * mf.weightBytes);
      const th = await trainingPass(mh, 7);
      const tf = await trainingPass(mf, 7);
      // Same values and f32 arithmetic: only summation orders may differ between kernels.
      expectClose(th.logits, tf.logits, 1e-5, 1e-5, `${name} ${kind} logits`);
      expect(Math.abs(th.loss - tf.loss)).toBeLessThan(1e-5);
      th.grads.forEach((g, i) => expectClose(g, tf.grads[i]!, 1e-5, 1e-4, `${name} ${kind} LoRA gradient ${i}`));
      const gh = await generations(mh);
      const gf = await generations(mf);
      expect(gh.fusedBatch).toBe(gf.fusedBatch);
      expectClose(gh.promptLogits, gf.promptLogits, 1e-5, 1e-5, `${name} ${kind} prompt logits`);
      expect(gh.ids).toEqual(gf.ids);
      for (const v of Object.values(gh.ids)) expect(v).toEqual(gh.ids.layered!);
      mh.free();
      mf.free();
    }, 300_000);
  }
});

test('a 16-bit tensor read as f32 and changed is written f32; unchanged it stays 16-bit', () => {
  const bits = toHalf(Float32Array.of(0.5, -1.25, 3, 0.09375), 'bf16');
  const t = halfTensor([4], 'bf16', bits);
  expect(halfBitsOf(t)).toBe(bits); // no decode needed
  expect(Array.from(t.data)).toEqual([0.5, -1.25, 3, 0.09375]);
  expect(t.bits).toBeUndefined(); // decoded: the f32 values are now what the tensor holds
  expect(Array.from(halfBitsOf(t)!)).toEqual(Array.from(bits)); // still exact in bf16
  t.data[1] = Math.fround(-1.25 + 1e-3); // an in-place merge
  expect(halfBitsOf(t)).toBeNull();
  expect(tensorToWrite(t).dtype).toBe('F32');
});

test('a classifier and embedding over the storage-binding limit are used in vocabulary chunks (same logits and rows)', async () => {
  const { half } = halfCheckpoint('tiny-smollm2', 'bf16'); // tied: the 64×32 bf16 table is both (4 KiB)
  const m = TransformerModel.upload(e, half);
  const c = m.config;
  const rng = new Rng(11);
  const N = 37;
  const hidden = e.upload(rng.uniformArray(N * c.dim), [N, c.dim]);
  const ids = e.upload(Int32Array.from({ length: N }, (_, i) => (i * 7) % (c.vocabSize + 3) - 1), [N], 'i32'); // some −1 and ≥ V
  const whole = await e.readF32(m.logits(hidden));
  const rowsWhole = await e.readF32(embedding(e, ids, m.embedding));
  // Pretend the device binds at most 1 KiB: 16-row chunks of the table, 4 vocabulary chunks, 16 rows of hidden at a time.
  const real = e.limits;
  const fake = new Proxy(real, { get: (t, k) => (k === 'maxStorageBufferBindingSize' ? 1024 : Reflect.get(t, k)) });
  Object.defineProperty(e, 'limits', { value: fake, configurable: true });
  try {
    expect(e.limits.maxStorageBufferBindingSize).toBe(1024);
    const d0 = e.stats.dispatches;
    const chunked = await e.readF32(m.logits(hidden));
    expect(e.stats.dispatches - d0).toBe(3 * 4); // 3 blocks of rows × 4 vocabulary chunks
    expect(Array.from(chunked)).toEqual(Array.from(whole));
    expect(Array.from(await e.readF32(embedding(e, ids, m.embedding)))).toEqual(Array.from(rowsWhole));
  } finally {
    delete (e as any).limits;
  }
  expect(e.limits.maxStorageBufferBindingSize).toBeGreaterThan(1024);
  m.free();
}, 120_000);

test('a mixed model (q, v f32 after a knot, the rest bf16): the one-dispatch decoders run widened to f32, same greedy ids', async () => {
  const { half, upcast } = halfCheckpoint('tiny-llama3', 'bf16');
  for (let i = 0; i < half.config.nLayers; i++) {
    for (const m of ['q_proj', 'v_proj']) delete half.tensors.get(`model.layers.${i}.self_attn.${m}.weight`)!.dtype; // as a merged module
  }
  expect(weightsDtypeOf(half)).toBe('mixed');
  const mm = TransformerModel.upload(e, half);
  const mf = TransformerModel.upload(e, upcast);
  expect(mm.linearOf(0, 'q').w.dtype).toBe('f32');
  expect(mm.linearOf(0, 'k').w.dtype).toBe('bf16');
  const gm = await generations(mm);
  const gf = await generations(mf);
  expect(gm.fusedBatch).toBe(true);
  expect(gm.ids).toEqual(gf.ids);
  expectClose(gm.promptLogits, gf.promptLogits, 1e-5, 1e-5, 'mixed prompt logits');
  mm.free();
  mf.free();
}, 300_000);
