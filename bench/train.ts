// COLA training throughput on stories260K (batch 8 × 128 tokens, r = 8 on q, v, AdamW) beside the
// PyTorch CPU figure of ENVIRONMENT.md, the cost of tying a knot (merge + snapshot write) against
// a link's time, and the peak engine memory of COLA (M = 3) against LoRA (M = 1).
// Run: bun run bench/train.ts [--steps 30] [--shape stories260K|15M]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../src/gpu/engine.ts';
import { loadBundledModel } from '../src/model/registry.ts';
import { saveSafetensorsWeights } from '../src/model/weights.ts';
import { trainCola, type TrainConfig } from '../src/cola/trainer.ts';
import { resolveLoraSpec } from '../src/cola/lora.ts';
import { SnapshotStore } from '../src/store/snapshot-store.ts';
import type { Tokenizer } from '../src/cola/data.ts';
import { llamaConfig, randomWeights } from './lib/random-model.ts';

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]!.replace(/^--/, ''), process.argv[i + 1] ?? '');
const stepsPerLink = Number(args.get('steps') ?? 30);
const shape = args.get('shape') ?? 'stories260K';
const PYTORCH_TPS: Record<string, number> = { stories260K: 4100, '15M': 820 };

const e = await Engine.create();
const base = loadBundledModel();
const weights = shape === 'stories260K' ? base.weights : randomWeights(llamaConfig('15M'), 1);
const B = 8, T = 128;
// Examples of exactly T tokens (BOS + 127 ids) so that every batch is 8 × 128 real tokens.
const tok: Tokenizer = {
  bos: 1,
  eos: 2,
  encode: (text: string, o: { bos: boolean }) => {
    const ids = text.split(' ').map(Number);
    return o.bos ? [1, ...ids] : ids;
  },
};
const V = weights.config.vocabSize;
const train = Array.from({ length: B * stepsPerLink }, (_, i) => ({ text: Array.from({ length: T }, (_, t) => 3 + ((i * 131 + t * 17) % (V - 3))).join(' ') }));

function cfg(links: number): TrainConfig {
  return {
    lora: resolveLoraSpec(weights.config, { targets: ['q', 'v'], rank: 8, alpha: 16, bias: false }),
    chain: { links },
    optimizer: { name: 'adamw', lr: 1e-3, weightDecay: 0, betas: [0.9, 0.999], eps: 1e-8, momentum: 0 },
    schedule: { name: 'linear', warmupSteps: 0 },
    epochs: links,
    batchSize: B,
    maxSeqLen: T,
    seed: 0,
    shuffle: true,
    maxGradNorm: 0,
    evalEveryKnot: false,
  };
}

const dir = mkdtempSync(join(tmpdir(), 'cola-bench-'));
const store = new SnapshotStore(dir);
async function run(links: number) {
  e.trimPool();
  e.resetPeak();
  const mem0 = e.allocatedBytes;
  const stepTimes: number[] = [];
  const knotTimes: number[] = [];
  let last = performance.now();
  let tokens = 0;
  let knotStart = 0;
  const r = await trainCola(
    { e, weights, tokenizer: tok, train, config: cfg(links) },
    {
      onStep: () => {
        const now = performance.now();
        stepTimes.push(now - last);
        last = now;
        knotStart = now; // the knot (if this was the link's last step) starts here
        tokens += B * T;
      },
      onKnot: async (k) => {
        // The knot's persistence, as the job runner does it: encode + atomic content-addressed write.
        await store.put(saveSafetensorsWeights(k.weights));
        knotTimes.push(performance.now() - knotStart);
        last = performance.now();
      },
      onLinkStart: () => {
        last = performance.now();
      },

    },
  );
  return { r, stepTimes, knotTimes, peak: e.peakBytes - mem0, tokens };
}

await run(1); // warm-up: compile every pipeline
const lora = await run(1);
const cola = await run(3);
rmSync(dir, { recursive: true, force: true });
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const steady = median(cola.stepTimes.slice(2));
const tps = (B * T * 1000) / steady;
const linkMs = cola.stepTimes.reduce((a, b) => a + b, 0) / 3;
const knotMs = median(cola.knotTimes);
console.log(`device: ${e.ctx.info.description}; model ${shape}; batch ${B}×${T}; r=8 on q,v; AdamW; ${stepsPerLink * 3} steps in 3 links`);
console.log('\n| measure | this engine | reference | ratio | goal |');
console.log('|---|---|---|---|---|');
console.log(`| training tokens/s (median step) | ${tps.toFixed(0)} | PyTorch CPU ${PYTORCH_TPS[shape]} | ${(tps / PYTORCH_TPS[shape]!).toFixed(2)} | ≥ 1.0 |`);
console.log(`| tie a knot (merge + snapshot), ms | ${knotMs.toFixed(1)} | link time ${linkMs.toFixed(0)} ms | ${((100 * knotMs) / linkMs).toFixed(2)}% | ≤ 2% |`);
console.log(`| peak engine memory, bytes | COLA (M=3) ${cola.peak} | LoRA (M=1) ${lora.peak} | ${(cola.peak / lora.peak).toFixed(4)} | 1.00 ± 0.01 |`);
console.log(JSON.stringify({ bench: 'train', shape, tokensPerS: tps, pytorchTokensPerS: PYTORCH_TPS[shape], ratio: tps / PYTORCH_TPS[shape]!, knotMs, linkMs, knotFraction: knotMs / linkMs, peakCola: cola.peak, peakLora: lora.peak }));
process.exit(0);
