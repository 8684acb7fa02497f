// Peak host memory while loading a large safetensors checkpoint (issue 11: "loading without copies").
//
//   bun run bench/load-rss.ts [--mb 1024] [--dtype bf16|f32] [--root <checkout>] [--dir <tmp dir>]
//
// Writes (once per size and dtype, under --dir, default the OS temp folder) a random Llama-layout
// HF checkpoint of about --mb MiB — config.json + model.safetensors, written tensor by tensor so
// this process never holds it — then loads it with loadHfWeights of <checkout> (default: this one)
// in a fresh `bun` process and reports that process's RSS before the load and its peak (VmHWM)
// after it, in MiB and as a multiple of the file size. Run it with --root on an older checkout
// (e.g. a worktree of main before the change) to compare; both rows come from this machine.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const args = process.argv.slice(2);
const arg = (k: string, d: string) => {
  const i = args.indexOf(k);
  return i >= 0 ? args[i + 1]! : d;
};
const mb = Number(arg('--mb', '1024'));
const dtype = arg('--dtype', 'bf16') as 'bf16' | 'f32';
const roots = arg('--root', path.join(import.meta.dir, '..')).split(',').map((r) => path.resolve(r));
const base = arg('--dir', os.tmpdir());
if (dtype !== 'bf16' && dtype !== 'f32') throw new Error('--dtype bf16|f32');

// Llama layout at D = 2048 (a Llama 3.2 1B layer's width), layers added until the file reaches --mb.
const D = 2048, F = 5632, V = 32000, H = 16;
const layerParams = 4 * D * D + 3 * D * F + 2 * D;
const bytesPer = dtype === 'bf16' ? 2 : 4;
const L = Math.max(1, Math.round((mb * 2 ** 20 / bytesPer - V * D - D) / layerParams));
const dir = path.join(base, `cola-load-rss-${dtype}-${L}`);
const file = path.join(dir, 'model.safetensors');
if (!fs.existsSync(file)) {
  fs.mkdirSync(dir, { recursive: true });
  const config = {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: D, intermediate_size: F, num_hidden_layers: L,
    num_attention_heads: H, num_key_value_heads: H, vocab_size: V, max_position_embeddings: 2048, rms_norm_eps: 1e-5,
    rope_theta: 10000, tie_word_embeddings: true, torch_dtype: dtype === 'bf16' ? 'bfloat16' : 'float32', bos_token_id: 1, eos_token_id: 2,
  };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  const tensors: [string, number[]][] = [['model.embed_tokens.weight', [V, D]], ['model.norm.weight', [D]]];
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}.`;
    for (const n of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) tensors.push([`${p}self_attn.${n}.weight`, [D, D]]);
    tensors.push([`${p}mlp.gate_proj.weight`, [F, D]], [`${p}mlp.up_proj.weight`, [F, D]], [`${p}mlp.down_proj.weight`, [D, F]]);
    tensors.push([`${p}input_layernorm.weight`, [D]], [`${p}post_attention_layernorm.weight`, [D]]);
  }
  tensors.sort((a, b) => (a[0] < b[0] ? -1 : 1));
  let off = 0;
  const parts = tensors.map(([n, s]) => {
    const bytes = s.reduce((a, b) => a * b, 1) * bytesPer;
    const e = `${JSON.stringify(n)}:{"dtype":"${dtype === 'bf16' ? 'BF16' : 'F32'}","shape":[${s.join(',')}],"data_offsets":[${off},${off + bytes}]}`;
    off += bytes;
    return e;
  });
  let header = `{${parts.join(',')}}`;
  header += ' '.repeat((8 - (header.length % 8)) % 8);
  const fd = fs.openSync(file + '.tmp', 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  fs.writeSync(fd, len);
  fs.writeSync(fd, header);
  // Values ±[2^-7, 2^-5) with random mantissas (finite, weight-like magnitudes), from xorshift32.
  let x = 0x9e3779b9;
  const chunk = new Uint32Array(1 << 22);
  for (const [, s] of tensors) {
    let left = s.reduce((a, b) => a * b, 1) * bytesPer;
    while (left > 0) {
      for (let i = 0; i < chunk.length; i++) {
        x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
        const bf = ((x & 0x80000000) >>> 16) | (0x3c00 + ((x >>> 8) & 0x1ff)); // sign | exponent 120..123 | mantissa
        chunk[i] = dtype === 'bf16' ? (bf | (((x >>> 4) & 0x1ff) + 0x3c00) << 16) >>> 0 : ((bf << 16) | (x & 0xffff)) >>> 0;
      }
      const b = new Uint8Array(chunk.buffer, 0, Math.min(left, chunk.byteLength));
      fs.writeSync(fd, b);
      left -= b.length;
    }
  }
  fs.closeSync(fd);
  fs.renameSync(file + '.tmp', file);
}
const fileBytes = fs.statSync(file).size;

const child = `
const hwm = () => { const s = require('node:fs').readFileSync('/proc/self/status', 'utf8'); return Number(/VmHWM:\\s+(\\d+)/.exec(s)[1]) * 1024; };
const rss = () => { const s = require('node:fs').readFileSync('/proc/self/status', 'utf8'); return Number(/VmRSS:\\s+(\\d+)/.exec(s)[1]) * 1024; };
const { loadHfWeights } = await import(process.env.ROOT + '/src/model/hf.ts');
Bun.gc(true);
const before = rss();
const t0 = performance.now();
const w = loadHfWeights(process.env.DIR);
const ms = performance.now() - t0;
let n = 0; for (const t of w.tensors.values()) n += t.shape.reduce((a, b) => a * b, 1);
console.log(JSON.stringify({ before, peak: hwm(), ms, params: n }));
`;
const rows: string[] = [];
for (const root of roots) {
  const p = Bun.spawnSync(['bun', '-e', child], { env: { ...process.env, ROOT: root, DIR: dir }, stdout: 'pipe', stderr: 'pipe' });
  if (p.exitCode !== 0) throw new Error(`load in ${root} failed: ${p.stderr.toString()}`);
  const r = JSON.parse(p.stdout.toString().trim().split('\n').at(-1)!) as { before: number; peak: number; ms: number; params: number };
  const MiB = (b: number) => (b / 2 ** 20).toFixed(0);
  rows.push(`| ${root} | ${dtype} | ${MiB(fileBytes)} | ${MiB(r.before)} | ${MiB(r.peak)} | ${((r.peak - r.before) / fileBytes).toFixed(2)} | ${(r.ms / 1000).toFixed(1)} |`);
}
console.log(`checkpoint: ${file} (${L} layers of D=${D}, F=${F}, V=${V})`);
console.log('| checkout | dtype | file MiB | RSS before load MiB | peak RSS MiB | (peak − before) / file | load s |');
console.log('|---|---|---|---|---|---|---|');
for (const r of rows) console.log(r);
