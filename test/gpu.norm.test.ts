import { afterAll, describe, expect, test } from 'bun:test';
import { ShapeError } from '../src/gpu/engine.ts';
import { layernorm, layernormBackward, rmsnorm, rmsnormBackward } from '../src/gpu/ops/norm.ts';
import { layernormBackwardRef, layernormRef, rmsnormBackwardRef, rmsnormRef } from '../src/gpu/ref/norm.ts';
import { Rng } from '../src/util/rng.ts';
import { expectClose } from './helpers/compare.ts';
import { dot, f64, gradCheck } from './helpers/gradcheck.ts';
import { bitsEqual, maxAbs, readF64, testEngine } from './helpers/gpu.ts';

// GPU tolerance. Each output is a short chain of f32 ops on top of a row statistic that is a sum
// of C terms (strided lanes then a tree): its relative error is ≲ (C/WG + log2 WG)·2^-24 ≈ 1e-6
// for C ≤ 1000. Backward outputs are differences of terms of the output's own scale (cancellation)
// and column sums add N more terms, so errors are measured against the tensor's scale:
// |gpu − ref| ≤ 2e-5·max|ref| + 1e-5·|ref|, 10–20× above what we observe, far below any real bug.
const SCALE_TOL = 2e-5;
const RTOL = 1e-5;
function near(got: ArrayLike<number>, want: ArrayLike<number>, what: string) {
  expectClose(got, want, SCALE_TOL * maxAbs(want), RTOL, what);
}

// Shapes include sizes that are not multiples of the lane count (64) or column block (64 rows).
// Both row mappings (a lane per row: CPU drivers; a workgroup per row with 64 or 256 lanes: real
// GPUs) are run here whatever the adapter is.
const MODES = [
  { name: 'a lane per row', mode: 'lane', lanes: undefined },
  { name: 'a workgroup of ≤ 64 lanes per row', mode: 'workgroup', lanes: 64 },
  { name: 'a workgroup of ≤ 256 lanes per row', mode: 'workgroup', lanes: 256 },
] as const;
afterAll(async () => (await testEngine()).tune({ rowMode: 'auto', rowMaxLanes: undefined }));

// Few distinct C on purpose: C is a pipeline override and each new value is a shader compile
// (~0.5 s on lavapipe).
const SHAPES: [number, number][] = [
  [3, 7],
  [1, 288],
  [130, 65],
  [67, 288],
];

describe('RMSNorm', () => {
  test('CPU reference backward matches f64 finite differences', () => {
    const rng = new Rng(11);
    const N = 3, C = 6, eps = 1e-5;
    const x = f64(rng.normalArray(N * C));
    const w = f64(rng.normalArray(C));
    const r = f64(rng.normalArray(N * C)); // dL/dy
    const { dx, dw } = rmsnormBackwardRef(r, x, w, N, C, eps);
    expect(gradCheck((xx) => dot(r, rmsnormRef(xx, w, N, C, eps).y), x, dx).worst).toBeLessThan(1);
    expect(gradCheck((ww) => dot(r, rmsnormRef(x, ww, N, C, eps).y), w, dw).worst).toBeLessThan(1);
  });

  test('the finite-difference check fails on a wrongly perturbed gradient', () => {
    const rng = new Rng(12);
    const N = 2, C = 5, eps = 1e-5;
    const x = f64(rng.normalArray(N * C));
    const w = f64(rng.normalArray(C));
    const r = f64(rng.normalArray(N * C));
    const { dx } = rmsnormBackwardRef(r, x, w, N, C, eps);
    dx[3] += 1e-4; // a small error, ~1e-4 relative
    const res = gradCheck((xx) => dot(r, rmsnormRef(xx, w, N, C, eps).y), x, dx);
    expect(res.worst).toBeGreaterThan(1);
    expect(res.worstIndex).toBe(3);
    // and a gradient that forgot the rstd term entirely
    const wrong = Float64Array.from(x, (_, i) => r[i]! * w[i % C]! * rmsnormRef(x, w, N, C, eps).rstd[Math.floor(i / C)]!);
    expect(gradCheck((xx) => dot(r, rmsnormRef(xx, w, N, C, eps).y), x, wrong).worst).toBeGreaterThan(1);
  });

  test.each(MODES)('GPU forward and backward match the reference ($name)', async ({ mode, lanes }) => {
    const e = await testEngine();
    e.tune({ rowMode: mode, rowMaxLanes: lanes });
    const rng = new Rng(13);
    // 256-lane kernels take seconds each to compile on lavapipe: one width (C = 65 < 256 lanes) there.
    for (const [N, C] of SHAPES.filter(([, C]) => lanes !== 256 || C === 65)) {
      const eps = 1e-5;
      const xh = rng.normalArray(N * C, 1.5);
      const wh = rng.normalArray(C);
      const dyh = rng.normalArray(N * C);
      const x = e.upload(xh, [N, C]);
      const w = e.upload(wh, [C]);
      const dy = e.upload(dyh, [N, C]);
      const { y, rstd } = rmsnorm(e, x, w, eps);
      const { dx, dw } = rmsnormBackward(e, dy, x, w, rstd);
      const ref = rmsnormRef(xh, wh, N, C, eps);
      const bref = rmsnormBackwardRef(dyh, xh, wh, N, C, eps);
      near(await readF64(e, y), ref.y, `y ${N}x${C}`);
      near(await readF64(e, rstd), ref.rstd, `rstd ${N}x${C}`);
      // dx = r·dy·w − k·x cancels (for C = 1 it is ~0): measure it against its terms' scale.
      const dxScale = maxAbs(dyh) * maxAbs(wh) * maxAbs(ref.rstd);
      expectClose(await readF64(e, dx), bref.dx, SCALE_TOL * dxScale, RTOL, `dx ${N}x${C}`);
      near(await readF64(e, dw), bref.dw, `dw ${N}x${C}`);
      for (const t of [x, w, dy, y, rstd, dx, dw]) t.free();
    }
  }, 60_000);

  test('leading batch dims, shape errors, and bit-reproducible gradients', async () => {
    const e = await testEngine();
    e.tune({ rowMode: 'auto', rowMaxLanes: undefined });
    const rng = new Rng(14);
    const [B, T, C] = [3, 50, 65];
    const x = e.upload(rng.normalArray(B * T * C), [B, T, C]);
    const w = e.upload(rng.normalArray(C), [C]);
    const dy = e.upload(rng.normalArray(B * T * C), [B, T, C]);
    expect(() => rmsnorm(e, x, e.upload(new Float32Array(C + 1), [C + 1]), 1e-5)).toThrow(ShapeError);
    const { y, rstd } = rmsnorm(e, x, w, 1e-6);
    expect(y.shape).toEqual([B, T, C]);
    expect(rstd.shape).toEqual([B * T]);
    const a = rmsnormBackward(e, dy, x, w, rstd);
    const b = rmsnormBackward(e, dy, x, w, rstd);
    expect(bitsEqual(await e.read(a.dw), await e.read(b.dw))).toBe(true);
    expect(bitsEqual(await e.read(a.dx), await e.read(b.dx))).toBe(true);
  }, 60_000);
});

describe('row grid folding', () => {
  test('more rows than maxComputeWorkgroupsPerDimension (a workgroup per row folds into y)', async () => {
    const e = await testEngine();
    e.tune({ rowMode: 'workgroup', rowMaxLanes: 64 });
    const [N, C] = [e.limits.maxComputeWorkgroupsPerDimension + 1000, 7];
    const rng = new Rng(15);
    const xh = rng.normalArray(N * C);
    const wh = rng.normalArray(C);
    const { y, rstd } = rmsnorm(e, e.upload(xh, [N, C]), e.upload(wh, [C]), 1e-5);
    const ref = rmsnormRef(xh, wh, N, C, 1e-5);
    near(await readF64(e, y), ref.y, 'y (folded grid)');
    near(await readF64(e, rstd), ref.rstd, 'rstd (folded grid)');
    e.tune({ rowMode: 'auto', rowMaxLanes: undefined });
  }, 60_000);
});

describe('LayerNorm', () => {
  test('CPU reference backward matches f64 finite differences', () => {
    const rng = new Rng(21);
    const N = 3, C = 7, eps = 1e-5;
    const x = f64(rng.normalArray(N * C));
    const w = f64(rng.normalArray(C));
    const b = f64(rng.normalArray(C));
    const r = f64(rng.normalArray(N * C));
    const { dx, dw, db } = layernormBackwardRef(r, x, w, N, C, eps);
    expect(gradCheck((xx) => dot(r, layernormRef(xx, w, b, N, C, eps).y), x, dx).worst).toBeLessThan(1);
    expect(gradCheck((ww) => dot(r, layernormRef(x, ww, b, N, C, eps).y), w, dw).worst).toBeLessThan(1);
    expect(gradCheck((bb) => dot(r, layernormRef(x, w, bb, N, C, eps).y), b, db).worst).toBeLessThan(1);
  });

  test.each(MODES)('GPU forward and backward match the reference ($name)', async ({ mode, lanes }) => {
    const e = await testEngine();
    e.tune({ rowMode: mode, rowMaxLanes: lanes });
    const rng = new Rng(22);
    for (const [N, C] of SHAPES.filter(([, C]) => lanes !== 256 || C === 65)) {
      const eps = 1e-5;
      // An offset mean (3.0) checks the two-pass variance.
      const xh = Float32Array.from(rng.normalArray(N * C), (v) => 3 + v);
      const wh = rng.normalArray(C);
      const bh = rng.normalArray(C);
      const dyh = rng.normalArray(N * C);
      const x = e.upload(xh, [N, C]);
      const w = e.upload(wh, [C]);
      const b = e.upload(bh, [C]);
      const dy = e.upload(dyh, [N, C]);
      const { y, mean, rstd } = layernorm(e, x, w, b, eps);
      const g = layernormBackward(e, dy, x, w, mean, rstd);
      const ref = layernormRef(xh, wh, bh, N, C, eps);
      const bref = layernormBackwardRef(dyh, xh, wh, N, C, eps);
      near(await readF64(e, y), ref.y, `y ${N}x${C}`);
      near(await readF64(e, mean), ref.mean, `mean ${N}x${C}`);
      near(await readF64(e, rstd), ref.rstd, `rstd ${N}x${C}`);
      // dx is a difference of terms of size r·|dy·w| (for C = 1 it is 0 up to rounding): measure
      // it against that scale.
      const dxScale = maxAbs(dyh) * maxAbs(wh) * maxAbs(ref.rstd);
      expectClose(await readF64(e, g.dx), bref.dx, SCALE_TOL * dxScale, RTOL, `dx ${N}x${C}`);
      near(await readF64(e, g.dw), bref.dw, `dw ${N}x${C}`);
      near(await readF64(e, g.db), bref.db, `db ${N}x${C}`);
      for (const t of [x, w, b, dy, y, mean, rstd, g.dx, g.dw, g.db]) t.free();
    }
  }, 60_000);
});
