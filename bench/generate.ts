// Decode and prefill throughput (tokens/s) for stories260K and random-weight Llama models of the
// 15M and 110M shapes, beside the llama2.c figures measured on these machines (ENVIRONMENT.md).
// Run: bun run bench/generate.ts [--tokens 128] [--shapes stories260K,15M,110M]
import { Engine } from '../src/gpu/engine.ts';
import { loadBundledModel } from '../src/model/registry.ts';
import { TransformerModel } from '../src/model/transformer.ts';
import { Generator } from '../src/model/generate.ts';
import { idTokenizer, llamaConfig, randomWeights } from './lib/random-model.ts';

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]!.replace(/^--/, ''), process.argv[i + 1] ?? '');
const nTokens = Number(args.get('tokens') ?? 128);
const shapes = (args.get('shapes') ?? 'stories260K,15M,110M').split(',');
const reps = Number(args.get('reps') ?? 3);

// llama2.c greedy decode, tokens/s (ENVIRONMENT.md): single thread for stories260K, 2 OpenMP threads otherwise.
const LLAMA2C: Record<string, number> = { stories260K: 5400, '15M': 610, '110M': 75 };
const GOAL: Record<string, number> = { stories260K: 1500, '15M': 200 };

const e = await Engine.create();
console.log(`device: ${e.ctx.info.vendor} ${e.ctx.info.architecture} ${e.ctx.info.description}`);
const rows: { model: string; prefillTps: number; decodeTps: number; msPerToken: number; dispatchesPerToken: number; ref: number }[] = [];
for (const shape of shapes) {
  let gen: Generator;
  if (shape === 'stories260K') {
    const m = loadBundledModel();
    gen = new Generator(e, TransformerModel.upload(e, m.weights), m.tokenizer);
  } else {
    const cfg = llamaConfig(shape as '15M' | '110M');
    gen = new Generator(e, TransformerModel.upload(e, randomWeights(cfg, 1)), idTokenizer(cfg.vocabSize));
  }
  const prompt = Array.from({ length: 32 }, (_, i) => (i * 37 + 5) % 500 + 3);
  prompt[0] = 1;
  const opts = { maxTokens: nTokens, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [], stopAtEos: false };
  await gen.generate(prompt, opts); // warm-up: compiles every pipeline
  let best = { prefill: Infinity, decodeTps: 0, ms: 0, disp: 0 };
  for (let r = 0; r < reps; r++) {
    const d0 = e.stats.dispatches;
    const res = await gen.generate(prompt, opts);
    const disp = (e.stats.dispatches - d0) / res.tokenIds.length;
    if (res.timing.tokensPerS > best.decodeTps) best = { prefill: res.timing.prefillMs, decodeTps: res.timing.tokensPerS, ms: res.timing.decodeMs / (res.tokenIds.length - 1), disp };
  }
  rows.push({ model: shape, prefillTps: (prompt.length * 1000) / best.prefill, decodeTps: best.decodeTps, msPerToken: best.ms, dispatchesPerToken: best.disp, ref: LLAMA2C[shape] ?? NaN });
  gen.model.free();
}
console.log(`\n| model | prefill tok/s (32-token prompt) | decode tok/s (batch 1, ${nTokens} tokens) | ms/token | dispatches/token | llama2.c decode tok/s | ratio | goal |`);
console.log('|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  console.log(`| ${r.model} | ${r.prefillTps.toFixed(0)} | ${r.decodeTps.toFixed(0)} | ${r.msPerToken.toFixed(2)} | ${r.dispatchesPerToken.toFixed(0)} | ${r.ref} | ${(r.decodeTps / r.ref).toFixed(2)} | ${GOAL[r.model] ?? '-'} |`);
}
console.log(JSON.stringify({ bench: 'generate', device: e.ctx.info.description, rows }));
process.exit(0);
