// Soak: many training steps and many generated tokens in one process, with the process's memory
// maps (/proc/self/maps lines) and RSS sampled as it goes. On lavapipe every driver object that
// holds a memfd mapping and is never released shows up here as a line per object; the process dies
// at vm.max_map_count (65,530). A healthy run is flat after warm-up.
// Run: bun run bench/soak/run.ts [--steps 20000] [--tokens 20000] [--every 1000]
import { readFileSync } from 'node:fs';
import { Engine } from '../../src/gpu/engine.ts';
import { loadBundledModel } from '../../src/model/registry.ts';
import { TransformerModel } from '../../src/model/transformer.ts';
import { Generator } from '../../src/model/generate.ts';
import { trainCola, type TrainConfig } from '../../src/cola/trainer.ts';
import { resolveLoraSpec } from '../../src/cola/lora.ts';
import type { Tokenizer } from '../../src/cola/data.ts';

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]!.replace(/^--/, ''), process.argv[i + 1] ?? '');
const STEPS = Number(args.get('steps') ?? 20000);
const TOKENS = Number(args.get('tokens') ?? 20000);
const EVERY = Number(args.get('every') ?? 1000);

function mapsCount(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').length - 1;
}
function rssMiB(): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

const e = await Engine.create();
const base = loadBundledModel();
const tok = base.tokenizer as unknown as Tokenizer;
// Short texts of different lengths, batch 1: the shape of the job that crashed after ~2,500 steps
// (issue 8); 40 of them so that 20,000 steps stay within the 1,000-epoch limit.
const who = ['Tom', 'Lily', 'Ben', 'Anna', 'Sam', 'Mia', 'The dog', 'The bird'];
const what = ['liked milk.', 'ran to the big green park.', 'saw a ball.', 'found a shiny stone by the river.', 'sang a happy song all day long.'];
const train = Array.from({ length: 40 }, (_, i) => ({ text: `${who[i % who.length]} ${what[i % what.length]}` }));
const epochs = Math.ceil(STEPS / train.length); // batch 1: one step per text
const config: TrainConfig = {
  lora: resolveLoraSpec(base.weights.config, { targets: ['q', 'v'], rank: 8, alpha: 16, bias: false }),
  chain: { links: 3 },
  optimizer: { name: 'adamw', lr: 1e-3, weightDecay: 0, betas: [0.9, 0.999], eps: 1e-8, momentum: 0 },
  schedule: { name: 'linear', warmupSteps: 0 },
  epochs, batchSize: 1, maxSeqLen: 64, seed: 0, shuffle: true, maxGradNorm: 0, evalEveryKnot: false,
};

interface Row { phase: string; count: number; maps: number; rssMiB: number; bindGroupsCreated: number; seconds: number }
const rows: Row[] = [];
const t0 = performance.now();
const sample = (phase: string, count: number) => {
  Bun.gc(true);
  const r = { phase, count, maps: mapsCount(), rssMiB: Math.round(rssMiB()), bindGroupsCreated: e.bindGroupStats.misses, seconds: Math.round((performance.now() - t0) / 100) / 10 };
  rows.push(r);
  console.log(JSON.stringify(r));
};

sample('start', 0);
await trainCola({ e, weights: base.weights, tokenizer: tok, train, config }, {
  onStep: (s) => { if (s.step % EVERY === 0) sample('train', s.step); },
  onKnot: async () => {},
});
sample('trained', STEPS);

const model = TransformerModel.upload(e, base.weights);
const gen = new Generator(e, model, base.tokenizer);
let tokens = 0;
let nextSample = EVERY;
for (let seed = 0; tokens < TOKENS; seed++) {
  const r = await gen.generate(base.tokenizer.encode('Once upon a time', { bos: true }), { maxTokens: 200, temperature: 0.8, topK: 0, topP: 1, seed, stop: [], stopAtEos: false });
  tokens += r.tokenIds.length;
  if (tokens >= nextSample) { sample('generate', tokens); nextSample += EVERY; }
}
gen.free();
model.free();

const first = rows.find((r) => r.phase === 'train') ?? rows[0]!;
const last = rows[rows.length - 1]!;
console.log('\n| phase | steps / tokens | memory maps | RSS MiB | bind groups created | s |');
console.log('|---|---|---|---|---|---|');
for (const r of rows) console.log(`| ${r.phase} | ${r.count} | ${r.maps} | ${r.rssMiB} | ${r.bindGroupsCreated} | ${r.seconds} |`);
console.log(`\nmaps after first ${EVERY} steps → end: ${first.maps} → ${last.maps} (${last.maps - first.maps >= 0 ? '+' : ''}${last.maps - first.maps}); RSS ${first.rssMiB} → ${last.rssMiB} MiB`);
console.log(JSON.stringify({ bench: 'soak', steps: STEPS, tokens, mapsStart: first.maps, mapsEnd: last.maps, rssStartMiB: first.rssMiB, rssEndMiB: last.rssMiB }));
process.exit(0);
