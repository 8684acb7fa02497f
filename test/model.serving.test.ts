// Serving while tuning (issue 9), on the real engine with stories260K: every piece of device work
// goes through one GPU scheduler. Exactness (a job's versions are bit-identical with and without
// concurrent generations; concurrent generations equal sequential ones), fairness (a generation
// completes while a long job runs and the job keeps progressing; a tenant with many requests does
// not hold up another), bounded memory (requests beyond the KV pool wait, beyond the queue get a
// 429-kind error, never a device out-of-memory).
import { beforeAll, describe, expect, test } from 'bun:test';
import crypto from 'node:crypto';
import { Engine } from '../src/gpu/engine.ts';
import { GpuScheduler } from '../src/gpu/scheduler.ts';
import { createMlServices } from '../src/model/service.ts';
import { KvPool } from '../src/model/kvpool.ts';
import { loadBundledModel } from '../src/model/registry.ts';
import { saveSafetensorsWeights } from '../src/model/weights.ts';
import { trainCola, type TrainConfig } from '../src/cola/trainer.ts';
import { resolveLoraSpec } from '../src/cola/lora.ts';
import type { Tokenizer } from '../src/cola/data.ts';
import { REPO_ROOT } from '../src/config.ts';
import { ServiceBusyError, UserInputError, type GenerateRequest, type ResolvedVersion } from '../src/services.ts';

let e: Engine;
const base = loadBundledModel();
const target: ResolvedVersion = {
  model: 'stories260K', version: 0, architecture: 'llama',
  config: { tokenizer: 'models/stories260K/tok512.bin' }, path: 'models/stories260K/stories260K.bin', sha256: 'stories260K-v0',
};
const req = (tenant: string, i: number, over: Partial<GenerateRequest> = {}): GenerateRequest => ({
  tenant, target, prompt: ['Once upon a time', 'The cat', 'Lily went', 'One day, Tom'][i % 4]!, max_tokens: 24,
  temperature: i % 3 === 0 ? 0 : 0.8, top_k: 0, top_p: 1, seed: i, stop: [], logprobs: 0, echo: false, ...over,
});

function trainConfig(steps: number): TrainConfig {
  return {
    lora: resolveLoraSpec(base.weights.config, { targets: ['q', 'v'], rank: 4, alpha: 8, bias: false }),
    chain: { links: 3 },
    optimizer: { name: 'adamw', lr: 2e-3, weightDecay: 0, betas: [0.9, 0.999], eps: 1e-8, momentum: 0 },
    schedule: { name: 'linear', warmupSteps: 0 },
    epochs: steps / 6, batchSize: 2, maxSeqLen: 64, seed: 3, shuffle: true, maxGradNorm: 1, evalEveryKnot: true,
  };
}
const train = ['Tom the cat liked milk.', 'The dog ran to the big park.', 'Lily saw a red ball and smiled.', 'Ben had a toy car.',
  'The sun was warm.', 'Mom baked a sweet cake for Sam.', 'A bird sang.', 'The fish swam in the pond all day long.',
  'Anna drew a tree.', 'The little boy found a shiny stone.', 'They played all day.', 'It was a happy day.'].map((text) => ({ text }));

/** Runs a COLA job through the scheduler; returns the knot sha256s and the step timeline. */
async function job(sched: GpuScheduler | null, steps: number, onStep?: (step: number) => void) {
  const shas: string[] = [];
  const res = await trainCola(
    { e, device: sched ? { sched, key: 'job:t1:j' } : undefined, weights: base.weights, tokenizer: base.tokenizer as unknown as Tokenizer, train, validation: train.slice(0, 4), config: trainConfig(steps) },
    {
      onStep: (s) => onStep?.(s.step),
      onKnot: async (k) => void shas.push(crypto.createHash('sha256').update(saveSafetensorsWeights(k.weights)).digest('hex')),
    },
  );
  return { shas, steps: res.steps };
}

beforeAll(async () => {
  e = await Engine.create();
});

describe('serving while tuning', () => {
  test('a job gives the same knots (sha256) alone and with generations running beside it; generations equal sequential ones', async () => {
    const sched = new GpuScheduler(e, { trainShare: 0.3 });
    const alone = await job(sched, 36);
    const direct = await job(null, 36); // no scheduler at all: the trainer's own path
    expect(direct.shas).toEqual(alone.shas);
    const ml = createMlServices(e, sched, REPO_ROOT, { maxLive: 8, kvBytes: 8 << 20 });
    const sequential = [];
    for (let i = 0; i < 6; i++) sequential.push((await ml.generation.generate(req('t1', i))).token_ids);
    // The same job again, with 6 generations (different lengths and sampling) started beside it.
    let stepsAtGenStart = -1;
    let stepNow = 0;
    const jobRun = job(sched, 36, (s) => (stepNow = s));
    while (stepNow < 3) await Bun.sleep(5);
    stepsAtGenStart = stepNow;
    const concurrent = await Promise.all(Array.from({ length: 6 }, (_, i) => ml.generation.generate(req('t1', i))));
    const stepsAtGenEnd = stepNow;
    const together = await jobRun;
    expect(together.shas).toEqual(alone.shas);
    expect(together.shas.length).toBe(3);
    expect(concurrent.map((r) => r.token_ids)).toEqual(sequential);
    // The generations finished while the job was still running, and the job kept stepping meanwhile.
    expect(stepsAtGenEnd).toBeLessThan(36);
    expect(stepsAtGenEnd).toBeGreaterThan(stepsAtGenStart);
    ml.serving.clear();
  }, 300_000);

  test('memory: requests beyond the KV pool wait for blocks; beyond the queue a busy error; larger than the pool a 400', async () => {
    const sched = new GpuScheduler(e, { trainShare: 0.3 });
    const c = base.weights.config;
    // Room for two sequences of 16 + 40 positions (4 blocks each).
    const perBlock = KvPool.bytesPerBlock({ L: c.nLayers, HKV: c.nKvHeads, D: c.headDim });
    const ml = createMlServices(e, sched, REPO_ROOT, { maxLive: 8, maxQueued: 6, kvBytes: 8 * perBlock });
    const rs = await Promise.allSettled(Array.from({ length: 9 }, (_, i) => ml.generation.generate(req('t1', i, { max_tokens: 40 }))));
    const ok = rs.filter((r) => r.status === 'fulfilled').length;
    const busy = rs.filter((r) => r.status === 'rejected' && r.reason instanceof ServiceBusyError).length;
    // 2 decode at a time (blocks), 6 may wait; 9 requests: one is refused at once, none fails otherwise.
    expect(ok + busy).toBe(9);
    expect(busy).toBeGreaterThanOrEqual(1);
    expect(ok).toBeGreaterThanOrEqual(6);
    for (const r of rs) if (r.status === 'fulfilled') expect(r.value.usage.completion_tokens).toBe(40);
    await expect(ml.generation.generate(req('t1', 0, { max_tokens: 200 }))).rejects.toBeInstanceOf(UserInputError);
    expect(ml.serving.stats().live).toBe(0);
    // The resident model's device bytes (/metrics cola_serving_weight_bytes): stories260K is f32.
    const st = ml.serving.stats();
    expect(st.models).toBe(1);
    let params = 0;
    for (const t of loadBundledModel().weights.tensors.values()) params += t.data.length;
    expect(st.weightBytes).toBe(4 * params);
    ml.serving.clear();
  }, 300_000);

  test('fair across tenants: one tenant with many queued requests does not hold up another', async () => {
    const sched = new GpuScheduler(e, { trainShare: 0.3 });
    const ml = createMlServices(e, sched, REPO_ROOT, { maxLive: 2, maxQueued: 64 });
    await ml.generation.generate(req('warm', 0, { max_tokens: 2 }));
    const order: string[] = [];
    const heavy = Array.from({ length: 10 }, (_, i) => ml.generation.generate(req('heavy', i, { max_tokens: 16 })).then(() => order.push('heavy')));
    await Bun.sleep(10);
    const light = ml.generation.generate(req('light', 1, { max_tokens: 16 })).then(() => order.push('light'));
    await Promise.all([...heavy, light]);
    // With two slots shared per tenant, the light tenant gets the next free slot: it finishes among
    // the first few, not after all ten heavy requests.
    expect(order.indexOf('light')).toBeLessThan(4);
    ml.serving.clear();
  }, 300_000);
});
