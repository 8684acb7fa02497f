// Decode and prefill throughput (tokens/s) for stories260K and random-weight Llama models: the 15M
// and 110M shapes beside the llama2.c figures measured on these machines (ENVIRONMENT.md), and the
// real sizes of issue 11 — 1B (Llama 3.2 1B layout) and 7B (Mistral 7B layout) — in f32 or with
// 16-bit frozen weights (suffix -bf16 / -f16, e.g. 1B-bf16; 110M-bf16 works too). Per shape: decode
// tokens/s, dispatches per token, and GB/s of weight reads (bytes of every weight a decode step
// reads — all matrices at their stored precision, the classifier, norms; one embedding row — times
// tokens/s), beside --peak-gbs (the device's memory bandwidth, when given) as the roofline yardstick.
// Run: bun run bench/generate.ts [--tokens 128] [--reps 3] [--shapes stories260K,15M,110M] [--peak-gbs 4800] [--compare 1]
// --compare 1 (default) also decodes with the unfused layer-by-layer ops (Generator fuseLayers
// false) in the same run, repetitions interleaved with the fused ones, and reports the ratio; 0 skips it.
// On lavapipe (2 cores) keep to the small shapes (1B-bf16 runs, a few tokens); 1B/7B are for GPUs
// (bench/device/run.sh). A shape with a projection over the device's storage-binding limit is
// reported as skipped (7B f32 on lavapipe's 128 MiB: gate/up/down are 224 MiB); the classifier and
// embedding are bound in vocabulary chunks (transformer.ts, ops/embedding.ts).
import { Engine } from '../src/gpu/engine.ts';
import { loadBundledModel } from '../src/model/registry.ts';
import { TransformerModel } from '../src/model/transformer.ts';
import { Generator } from '../src/model/generate.ts';
import { weightBytes, type ModelWeights } from '../src/model/weights.ts';
import { hfShapeConfig, idTokenizer, llamaConfig, randomWeights, randomWeightsFast } from './lib/random-model.ts';

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]!.replace(/^--/, ''), process.argv[i + 1] ?? '');
const nTokens = Number(args.get('tokens') ?? 128);
const shapes = (args.get('shapes') ?? 'stories260K,15M,110M').split(',');
const reps = Number(args.get('reps') ?? 3);
const peakGbs = Number(args.get('peak-gbs') ?? NaN);
const compare = (args.get('compare') ?? '1') !== '0';

// llama2.c greedy decode, tokens/s (ENVIRONMENT.md): single thread for stories260K, 2 OpenMP threads otherwise.
const LLAMA2C: Record<string, number> = { stories260K: 5400, '15M': 610, '110M': 75 };
const GOAL: Record<string, number> = { stories260K: 1500, '15M': 200 };

/** Weights of a shape name `<stories260K|15M|110M|1B|7B>[-bf16|-f16]`. */
function weightsOf(name: string): { w: ModelWeights; tok: ReturnType<typeof idTokenizer> | null } {
  const [shape, dt] = name.split('-') as [string, string | undefined];
  const dtype = (dt ?? 'f32') as 'f32' | 'bf16' | 'f16';
  if (!['f32', 'bf16', 'f16'].includes(dtype)) throw new Error(`shape ${name}: the suffix must be -bf16 or -f16`);
  if (shape === 'stories260K') {
    if (dt) throw new Error('stories260K is an f32 llama2.c checkpoint');
    const m = loadBundledModel();
    return { w: m.weights, tok: null };
  }
  if (shape === '15M' || shape === '110M') {
    const cfg = llamaConfig(shape);
    return { w: dtype === 'f32' ? randomWeights(cfg, 1) : randomWeightsFast(cfg, dtype, 1), tok: idTokenizer(cfg.vocabSize) };
  }
  if (shape === '1B' || shape === '7B') {
    const cfg = hfShapeConfig(shape);
    return { w: randomWeightsFast(cfg, dtype, 1), tok: idTokenizer(cfg.vocabSize) };
  }
  throw new Error(`unknown shape ${name}`);
}

// The default 4 GiB budget holds the small shapes; large ones get their weights plus room for the cache.
const e = await Engine.create({ memoryBudget: Number(args.get('budget-gb') ?? 4) * 2 ** 30 });
console.log(`device: ${e.ctx.info.vendor} ${e.ctx.info.architecture} ${e.ctx.info.description}; max storage binding ${e.limits.maxStorageBufferBindingSize} B`);
type Row = { model: string; prefillTps: number; decodeTps: number; msPerToken: number; dispatchesPerToken: number; weightMiB: number; gbs: number; ref: number; unfusedTps?: number; unfusedDispatches?: number; note?: string };
const rows: Row[] = [];
for (const shape of shapes) {
  const t0 = performance.now();
  const { w, tok } = weightsOf(shape);
  // The embedding and classifier are bound in vocabulary chunks; every other weight is bound whole.
  const big = [...w.tensors.entries()].find(([n, t]) => !/embed_tokens|lm_head|wte/.test(n) && t.shape.reduce((a, b) => a * b, 1) * (t.dtype ? 2 : 4) > e.limits.maxStorageBufferBindingSize);
  if (big) {
    rows.push({ model: shape, prefillTps: NaN, decodeTps: NaN, msPerToken: NaN, dispatchesPerToken: NaN, weightMiB: weightBytes(w) / 2 ** 20, gbs: NaN, ref: NaN, note: `skipped: ${big[0]} is over the device's storage-binding limit` });
    continue;
  }
  if (weightBytes(w) * 1.1 + 2 ** 30 > e.budget) {
    rows.push({ model: shape, prefillTps: NaN, decodeTps: NaN, msPerToken: NaN, dispatchesPerToken: NaN, weightMiB: weightBytes(w) / 2 ** 20, gbs: NaN, ref: NaN, note: `skipped: raise --budget-gb (weights ${(weightBytes(w) / 2 ** 30).toFixed(1)} GiB)` });
    continue;
  }
  const model = TransformerModel.upload(e, w);
  const tokz = tok ?? loadBundledModel().tokenizer;
  // The fused layer kernels forced on (their default is GPUs only: Generator.fuseLayers 'auto').
  const gen = new Generator(e, model, tokz, true, true);
  // The reference: the same model through the unfused layer-by-layer ops (the one-dispatch decoder
  // of small models is not affected by fuseLayers, so stories260K compares with itself).
  const unfused = compare ? new Generator(e, model, tokz, true, false) : null;
  // Bytes a decode step reads: every weight on the device except the embedding table, of which one
  // row (the classifier is the embedding when tied and then read whole).
  const emb = model.embedding;
  const readBytes = model.weightBytes - (emb === model.classifierWeight ? 0 : emb.byteLength - emb.byteLength / emb.shape[0]!);
  console.log(`${shape}: ${(model.weightBytes / 2 ** 20).toFixed(0)} MiB on the device (${emb.dtype}), built and uploaded in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const prompt = Array.from({ length: 32 }, (_, i) => (i * 37 + 5) % 500 + 3);
  prompt[0] = 1;
  const opts = { maxTokens: nTokens, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [], stopAtEos: false };
  const runs = [gen, ...(unfused ? [unfused] : [])];
  for (const g of runs) await g.generate(prompt, opts); // warm-up: compiles every pipeline
  const best = runs.map(() => ({ prefill: Infinity, decodeTps: 0, ms: 0, disp: 0 }));
  for (let r = 0; r < reps; r++) {
    for (const [j, g] of runs.entries()) {
      const d0 = e.stats.dispatches;
      const res = await g.generate(prompt, opts);
      const disp = (e.stats.dispatches - d0) / res.tokenIds.length; // the prompt's dispatches included, spread over the tokens
      if (res.timing.tokensPerS > best[j]!.decodeTps) best[j] = { prefill: res.timing.prefillMs, decodeTps: res.timing.tokensPerS, ms: res.timing.decodeMs / (res.tokenIds.length - 1), disp };
    }
  }
  const b = best[0]!;
  rows.push({
    model: shape, prefillTps: (prompt.length * 1000) / b.prefill, decodeTps: b.decodeTps, msPerToken: b.ms, dispatchesPerToken: b.disp,
    weightMiB: readBytes / 2 ** 20, gbs: (readBytes * b.decodeTps) / 1e9, ref: LLAMA2C[shape] ?? NaN,
    ...(best[1] ? { unfusedTps: best[1].decodeTps, unfusedDispatches: best[1].disp } : {}),
  });
  gen.free();
  unfused?.free();
  model.free();
}
const f = (x: number, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : '-');
console.log(`\n| model | prefill tok/s (32-token prompt) | decode tok/s (batch 1, ${nTokens} tokens) | ms/token | dispatches/token | weight MiB read/token | weight GB/s | of peak | unfused decode tok/s (same run) | unfused dispatches/token | fused ÷ unfused | llama2.c decode tok/s | ratio | goal |`);
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  if (r.note) {
    console.log(`| ${r.model} | ${r.note} | | | | ${f(r.weightMiB)} | | | | | | | | |`);
    continue;
  }
  console.log(
    `| ${r.model} | ${f(r.prefillTps)} | ${f(r.decodeTps, 1)} | ${f(r.msPerToken, 2)} | ${f(r.dispatchesPerToken)} | ${f(r.weightMiB)} | ${f(r.gbs, 2)} | ${Number.isFinite(peakGbs) ? `${((100 * r.gbs) / peakGbs).toFixed(1)} %` : '-'} | ${f(r.unfusedTps ?? NaN, 1)} | ${f(r.unfusedDispatches ?? NaN)} | ${f(r.decodeTps / (r.unfusedTps ?? NaN), 2)} | ${f(r.ref)} | ${f(r.decodeTps / r.ref, 2)} | ${GOAL[r.model] ?? '-'} |`,
  );
}
console.log(JSON.stringify({ bench: 'generate', device: e.ctx.info.description, peakGbs: Number.isFinite(peakGbs) ? peakGbs : null, rows }));
process.exit(0);
