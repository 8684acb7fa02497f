// Per-kernel GPU time of decoding (batch 1) with the KV cache, from timestamp queries.
// Run: bun run bench/profile-decode.ts [stories260K|15M|110M]
import { Engine } from '../src/gpu/engine.ts';
import { loadBundledModel } from '../src/model/registry.ts';
import { TransformerModel } from '../src/model/transformer.ts';
import { Generator } from '../src/model/generate.ts';
import { idTokenizer, llamaConfig, randomWeights } from './lib/random-model.ts';

const shape = process.argv[2] ?? 'stories260K';
const e = await Engine.create();
let gen: Generator;
if (shape === 'stories260K') {
  const m = loadBundledModel();
  gen = new Generator(e, TransformerModel.upload(e, m.weights), m.tokenizer);
} else {
  const cfg = llamaConfig(shape as '15M' | '110M');
  gen = new Generator(e, TransformerModel.upload(e, randomWeights(cfg, 1)), idTokenizer(cfg.vocabSize));
}
const prompt = [1, 403, 407, 261, 378];
const o = { maxTokens: 32, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [], stopAtEos: false };
await gen.generate(prompt, o);
const r = await gen.generate(prompt, o);
e.startProfile();
await gen.generate(prompt, o);
const prof = await e.stopProfile();
const total = prof.reduce((a, b) => a + b.ms, 0);
console.log(`${shape}: ${r.timing.tokensPerS.toFixed(0)} tokens/s unprofiled; GPU time in kernels ${(total / 32).toFixed(2)} ms/token over ${(prof.reduce((a, b) => a + b.n, 0) / 32).toFixed(0)} dispatches/token`);
console.log('| kernel | dispatches | ms | share |\n|---|---|---|---|');
for (const p of prof.slice(0, 20)) console.log(`| ${p.kernel.slice(0, 70)} | ${p.n} | ${p.ms.toFixed(2)} | ${((100 * p.ms) / total).toFixed(1)}% |`);
process.exit(0);
