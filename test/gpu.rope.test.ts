import { describe, expect, test } from 'bun:test';
import { ShapeError } from '../src/gpu/engine.ts';
import { rope } from '../src/gpu/ops/rope.ts';
import { ropeRef } from '../src/gpu/ref/rope.ts';
import { ropeInvFreq } from '../src/model/rope.ts';
import { Rng } from '../src/util/rng.ts';
import { expectClose } from './helpers/compare.ts';
import { dot, f64, gradCheck } from './helpers/gradcheck.ts';
import { maxAbs, readF64, testEngine } from './helpers/gpu.ts';

// llama2.c's loop, transcribed (over one token's (H·D) vector), in f64.
function llama2c(vec: Float64Array, pos: number, headSize: number, theta: number): Float64Array {
  const out = Float64Array.from(vec);
  for (let i = 0; i < vec.length; i += 2) {
    const headDim = i % headSize;
    const freq = 1 / Math.pow(theta, headDim / headSize);
    const val = pos * freq;
    const [fcr, fci] = [Math.cos(val), Math.sin(val)];
    const [v0, v1] = [vec[i]!, vec[i + 1]!];
    out[i] = v0 * fcr - v1 * fci;
    out[i + 1] = v0 * fci + v1 * fcr;
  }
  return out;
}

// HF Llama apply_rotary_pos_emb for one head: q·cos + rotate_half(q)·sin, cos/sin = cat(freqs, freqs).
function hfLlama(q: Float64Array, pos: number, theta: number): Float64Array {
  const D = q.length, h = D / 2;
  const invFreq = Array.from({ length: h }, (_, k) => 1 / Math.pow(theta, (2 * k) / D));
  const emb = [...invFreq, ...invFreq].map((f) => pos * f);
  const rot = [...Array.from(q.subarray(h), (v) => -v), ...q.subarray(0, h)];
  return Float64Array.from(q, (v, i) => v * Math.cos(emb[i]!) + rot[i]! * Math.sin(emb[i]!));
}

describe('RoPE reference', () => {
  test('matches llama2.c (interleaved) and HF Llama (rotate_half) formulations', () => {
    const rng = new Rng(51);
    const [B, T, H, D] = [2, 3, 2, 8];
    const x = f64(rng.normalArray(B * T * H * D));
    const off = 5;
    const a = ropeRef(x, B, T, H, D, { theta: 10000, interleaved: true, posOffset: off });
    const b = ropeRef(x, B, T, H, D, { theta: 500, interleaved: false, posOffset: off });
    for (let bt = 0; bt < B * T; bt++) {
      const pos = off + (bt % T);
      const tok = x.subarray(bt * H * D, (bt + 1) * H * D);
      expectClose(a.subarray(bt * H * D, (bt + 1) * H * D), llama2c(tok, pos, D, 10000), 1e-12, 0, 'llama2.c');
      for (let h = 0; h < H; h++) {
        const o = (bt * H + h) * D;
        expectClose(b.subarray(o, o + D), hfLlama(x.subarray(o, o + D), pos, 500), 1e-12, 0, 'HF');
      }
    }
    // The two conventions are genuinely different pairings.
    const c = ropeRef(x, B, T, H, D, { theta: 10000, interleaved: false, posOffset: off });
    expect(maxAbs(a.map((v, i) => v - c[i]!))).toBeGreaterThan(0.1);
  });

  test('backward (inverse rotation) matches f64 finite differences; the forward rotation fails', () => {
    const rng = new Rng(52);
    const [B, T, H, D] = [1, 4, 2, 6];
    for (const interleaved of [true, false]) {
      const o = { theta: 10000, interleaved, posOffset: 3 };
      const x = f64(rng.normalArray(B * T * H * D));
      const r = f64(rng.normalArray(B * T * H * D));
      const f = (xx: Float64Array) => dot(r, ropeRef(xx, B, T, H, D, o));
      expect(gradCheck(f, x, ropeRef(r, B, T, H, D, { ...o, inverse: true })).worst).toBeLessThan(1);
      expect(gradCheck(f, x, ropeRef(r, B, T, H, D, o)).worst).toBeGreaterThan(1);
    }
  });
});

describe('RoPE GPU', () => {
  // cos/sin are f64 values rounded to f32 (rel. 6e-8); each output is two products and a sum of
  // f32 values, so |err| ≲ 3·2^-24·(|a| + |b|): allow 1e-6·max|x| + 1e-6 relative. With a table
  // computed in f64 this holds at any position (tested up to 5000).
  test('forward and inverse vs reference, both conventions, odd sizes, posOffset', async () => {
    const e = await testEngine();
    const rng = new Rng(53);
    for (const [B, T, H, D] of [[1, 1, 1, 2], [2, 7, 3, 6], [3, 33, 5, 16]]) {
      for (const interleaved of [true, false]) {
        for (const posOffset of [0, 5000]) {
          const xh = rng.normalArray(B * T * H * D);
          const x = e.upload(xh, [B, T, H, D]);
          for (const inverse of [false, true]) {
            const o = { theta: 10000, interleaved, posOffset, inverse };
            const got = await readF64(e, rope(e, x, o));
            expectClose(got, ropeRef(xh, B, T, H, D, o), 1e-6 * maxAbs(xh), 1e-6, `rope ${[B, T, H, D]} ${JSON.stringify(o)}`);
          }
          x.free();
        }
      }
    }
  }, 60_000);

  test('scaled inverse frequencies (llama3) vs reference; they differ from theta alone', async () => {
    const e = await testEngine();
    const rng = new Rng(55);
    const [B, T, H, D] = [2, 9, 3, 16];
    const invFreq = ropeInvFreq(D, 10000, { type: 'llama3', factor: 4, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 }, 128);
    const xh = rng.normalArray(B * T * H * D);
    const x = e.upload(xh, [B, T, H, D]);
    for (const inverse of [false, true]) {
      const o = { theta: 10000, invFreq, interleaved: false, posOffset: 300, inverse };
      const got = await readF64(e, rope(e, x, o));
      expectClose(got, ropeRef(xh, B, T, H, D, o), 1e-6 * maxAbs(xh), 1e-6, `rope invFreq inverse=${inverse}`);
      const plain = ropeRef(xh, B, T, H, D, { ...o, invFreq: undefined });
      expect(Math.max(...got.map((v, i) => Math.abs(v - plain[i]!)))).toBeGreaterThan(0.1);
    }
    expect(() => rope(e, x, { theta: 10000, invFreq: invFreq.subarray(1), interleaved: false })).toThrow(ShapeError);
  }, 60_000);

  test('decode: one token at posOffset p equals row p of the full sequence; inverse undoes forward', async () => {
    const e = await testEngine();
    const rng = new Rng(54);
    const [T, H, D] = [9, 3, 16];
    const xh = rng.normalArray(T * H * D);
    const o = { theta: 10000, interleaved: true };
    const full = await e.read(rope(e, e.upload(xh, [1, T, H, D]), o));
    expect(maxAbs(full)).toBeGreaterThan(1); // not the zeros of a dropped submit
    for (const p of [0, 4, 8]) {
      const one = e.upload(xh.slice(p * H * D, (p + 1) * H * D), [1, 1, H, D]);
      const got = await e.read(rope(e, one, { ...o, posOffset: p }));
      // The same lanes compute the same f32 operations: bit-identical.
      expect(Array.from(got)).toEqual(Array.from(full.slice(p * H * D, (p + 1) * H * D)));
    }
    const x = e.upload(xh, [1, T, H, D]);
    const back = await e.read(rope(e, rope(e, x, { ...o, posOffset: 100 }), { ...o, posOffset: 100, inverse: true }));
    expectClose(back, xh, 1e-6, 1e-6, 'inverse ∘ forward');
    expect(() => rope(e, e.upload(new Float32Array(6), [1, 1, 2, 3]), o)).toThrow(ShapeError);
    expect(() => rope(e, e.upload(new Float32Array(6), [1, 6]), o)).toThrow(ShapeError);
  }, 60_000);
});
