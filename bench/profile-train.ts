// Per-kernel GPU time of one training step (forward + backward + AdamW) of stories260K at batch
// 8 × 128 with r = 8 on q, v, from timestamp queries. Run: bun run bench/profile-train.ts
import { Engine } from '../src/gpu/engine.ts';
import { loadBundledModel } from '../src/model/registry.ts';
import { TransformerModel } from '../src/model/transformer.ts';
import { initLoraHost, uploadLora, resolveLoraSpec, loraParams } from '../src/cola/lora.ts';
import { createOptimizer } from '../src/cola/optimizer.ts';
import { llamaConfig, randomWeights } from './lib/random-model.ts';

const shape = process.argv[2] ?? 'stories260K';
const e = await Engine.create();
const weights = shape === 'stories260K' ? loadBundledModel().weights : randomWeights(llamaConfig('15M'));
const model = TransformerModel.upload(e, weights);
const spec = resolveLoraSpec(weights.config, { targets: ['q', 'v'], rank: 8, alpha: 16, bias: false });
const lora = uploadLora(e, initLoraHost(weights.config, spec, 8, 0, 0));
const params = loraParams(lora);
const opt = createOptimizer(e, { name: 'adamw', lr: 1e-3, weightDecay: 0, betas: [0.9, 0.999], eps: 1e-8, momentum: 0 }, params.map((p) => p.t));
const B = 8, T = 128, V = weights.config.vocabSize;
const ids = e.upload(Int32Array.from({ length: B * T }, (_, i) => 3 + ((i * 7) % (V - 3))), [B * T], 'i32');
const targets = e.upload(Int32Array.from({ length: B * T }, (_, i) => 3 + ((i * 11) % (V - 3))), [B * T], 'i32');
async function step() {
  const { loss, grads } = model.lossAndGrads({ B, T, ids, targets }, lora);
  const gl = params.map((p) => (p.kind === 'a' ? grads.get(p.key)!.dA : grads.get(p.key)!.dB));
  opt.step(gl, 1e-3, 0);
  for (const g of gl) g.free();
  await e.readF32(loss);
  loss.free();
}
await step();
await step();
const t0 = performance.now();
for (let i = 0; i < 3; i++) await step();
const wall = (performance.now() - t0) / 3;
e.startProfile();
await step();
const prof = await e.stopProfile();
const total = prof.reduce((a, b) => a + b.ms, 0);
console.log(`${shape}: wall ${wall.toFixed(1)} ms/step (${((B * T * 1000) / wall).toFixed(0)} tokens/s); GPU time in kernels ${total.toFixed(1)} ms over ${prof.reduce((a, b) => a + b.n, 0)} dispatches`);
console.log('| kernel | dispatches | ms | share |\n|---|---|---|---|');
for (const p of prof.slice(0, 25)) console.log(`| ${p.kernel.slice(0, 70)} | ${p.n} | ${p.ms.toFixed(2)} | ${((100 * p.ms) / total).toFixed(1)}% |`);
process.exit(0);
