// Training memory: the estimate that admission and the job runner use is an upper bound of the
// engine's measured peak for real runs (stories260K, several batch shapes, ranks and targets), and
// not wildly above it; the reservations that jobs take are first come first served, bounded and
// abortable.
import { describe, expect, test } from 'bun:test';
import { Engine } from '../src/gpu/engine.ts';
import { MemoryReservationError, MemoryReservations } from '../src/gpu/reservations.ts';
import { loadBundledModel } from '../src/model/registry.ts';
import { trainCola, type TrainConfig } from '../src/cola/trainer.ts';
import { resolveLoraSpec } from '../src/cola/lora.ts';
import { trainingDeviceBytes, weightBytesF32 } from '../src/cola/memory.ts';
import type { Tokenizer } from '../src/cola/data.ts';

describe('training memory estimate vs the measured peak', () => {
  const base = loadBundledModel();
  let e: Engine | undefined;
  const long = 'Once upon a time, there was a little dog named Max. Max liked to run in the park. '.repeat(20);
  test('the weights of the bundled model', () => {
    let n = 0;
    for (const t of base.weights.tensors.values()) n += t.data.length;
    expect(weightBytesF32(base.weights.config)).toBe(4 * n);
  });
  const cases: [number, number, number, string[]][] = [
    [1, 64, 8, ['q', 'v']],
    [8, 64, 8, ['q', 'v']],
    [8, 256, 8, ['q', 'v']],
    [4, 512, 32, ['q', 'k', 'v', 'o', 'gate', 'up', 'down']],
  ];
  for (const [B, T, r, targets] of cases) {
    test(`batch ${B} × ${T}, rank ${r} on ${targets.join(',')}: peak ≤ estimate ≤ 2 × peak + 4 MiB`, async () => {
      e ??= await Engine.create();
      e.trimPool(); // what earlier cases left pooled does not count here
      e.resetPeak();
      {
        const config: TrainConfig = {
          lora: resolveLoraSpec(base.weights.config, { targets, rank: r, alpha: 16, bias: false }),
          chain: { links: 2 },
          optimizer: { name: 'adamw', lr: 1e-3, weightDecay: 0, betas: [0.9, 0.999], eps: 1e-8, momentum: 0 },
          schedule: { name: 'linear', warmupSteps: 0 },
          epochs: 1,
          batchSize: B,
          maxSeqLen: T,
          seed: 1,
          shuffle: true,
          maxGradNorm: 1,
          evalEveryKnot: false,
        };
        const train = Array.from({ length: 2 * B }, (_, i) => ({ text: `${i} ${long}` }));
        const before = e.allocatedBytes;
        await trainCola({ e, weights: base.weights, tokenizer: base.tokenizer as unknown as Tokenizer, train, validation: [], config }, { onKnot: async () => {}, onStep: () => {} });
        const peak = e.peakBytes - before;
        const est = trainingDeviceBytes(base.weights.config, { batchSize: B, maxSeqLen: T, targets, maxRank: r });
        expect(est).toBeGreaterThanOrEqual(peak);
        expect(est).toBeLessThanOrEqual(2 * peak + 4 * 2 ** 20);
      }
    });
  }
});

describe('memory reservations', () => {
  test('first come first served within the capacity; a release lets the next in', async () => {
    const m = new MemoryReservations(100);
    const a = await m.reserve(60);
    const order: string[] = [];
    const pb = m.reserve(50).then((rel) => (order.push('b'), rel));
    const pc = m.reserve(10).then((rel) => (order.push('c'), rel)); // fits, but waits behind b
    await Bun.sleep(5);
    expect(order).toEqual([]);
    expect(m.stats()).toEqual({ capacity: 100, reserved: 60, waiting: 2 });
    a();
    a(); // idempotent
    const [b, c] = await Promise.all([pb, pc]);
    expect(order).toEqual(['b', 'c']);
    expect(m.stats().reserved).toBe(60);
    b();
    c();
    expect(m.stats()).toEqual({ capacity: 100, reserved: 0, waiting: 0 });
  });
  test('more than the capacity is refused at once; an aborted wait leaves the queue', async () => {
    const m = new MemoryReservations(100);
    await expect(m.reserve(101)).rejects.toBeInstanceOf(MemoryReservationError);
    const a = await m.reserve(90);
    const ac = new AbortController();
    const p = m.reserve(50, ac.signal);
    const q = m.reserve(5);
    ac.abort(new Error('job cancelled'));
    await expect(p).rejects.toThrow('job cancelled');
    const rq = await q; // the aborted head no longer blocks the one behind it
    expect(m.stats()).toEqual({ capacity: 100, reserved: 95, waiting: 0 });
    a();
    rq();
  });
});
