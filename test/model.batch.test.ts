// Continuous batching (src/model/batcher.ts) against the batch-1 generator: sequences with
// different prompt lengths that join at different iterations, decoded together over the paged KV
// cache, give the same greedy ids as each one generated alone, and their logprobs agree.
import { beforeAll, describe, expect, test } from 'bun:test';
import { Engine } from '../src/gpu/engine.ts';
import { GpuScheduler } from '../src/gpu/scheduler.ts';
import { loadBundledModel, type LoadedModel } from '../src/model/registry.ts';
import { TransformerModel } from '../src/model/transformer.ts';
import { Generator, TokenStream, type GenerateResult, type SamplingOptions } from '../src/model/generate.ts';
import { KvPool } from '../src/model/kvpool.ts';
import { DecodeBatch, type BatchSequence } from '../src/model/batcher.ts';
import { join } from 'node:path';
import { loadHfWeights } from '../src/model/hf.ts';
import type { TextTokenizer } from '../src/model/tokenizer.ts';

/** Tiny random OPT / GPT-2 checkpoints of test/golden with a tokenizer that prints ids. */
function tinyModel(arch: 'opt' | 'gpt2') {
  const weights = loadHfWeights(join(import.meta.dir, 'golden', arch === 'opt' ? 'tiny-opt' : 'tiny-gpt2'));
  const tokenizer: TextTokenizer = {
    kind: 'hf', vocabSize: weights.config.vocabSize, bos: null, eos: null,
    encode: () => { throw new Error('ids only'); },
    decode: (ids) => ids.map((i) => `<${i}>`).join(''),
    createStreamDecoder: () => ({ decodeToken: (id) => `<${id}>`, flush: () => '' }),
    idToPiece: (id) => `<${id}>`,
  };
  return { weights, tokenizer };
}

let e: Engine;
let m: LoadedModel;

beforeAll(async () => {
  e = await Engine.create();
  m = loadBundledModel();
});

const greedy: SamplingOptions = { maxTokens: 24, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [], stopAtEos: false };

/** Runs `prompts` through one DecodeBatch, each joining after `joinAfter[i]` iterations of the batch. */
async function batched(model: TransformerModel, tok: TextTokenizer, prompts: number[][], opts: SamplingOptions[], joinAfter: number[], prefillChunk: number, fused: Generator | null = null) {
  const c = model.config;
  const sched = new GpuScheduler(e, { trainShare: 0 });
  const pool = new KvPool(e, { L: c.nLayers, HKV: c.nKvHeads, D: c.headDim }, 4 << 20);
  const batch = new DecodeBatch(e, sched, model, pool, 'test', { prefillChunk, fused: fused?.batchDecoder() }, () => {});
  const results: Promise<GenerateResult>[] = [];
  const order = prompts.map((_, i) => i).sort((a, b) => joinAfter[a]! - joinAfter[b]!);
  for (const i of order) {
    while (batch.stats.iterations < joinAfter[i]! && batch.size > 0) await new Promise((r) => setTimeout(r, 1));
    const stream = new TokenStream(tok, prompts[i]!, opts[i]!, { topLogprobs: 2 }, c.maxSeqLen);
    const blocks = pool.alloc(pool.blocksFor(prompts[i]!.length + stream.maxNew))!;
    results[i] = new Promise<GenerateResult>((resolve, reject) => {
      const s: BatchSequence = { stream, blocks, prefilled: 0, next: null, resolve, reject };
      batch.add(s);
    });
  }
  const out = await Promise.all(results);
  const free = pool.freeBlocks;
  pool.dispose();
  return { out, stats: batch.stats, freeBlocks: free, totalBlocks: pool.blocks };
}

describe('continuous batching = batch-1 generation', () => {
  for (const path of ['layered', 'fused'] as const)
  test(`stories260K (${path} decode): 8 sequences, different prompt lengths, joining at different iterations`, async () => {
    const model = TransformerModel.upload(e, m.weights);
    const texts = ['Once upon a time', 'The cat', 'Lily and Ben went to the park to play with a big red ball', 'One day',
      'Tom had a dog', 'The sun was hot and the children', 'A', 'Mom said'];
    const prompts = texts.map((t) => m.tokenizer.encode(t, { bos: true }));
    const opts = prompts.map((_, i) => ({ ...greedy, maxTokens: 12 + 3 * i, ...(i % 3 === 2 ? { temperature: 0.9, seed: 7 + i } : {}) }));
    const joinAfter = [0, 0, 2, 3, 5, 9, 9, 14];
    const gen = new Generator(e, model, m.tokenizer);
    const alone: GenerateResult[] = [];
    for (let i = 0; i < prompts.length; i++) alone.push(await gen.generate(prompts[i]!, opts[i]!, { topLogprobs: 2 }));
    // Prefill chunk of 5 tokens: the long prompt is split over several iterations.
    const fused = path === 'fused' ? gen : null;
    if (fused && !fused.batchDecoder()) return void console.warn('no batched one-dispatch decoder on this device: only the layered path is tested');
    const { out, stats, freeBlocks, totalBlocks } = await batched(model, m.tokenizer, prompts, opts, joinAfter, 5, fused);
    for (let i = 0; i < prompts.length; i++) {
      expect(out[i]!.tokenIds).toEqual(alone[i]!.tokenIds); // greedy and seeded sampling: the same ids
      expect(out[i]!.text).toBe(alone[i]!.text);
      // Logprobs: the batched products sum in the same order per row; the decode attention differs
      // from the contiguous path only in how the keys are split over lanes. Stated tolerance 1e-4.
      out[i]!.logprobs.forEach((lp, k) => expect(Math.abs(lp - alone[i]!.logprobs[k]!)).toBeLessThan(1e-4));
    }
    expect(stats.maxDecodeRows).toBeGreaterThanOrEqual(4); // sequences really were decoded together
    expect(freeBlocks).toBe(totalBlocks); // every sequence gave its blocks back
    gen.free();
    model.free();
  }, 120_000);

  for (const arch of ['opt', 'gpt2'] as const) {
    test(`${arch} (learned positions, biases): batched greedy ids = batch-1`, async () => {
      const w = tinyModel(arch);
      const model = TransformerModel.upload(e, w.weights);
      const prompts = [[1, 5, 9, 2, 7], [3, 4], [8, 8, 8, 8, 8, 8, 8, 8, 1], [6]];
      const opts = prompts.map(() => ({ ...greedy, maxTokens: 10 }));
      const gen = new Generator(e, model, w.tokenizer);
      const alone = [];
      for (const p of prompts) alone.push(await gen.generate(p, opts[0]!));
      const { out } = await batched(model, w.tokenizer, prompts, opts, [0, 1, 1, 4], 4);
      for (let i = 0; i < prompts.length; i++) expect(out[i]!.tokenIds).toEqual(alone[i]!.tokenIds);
      gen.free();
      model.free();
    }, 120_000);
  }
});
