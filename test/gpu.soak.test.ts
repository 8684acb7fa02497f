// Driver objects stay bounded over a process's life (issue 8, defect 1). On lavapipe every live bind
// group holds one memfd mapping; a training process that kept creating them died at
// vm.max_map_count (65,530) after ~2,500 steps. The memory-map count of this
// process is the measure (bench/soak/run.ts is the long version: 20,000 steps and tokens).
import { describe, expect, test } from 'bun:test';
import { existsSync, readFileSync } from 'node:fs';
import { Engine } from '../src/gpu/engine.ts';
import { add } from '../src/gpu/ops/elementwise.ts';
import { loadBundledModel } from '../src/model/registry.ts';
import { trainCola, type TrainConfig } from '../src/cola/trainer.ts';
import { resolveLoraSpec } from '../src/cola/lora.ts';
import type { Tokenizer } from '../src/cola/data.ts';

const HAVE_MAPS = existsSync('/proc/self/maps');
const maps = () => readFileSync('/proc/self/maps', 'utf8').split('\n').length - 1;

describe.skipIf(!HAVE_MAPS)('driver objects are bounded', () => {
  test('the bind-group cache is bounded: 20,000 distinct bind groups leave a bounded number of maps', async () => {
    const e = await Engine.create();
    const x = e.upload(new Float32Array(64 * 20000).fill(1), [20000, 64]);
    const before = maps();
    // Each row slice is a distinct (buffer, offset) binding: a distinct bind group.
    for (let i = 0; i < 20000; i++) {
      const row = x.rows(i, i + 1);
      add(e, row, row).free();
      if (i % 1000 === 999) await e.sync();
    }
    await e.sync();
    Bun.gc(true);
    // Unbounded, this is ≥ 16,000 new lines (the old cache alone kept 16,384 bind groups alive).
    expect(maps() - before).toBeLessThan(8000);
    expect(e.driverObjects().bindGroups).toBeLessThanOrEqual(4096);
    expect(e.bindGroupStats.collections).toBeGreaterThan(0);
    x.free();
  });

  test('a training run in one process: after warm-up no new bind groups and a flat map count (600 steps, batch 1)', async () => {
    const e = await Engine.create();
    const base = loadBundledModel();
    // The shape of the job that crashed: ten short texts of different lengths, batch 1, many epochs.
    const texts = ['Tom the cat liked milk.', 'The dog ran to the big green park.', 'Lily saw a ball.', 'The sun was warm and bright today.',
      'Ben had a small toy car that he loved very much.', 'Mom baked a cake.', 'The bird sang.', 'Sam found a shiny stone by the river.',
      'The fish swam in the pond.', 'Anna drew a pretty tree with many green leaves.'];
    const config: TrainConfig = {
      lora: resolveLoraSpec(base.weights.config, { targets: ['q', 'v'], rank: 4, alpha: 8, bias: false }),
      chain: { links: 2 },
      optimizer: { name: 'adamw', lr: 1e-3, weightDecay: 0, betas: [0.9, 0.999], eps: 1e-8, momentum: 0 },
      schedule: { name: 'linear', warmupSteps: 0 },
      epochs: 60, batchSize: 1, maxSeqLen: 64, seed: 0, shuffle: true, maxGradNorm: 0, evalEveryKnot: false,
    };
    let at100 = { maps: 0, created: 0 };
    let at300 = { maps: 0, created: 0 };
    const snap = () => {
      Bun.gc(true);
      return { maps: maps(), created: e.bindGroupStats.misses };
    };
    const res = await trainCola({ e, weights: base.weights, tokenizer: base.tokenizer as unknown as Tokenizer, train: texts.map((text) => ({ text })), config }, {
      onStep: (s) => {
        if (s.step === 100) at100 = snap();
        if (s.step === 300) at300 = snap(); // the second link starts at 300: its fresh adapters bind new buffers
      },
      onKnot: async () => {},
    });
    const end = snap();
    expect(res.steps).toBe(600);
    // Within a link the steps bind the same buffers: no new bind groups (the defect: ~130 per step).
    expect(at300.created - at100.created).toBeLessThan(50);
    expect(end.created - at100.created).toBeLessThan(400);
    expect(end.maps - at100.maps).toBeLessThan(400);
  }, 300_000);
});
