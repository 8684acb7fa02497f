import { describe, expect, test } from 'bun:test';
import { ShapeError } from '../src/gpu/engine.ts';
import { biasGrad, gelu, geluBackward, relu, reluBackward, swiglu, swigluBackward } from '../src/gpu/ops/activation.ts';
import { axpy, mul, scale } from '../src/gpu/ops/elementwise.ts';
import { biasGradRef, geluBackwardRef, geluRef, reluBackwardRef, reluRef, swigluBackwardRef, swigluRef } from '../src/gpu/ref/activation.ts';
import { Rng } from '../src/util/rng.ts';
import { expectClose } from './helpers/compare.ts';
import { dot, f64, gradCheck } from './helpers/gradcheck.ts';
import { bitsEqual, maxAbs, readF64, testEngine } from './helpers/gpu.ts';

// Elementwise GPU tolerance: each output is a handful of f32 operations plus one exp (WGSL allows
// a few ulp; lavapipe's is ~1–2 ulp), so relative error ≲ 1e-6. tanh is computed from exp as
// (e²ᶻ − 1)/(e²ᶻ + 1), whose *absolute* error is ~1e-7 near 0; outputs add it to 1, so we also
// allow 2e-6 of the tensor's scale: atol = 2e-6·max|ref|, rtol = 1e-5.
function near(got: ArrayLike<number>, want: ArrayLike<number>, what: string) {
  expectClose(got, want, 2e-6 * maxAbs(want), 1e-5, what);
}

// Inputs with a spread of magnitudes, including large ones (no NaN/overflow allowed) and exact 0.
function inputs(rng: Rng, n: number): Float32Array {
  const x = rng.normalArray(n, 3);
  const extremes = [0, -0, 20, -20, 100, -100, 1e-4, -1e-4, 88, -88];
  for (let i = 0; i < Math.min(n, extremes.length); i++) x[i] = extremes[i]!;
  return x;
}

describe('activations: CPU references vs finite differences', () => {
  const rng = new Rng(31);
  const n = 40;
  // Stay away from ReLU's kink so the central difference is valid there.
  const x = f64(rng.normalArray(n, 2)).map((v) => (Math.abs(v) < 1e-3 ? v + 0.01 : v));
  const u = f64(rng.normalArray(n, 2));
  const r = f64(rng.normalArray(n));

  test('swiglu', () => {
    const { dGate, dUp } = swigluBackwardRef(r, x, u);
    expect(gradCheck((g) => dot(r, swigluRef(g, u)), x, dGate).worst).toBeLessThan(1);
    expect(gradCheck((uu) => dot(r, swigluRef(x, uu)), u, dUp).worst).toBeLessThan(1);
  });
  test('relu, gelu', () => {
    expect(gradCheck((xx) => dot(r, reluRef(xx)), x, reluBackwardRef(r, x)).worst).toBeLessThan(1);
    expect(gradCheck((xx) => dot(r, geluRef(xx)), x, geluBackwardRef(r, x)).worst).toBeLessThan(1);
  });
  test('the check fails on a wrong gradient (gelu with the erf-GELU derivative)', () => {
    // The exact-erf GELU derivative differs from the tanh approximation's by up to ~1e-3.
    const erfGrad = Float64Array.from(x, (v, i) => {
      const cdf = 0.5 * (1 + erf(v / Math.SQRT2));
      return r[i]! * (cdf + (v * Math.exp((-v * v) / 2)) / Math.sqrt(2 * Math.PI));
    });
    expect(gradCheck((xx) => dot(r, geluRef(xx)), x, erfGrad).worst).toBeGreaterThan(1);
  });
  test('biasGrad is the gradient of a broadcast bias', () => {
    const N = 5, C = 4;
    const dy = f64(rng.normalArray(N * C));
    const b = f64(rng.normalArray(C));
    const addBias = (bb: Float64Array) => dot(dy, Float64Array.from({ length: N * C }, (_, i) => bb[i % C]!));
    expect(gradCheck(addBias, b, biasGradRef(dy, N, C)).worst).toBeLessThan(1);
  });
});

describe('activations: GPU vs reference', () => {
  test('forward and backward on odd sizes', async () => {
    const e = await testEngine();
    const rng = new Rng(32);
    // numel % 4 != 0 runs the scalar kernels, numel % 4 == 0 the vec4 ones.
    for (const shape of [[1], [3, 37], [129, 257], [7, 11, 13], [4, 36], [3, 100, 64]]) {
      const n = shape.reduce((a, b) => a * b, 1);
      const gh = inputs(rng, n);
      const uh = rng.normalArray(n, 2);
      const dyh = rng.normalArray(n);
      const [g, u, dy] = [e.upload(gh, shape), e.upload(uh, shape), e.upload(dyh, shape)];
      const what = JSON.stringify(shape);
      near(await readF64(e, swiglu(e, g, u)), swigluRef(gh, uh), `swiglu ${what}`);
      const sb = swigluBackward(e, dy, g, u);
      const sr = swigluBackwardRef(dyh, gh, uh);
      near(await readF64(e, sb.dGate), sr.dGate, `swiglu dGate ${what}`);
      near(await readF64(e, sb.dUp), sr.dUp, `swiglu dUp ${what}`);
      // ReLU is exact (a select).
      expect(Array.from(await e.read(relu(e, g)))).toEqual(Array.from(reluRef(gh), Math.fround));
      expect(Array.from(await e.read(reluBackward(e, dy, g)))).toEqual(Array.from(reluBackwardRef(dyh, gh), Math.fround));
      near(await readF64(e, gelu(e, g)), geluRef(gh), `gelu ${what}`);
      near(await readF64(e, geluBackward(e, dy, g)), geluBackwardRef(dyh, gh), `gelu' ${what}`);
    }
  }, 60_000);

  test('biasGrad: column sums, deterministic, one and several row blocks', async () => {
    const e = await testEngine();
    const rng = new Rng(33);
    for (const shape of [[1, 65], [63, 65], [200, 65], [3, 70, 65]]) {
      const C = shape[shape.length - 1]!;
      const what = JSON.stringify(shape);
      const dyh = rng.normalArray(shape.reduce((a, b) => a * b, 1));
      const dy = e.upload(dyh, shape);
      const got = await readF64(e, biasGrad(e, dy));
      // Sums of ≤ 200 terms of size ~1 in f32: error ≲ 200·2^-24·Σ|terms| ≪ 1e-4; observed ~1e-6.
      expectClose(got, biasGradRef(dyh, dyh.length / C, C), 1e-4, 1e-5, `biasGrad ${what}`);
      expect(bitsEqual(got, await e.read(biasGrad(e, dy)))).toBe(true);
    }
  }, 60_000);

  test('elementwise helpers: mul, scale, axpy; shape errors', async () => {
    const e = await testEngine();
    const rng = new Rng(34);
    const n = 1000;
    const ah = rng.normalArray(n);
    const bh = rng.normalArray(n);
    const [a, b] = [e.upload(ah, [n]), e.upload(bh, [n])];
    // Single f32 roundings of the same operations: bit-exact against Math.fround.
    expect(Array.from(await e.read(mul(e, a, b)))).toEqual(Array.from(ah, (v, i) => Math.fround(v * bh[i]!)));
    expect(Array.from(await e.read(scale(e, a, 0.5)))).toEqual(Array.from(ah, (v) => v * 0.5));
    const y = e.upload(bh, [n]);
    axpy(e, 2, a, y);
    axpy(e, -0.25, b, y);
    // Two updates each with a rounding of the product and the sum (fma may fuse): 2 ulp-ish.
    const want = Array.from(bh, (v, i) => v + 2 * ah[i]! - 0.25 * v);
    expectClose(await e.read(y), want, 1e-6, 1e-6, 'axpy');
    expect(() => swiglu(e, a, e.upload(new Float32Array(3), [3]))).toThrow(ShapeError);
    expect(() => axpy(e, 1, a, e.upload(new Float32Array(3), [3]))).toThrow(ShapeError);
  }, 60_000);
});

// erf in f64: Maclaurin series for |x| < 3, asymptotic expansion beyond (enough for this test).
function erf(x: number): number {
  const t = Math.abs(x);
  if (t < 3) {
    // Maclaurin series, converges fast for |x| < 3
    let sum = 0, term = t, k = 0;
    while (Math.abs(term) > 1e-17 * Math.abs(sum) || k < 5) {
      sum += term / (2 * k + 1);
      k++;
      term *= (-t * t) / k;
      if (k > 200) break;
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  return Math.sign(x) * (1 - Math.exp(-t * t) / (t * Math.sqrt(Math.PI)) * (1 - 1 / (2 * t * t)));
}
