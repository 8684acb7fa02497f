// The fused decode-layer kernels (kernels/decode_layer.ts) against the f64 CPU references: q/k/v and
// gate/up products with the RMSNorm computed in-kernel, o/down products with the residual add, and
// attention with RoPE and the KV-cache append. Weights f32, f16 and bf16 (the 16-bit ones rounded
// first, so the reference uses exactly the decoded values), odd output counts, several input rows,
// grouped-query heads, Qwen2-style q/k/v biases.
import { beforeAll, describe, expect, test } from 'bun:test';
import { Engine, ShapeError, type Tensor } from '../src/gpu/engine.ts';
import { attentionAppend, gateUpRmsGemv, qkvRmsGemv, residGemv } from '../src/gpu/ops/decode-layer.ts';
import { halfBits, roundToHalf, uploadHalf, type HalfKind } from '../src/gpu/half.ts';
import { refLinear } from '../src/gpu/ref/matmul.ts';
import { rmsnormRef } from '../src/gpu/ref/norm.ts';
import { swigluRef } from '../src/gpu/ref/activation.ts';
import { ropeRef } from '../src/gpu/ref/rope.ts';
import { attentionDecodeRef } from '../src/gpu/ref/attention.ts';
import { Rng } from '../src/util/rng.ts';

let e: Engine;
beforeAll(async () => {
  e = await Engine.create();
});

type Kind = 'f32' | HalfKind;
/** A random (n, k) weight on the device in `kind` and its exact f32 values. */
function weight(rng: Rng, n: number, k: number, kind: Kind): { f: Float32Array; t: Tensor } {
  if (kind === 'f32') {
    const f = rng.uniformArray(n * k);
    return { f, t: e.upload(f, [n, k]) };
  }
  const f = roundToHalf(rng.uniformArray(n * k), kind);
  return { f, t: uploadHalf(e, halfBits(f, kind)!, [n, k], kind) };
}

/** |got − want| ≤ atol + rtol·|want| elementwise. f32 sums of K ≤ 64 products of |x| ≤ ~2: 2e-5. */
function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, what: string, atol = 2e-5, rtol = 2e-5) {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (!(Math.abs(got[i]! - want[i]!) <= atol + rtol * Math.abs(want[i]!))) throw new Error(`${what}[${i}]: ${got[i]} vs ${want[i]}`);
  }
}

const EPS = 1e-5;

describe.each(['f32', 'f16', 'bf16'] as const)('%s weights', (kind) => {
  test('q/k/v with the RMSNorm in-kernel and biases: rows 1 and 3, odd head widths, GQA', async () => {
    const rng = new Rng(3);
    for (const [M, K, NQ, NKV, bias] of [[1, 24, 12, 6, true], [3, 40, 20, 10, false], [1, 64, 13, 7, true]] as const) {
      const x = rng.uniformArray(M * K, -2, 2);
      const g = rng.uniformArray(K, 0.5, 1.5);
      const wq = weight(rng, NQ, K, kind), wk = weight(rng, NKV, K, kind), wv = weight(rng, NKV, K, kind);
      const b = bias ? rng.uniformArray(NQ + 2 * NKV) : null;
      const y = qkvRmsGemv(e, e.upload(x, [M, K]), e.upload(g, [K]), EPS, wq.t, wk.t, wv.t, b ? e.upload(b, [NQ + 2 * NKV]) : null);
      const got = await e.readF32(y);
      const xn = rmsnormRef(x, g, M, K, EPS).y;
      const parts = [refLinear(xn, wq.f, b ? b.subarray(0, NQ) : null, M, K, NQ), refLinear(xn, wk.f, b ? b.subarray(NQ, NQ + NKV) : null, M, K, NKV), refLinear(xn, wv.f, b ? b.subarray(NQ + NKV) : null, M, K, NKV)];
      const want = new Float64Array(M * (NQ + 2 * NKV));
      for (let m = 0; m < M; m++) {
        want.set(parts[0]!.subarray(m * NQ, (m + 1) * NQ), m * (NQ + 2 * NKV));
        want.set(parts[1]!.subarray(m * NKV, (m + 1) * NKV), m * (NQ + 2 * NKV) + NQ);
        want.set(parts[2]!.subarray(m * NKV, (m + 1) * NKV), m * (NQ + 2 * NKV) + NQ + NKV);
      }
      expectClose(got, want, `qkv ${kind} M${M} K${K}`);
    }
  });

  test('gate/up with the RMSNorm in-kernel and SiLU·mul; F past one workgroup, odd F', async () => {
    const rng = new Rng(4);
    for (const [M, K, F] of [[1, 32, 37], [2, 16, 9], [8, 24, 20]] as const) {
      const x = rng.uniformArray(M * K, -2, 2);
      const g = rng.uniformArray(K, 0.5, 1.5);
      const wg = weight(rng, F, K, kind), wu = weight(rng, F, K, kind);
      const got = await e.readF32(gateUpRmsGemv(e, e.upload(x, [M, K]), e.upload(g, [K]), EPS, wg.t, wu.t));
      const xn = rmsnormRef(x, g, M, K, EPS).y;
      expectClose(got, swigluRef(refLinear(xn, wg.f, null, M, K, F), refLinear(xn, wu.f, null, M, K, F)), `gateup ${kind} M${M}`);
    }
  });

  test('o/down product with the residual add and a bias', async () => {
    const rng = new Rng(5);
    for (const [M, K, N, bias] of [[1, 48, 11, true], [4, 16, 30, false]] as const) {
      const x = rng.uniformArray(M * K), r = rng.uniformArray(M * N), w = weight(rng, N, K, kind);
      const b = bias ? rng.uniformArray(N) : null;
      const acc = e.upload(r, [M, N]);
      residGemv(e, e.upload(x, [M, K]), w.t, acc, b ? e.upload(b, [N]) : null);
      const want = refLinear(x, w.f, b, M, K, N).map((v, i) => v + r[i]!);
      expectClose(await e.readF32(acc), want, `resid ${kind} M${M}`);
    }
  });
});

describe('attention with RoPE and the KV-cache append', () => {
  for (const [H, HKV, D, interleaved, pos] of [[4, 2, 8, false, 5], [3, 3, 6, true, 0], [6, 2, 16, false, 40], [2, 1, 4, false, 70]] as const) {
    test(`H ${H}, HKV ${HKV}, D ${D}, ${interleaved ? 'interleaved' : 'rotate_half'} pairs, position ${pos}`, async () => {
      const rng = new Rng(10 + pos);
      const maxT = pos + 3;
      const NQ = H * D, NKV = HKV * D;
      const qkv = rng.uniformArray(NQ + 2 * NKV, -1, 1);
      const kc = rng.uniformArray(maxT * NKV, -1, 1), vc = rng.uniformArray(maxT * NKV, -1, 1);
      const invFreq = Float32Array.from({ length: D / 2 }, (_, i) => Math.pow(10000, (-2 * i) / D) * 0.9);
      const K = e.upload(kc, [1, maxT, HKV, D]), V = e.upload(vc, [1, maxT, HKV, D]);
      const out = await e.readF32(attentionAppend(e, e.upload(qkv, [NQ + 2 * NKV]), K, V, pos, { H, HKV, D, rope: { invFreq, interleaved } }));
      const ro = { theta: 10000, invFreq, interleaved, posOffset: pos };
      const q = ropeRef(qkv.subarray(0, NQ), 1, 1, H, D, ro);
      const k = ropeRef(qkv.subarray(NQ, NQ + NKV), 1, 1, HKV, D, ro);
      const kWant = Float64Array.from(kc), vWant = Float64Array.from(vc);
      kWant.set(k, pos * NKV);
      vWant.set(qkv.subarray(NQ + NKV), pos * NKV);
      // The cache rows: row pos is the roped k and the v of this token, every other row unchanged.
      // RoPE in f32 (cos/sin of an f32 angle) vs f64: 1e-5.
      expectClose(await e.readF32(K), kWant, 'k cache', 1e-5, 1e-5);
      expect(Array.from(await e.readF32(V))).toEqual(Array.from(Float32Array.from(vWant)));
      const want = attentionDecodeRef(q, kWant, vWant, { B: 1, maxT, H, Hkv: HKV, D }, pos + 1);
      expectClose(out, want, 'attention out', 3e-5, 3e-5);
    });
  }

  test('no RoPE (learned positions) and bad shapes are refused', async () => {
    const H = 2, HKV = 2, D = 4, pos = 2, maxT = 4;
    const rng = new Rng(2);
    const qkv = rng.uniformArray((H + 2 * HKV) * D);
    const kc = rng.uniformArray(maxT * HKV * D), vc = rng.uniformArray(maxT * HKV * D);
    const out = await e.readF32(attentionAppend(e, e.upload(qkv, [qkv.length]), e.upload(kc, [maxT * HKV * D]), e.upload(vc, [maxT * HKV * D]), pos, { H, HKV, D, rope: null }));
    const kW = Float64Array.from(kc), vW = Float64Array.from(vc);
    kW.set(qkv.subarray(H * D, (H + HKV) * D), pos * HKV * D);
    vW.set(qkv.subarray((H + HKV) * D), pos * HKV * D);
    expectClose(out, attentionDecodeRef(qkv.subarray(0, H * D), kW, vW, { B: 1, maxT, H, Hkv: HKV, D }, pos + 1), 'no-rope out', 3e-5, 3e-5);
    const t = e.upload(qkv, [qkv.length]);
    expect(() => attentionAppend(e, t, e.zeros([maxT * HKV * D]), e.zeros([maxT * HKV * D]), maxT, { H, HKV, D, rope: null })).toThrow(ShapeError);
    expect(() => qkvRmsGemv(e, e.zeros([1, 12]), e.zeros([12]), EPS, e.zeros([4, 12]), e.zeros([4, 12]), e.zeros([4, 12]), null)).toThrow(ShapeError); // K not a multiple of 8
  });
});
