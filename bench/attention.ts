// Attention forward/backward throughput (on demand, not part of the test suite).
//   bun run bench/attention.ts [B,T,H,Hkv,D ...]
// Prints wall time and GFLOP/s (causal: 4·B·H·T²/2·D flops forward, 2× that backward) for the
// vec4 kernels ('auto' when D % 4 == 0) and the scalar ones, after one warm-up (pipeline compile).
import { Engine } from '../src/gpu/engine.ts';
import { attention, attentionBackward } from '../src/gpu/ops/attention.ts';
import { Rng } from '../src/util/rng.ts';

const shapes = process.argv.slice(2).length ? process.argv.slice(2) : ['8,128,6,6,48', '4,256,8,4,64', '2,512,8,8,64'];
const e = await Engine.create();
const rows: Record<string, string | number>[] = [];
for (const s of shapes) {
  const [B, T, H, Hkv, D] = s.split(',').map(Number) as [number, number, number, number, number];
  const rng = new Rng(1);
  const q = e.upload(rng.normalArray(B * T * H * D), [B, T, H, D]);
  const k = e.upload(rng.normalArray(B * T * Hkv * D), [B, T, Hkv, D]);
  const v = e.upload(rng.normalArray(B * T * Hkv * D), [B, T, Hkv, D]);
  const flops = 4 * B * H * ((T * T) / 2) * D;
  for (const kernel of ['auto', 'scalar'] as const) {
    let best = { f: Infinity, b: Infinity };
    for (let it = 0; it < 4; it++) {
      await e.sync();
      let t0 = performance.now();
      const { out, saved } = attention(e, q, k, v, { kernel });
      await e.sync();
      const f = performance.now() - t0;
      t0 = performance.now();
      const g = attentionBackward(e, out, q, k, v, saved);
      await e.sync();
      const b = performance.now() - t0;
      if (it > 0) best = { f: Math.min(best.f, f), b: Math.min(best.b, b) }; // it 0 compiles
      for (const t of [out, saved.lse, g.dq, g.dk, g.dv]) t.free();
    }
    rows.push({ shape: s, kernel: D % 4 === 0 || kernel === 'scalar' ? kernel : 'auto(scalar)', fwd_ms: +best.f.toFixed(1), fwd_gflops: +(flops / best.f / 1e6).toFixed(2), bwd_ms: +best.b.toFixed(1), bwd_gflops: +((2 * flops) / best.b / 1e6).toFixed(2) });
  }
  for (const t of [q, k, v]) t.free();
}
console.log(`device: ${e.ctx.info.description}`);
console.table(rows);
console.log(JSON.stringify(rows));
