// Stored bytes per knot with per-tensor snapshots (issue 11 item 4: "a 3-knot job on q, v stores
// ≤ 15 % of a full copy per knot").
//
//   bun run bench/snapshots.ts [--knots 3] [--dir <tmp dir>]
//
// Measured: the bundled stories260K is stored as an import would store it (one object per tensor
// and a manifest, model/snapshots.ts) into a fresh SnapshotStore; then --knots knots each change
// q_proj and v_proj of every layer (as a LoRA merge on q,v does: new f32 values) and are written
// with the previous version as parent. Each row: the tensor bytes the knot wrote to disk (measured
// as the growth of the store's .tensor files), the served file's size (a full copy, what every knot
// wrote before), and their ratio; the last column is the old layout's bytes (a whole file per knot).
// Computed: the same ratio for the Llama 3.2 1B layout (expectedTensors of its config: 16 layers,
// hidden 2048, 32 heads, 8 KV heads, vocab 128256, tied embeddings), from tensor sizes alone, for
// an f32 model and for a bf16 model whose merged q, v are kept in f32 (what knots do: docs/API.md).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { configFromHf } from '../src/model/config.ts';
import { loadBundledModel } from '../src/model/registry.ts';
import { planSnapshot, readManifest, saveSnapshot, writeSnapshot } from '../src/model/snapshots.ts';
import { expectedTensors, type ModelWeights } from '../src/model/weights.ts';
import { SnapshotStore } from '../src/store/snapshot-store.ts';
import { Rng } from '../src/util/rng.ts';

const args = process.argv.slice(2);
const arg = (k: string, d: string) => {
  const i = args.indexOf(k);
  return i >= 0 ? args[i + 1]! : d;
};
const knots = Number(arg('--knots', '3'));
const root = fs.mkdtempSync(path.join(arg('--dir', os.tmpdir()), 'cola-bench-snap-'));
const QV = /\.(q_proj|v_proj)\.weight$/;
const pct = (x: number) => `${(100 * x).toFixed(1)} %`;

try {
  const store = new SnapshotStore(root);
  const tensorBytes = () => store.list('tensor').reduce((n, d) => n + fs.statSync(store.pathOf(d, 'tensor')).size, 0);
  let w: ModelWeights = loadBundledModel().weights;
  const v0 = await saveSnapshot(store, w);
  console.log(`stories260K, measured (${knots} knots on q,v; store ${root})\n`);
  console.log('| version | tensor bytes written | full copy (served file) | written / full |');
  console.log('|---|---:|---:|---:|');
  console.log(`| import | ${tensorBytes()} | ${v0.bytes} | ${pct(tensorBytes() / v0.bytes)} |`);
  let parent = readManifest(v0.path);
  const rng = new Rng(1);
  for (let k = 1; k <= knots; k++) {
    const tensors = new Map(w.tensors);
    for (const [name, t] of w.tensors) if (QV.test(name)) tensors.set(name, { shape: t.shape, data: t.data.map((x) => x + rng.normal() * 1e-3) });
    w = { config: w.config, tensors };
    const before = tensorBytes();
    const plan = planSnapshot(w, { parent });
    const snap = await writeSnapshot(store, plan);
    const written = tensorBytes() - before;
    if (written !== snap.writtenBytes || written !== plan.addedBytes) throw new Error(`knot ${k}: disk grew by ${written}, the writer reports ${snap.writtenBytes}, the plan ${plan.addedBytes}`);
    console.log(`| knot ${k} | ${written} | ${snap.bytes} | ${pct(written / snap.bytes)} |`);
    parent = plan.manifest;
  }

  const c = configFromHf({
    model_type: 'llama', hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16, num_attention_heads: 32, num_key_value_heads: 8,
    vocab_size: 128256, max_position_embeddings: 131072, rms_norm_eps: 1e-5, tie_word_embeddings: true, rope_theta: 500000,
  });
  let all = 0, qv = 0;
  for (const [name, shape] of expectedTensors(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    all += n;
    if (QV.test(name)) qv += n;
  }
  console.log(`\nLlama 3.2 1B layout, computed from tensor sizes (${(all / 1e9).toFixed(3)} B parameters, q+v ${(qv / 1e6).toFixed(1)} M)\n`);
  console.log('| weights | knot on q,v stores | full copy | ratio |');
  console.log('|---|---:|---:|---:|');
  console.log(`| f32 | ${qv * 4} | ${all * 4} | ${pct(qv / all)} |`);
  console.log(`| bf16, merged q,v kept f32 | ${qv * 4} | ${all * 2} | ${pct((qv * 4) / (all * 2))} |`);
  console.log(`| bf16, merged q,v bf16 (not what knots do) | ${qv * 2} | ${all * 2} | ${pct(qv / all)} |`);
} finally {
  fs.rmSync(root, { recursive: true, force: true });
}
