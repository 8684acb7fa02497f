// matmul / linear / LoRA linear on the real WebGPU device vs the f64 CPU references, and the
// references' backward formulas vs central finite differences in f64.
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { Engine, ShapeError, type Tensor } from '../src/gpu/engine.ts';
import { availableMatmulVariants, defaultMatmulVariant, linear, linearBackward, matmul, type MatmulVariant } from '../src/gpu/ops/matmul.ts';
import { loraLinear, loraLinearBackward } from '../src/gpu/ops/lora.ts';
import { refLinear, refLinearBackward, refLoraLinear, refLoraLinearBackward, refMatmul, type Num, type RefLora } from '../src/gpu/ref/matmul.ts';
import { Rng } from '../src/util/rng.ts';
import { expectClose } from './helpers/compare.ts';

const EPS = 2 ** -23; // f32 unit roundoff ×2 (machine epsilon)

/**
 * Absolute tolerance for an f32 dot product of length K of U(-1,1)·U(-1,1) terms (variance 1/9 each):
 * partial sums have magnitude ~ sqrt(K)/3, and each of the K additions rounds by ≤ eps/2 of it with
 * a random sign, so the error is ~ sqrt(K)·eps·sqrt(K)/3. Factor 16 covers the tail over thousands of
 * outputs and the different summation orders of the kernels (≥ 3 orders of magnitude below a wrong
 * index or a dropped term, which gives errors ~0.1–1). `scale` multiplies for |alpha| or larger inputs.
 */
function tolK(K: number, scale = 1): number {
  return 16 * Math.sqrt(K) * EPS * Math.max(1, Math.sqrt(K) / 3) * scale;
}

const T = 240_000; // lavapipe compiles each new pipeline lazily (~0.5–2 s, more on a busy machine)

let e: Engine;
let variants: MatmulVariant[];
beforeAll(async () => {
  e = await Engine.create();
  variants = availableMatmulVariants(e);
  // Small register tiles (R ≤ 2 rows for 'uni', one subgroup's rows for 'sg'; CN ≤ 4 columns per
  // lane) everywhere except the test of the full-size tiles below: lavapipe compiles a 32×(8·4) tile
  // in 10–40 s, a small one in ~1 s, and the generated code paths (loads, edges, epilogue) are the same.
  e.tune({ matmulTileCap: { R: 2, CN: 4 } });
});
afterAll(() => {
  e.tune({ matmulVariant: null });
  e.tune({ matmulTileCap: null });
});

async function read(t: Tensor): Promise<Float32Array> {
  return e.readF32(t);
}

describe('matmul vs f64 reference', () => {
  // lavapipe compiles every new pipeline lazily (~1–2 s on 2 busy cores), so the cases are chosen to
  // cover the kernel code paths with few distinct kernels: sizes reach the kernels through a uniform
  // block, and the tile (R, CN) only changes with powers of two of M and N.
  // All 4 transposes on a scalar-load shape (K odd) and a vec4-load shape (K % 4 == 0), both with
  // M, N not multiples of any tile; then the other odd shapes (M=1 decode, N=5, LoRA K=N=8, K=1).
  const allT: [boolean, boolean][] = [
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ];
  const cases: [number, number, number, [boolean, boolean][]][] = [
    [33, 65, 17, allT],
    [37, 132, 45, allT],
    [1, 7, 13, [[false, true]]],
    [127, 129, 5, [[false, false], [true, false]]],
    [40, 8, 8, [[false, true]]],
    [35, 1, 20, [[false, false]]],
    [65, 36, 40, [[false, true], [true, true]]], // x·Wᵀ via transpose2d + the untransposed tile (M ≥ 64, N, K % 4 == 0)
  ];
  // The default variant runs every listed transpose. The others run the NN and TT ones: their A
  // and B load paths are generated independently of each other, so NN + TT reach every load path
  // (and halve the kernels to compile: a cold Mesa shader cache makes compiles dominate this file).
  const transposesFor = (v: MatmulVariant, ts: [boolean, boolean][]): [boolean, boolean][] => {
    if (v === defaultMatmulVariant(e)) return ts;
    const same = ts.filter(([ta, tb]) => ta === tb);
    return same.length ? same : [[false, false]];
  };
  test('every variant, every transpose, odd shapes', async () => {
    const rng = new Rng(101);
    expect(variants).toContain('uni');
    expect(variants).toContain('tiled');
    for (const v of variants) {
      for (const [M, K, N, ts] of cases) {
        for (const [transA, transB] of transposesFor(v, ts)) {
          const A = rng.uniformArray(M * K);
          const B = rng.uniformArray(K * N);
          const a = e.upload(A, transA ? [K, M] : [M, K]);
          const b = e.upload(B, transB ? [N, K] : [K, N]);
          const c = matmul(e, a, b, { transA, transB, variant: v });
          expect(c.shape).toEqual([M, N]);
          const want = refMatmul(A, B, { batch: 1, M, K, N, transA, transB });
          expectClose(await read(c), want, tolK(K), 0, `${v} ${M}x${K}x${N} tA=${transA} tB=${transB}`);
          a.free();
          b.free();
          c.free();
        }
      }
    }
  }, T);

  test('batched (both, B broadcast, A broadcast), alpha, accumulate, out and bias, every variant', async () => {
    const rng = new Rng(202);
    for (const v of variants) {
      for (const [transA, transB] of transposesFor(v, allT)) {
        const [B1, B2, M, K, N] = [2, 3, 19, 36, 23]; // same kernels as the 37×132×45 case
        const A = rng.uniformArray(B1 * B2 * M * K);
        const Bm = rng.uniformArray(B1 * B2 * K * N);
        const a = e.upload(A, transA ? [B1, B2, K, M] : [B1, B2, M, K]);
        const b = e.upload(Bm, transB ? [B1, B2, N, K] : [B1, B2, K, N]);
        const what = `${v} tA=${transA} tB=${transB}`;
        // Both batched, alpha.
        const c = matmul(e, a, b, { transA, transB, alpha: -0.5, variant: v });
        expect(c.shape).toEqual([B1, B2, M, N]);
        expectClose(await read(c), refMatmul(A, Bm, { batch: 6, M, K, N, transA, transB }, -0.5), tolK(K, 0.5), 0, `batched ${what}`);
        // B broadcast (2-D): first batch's B.
        const B0 = Bm.slice(0, K * N);
        const b2 = e.upload(B0, transB ? [N, K] : [K, N]);
        const c2 = matmul(e, a, b2, { transA, transB, variant: v });
        expectClose(await read(c2), refMatmul(A, B0, { batch: 6, M, K, N, transA, transB, bShared: true }), tolK(K), 0, `B broadcast ${what}`);
        // A broadcast (2-D).
        const A0 = A.slice(0, M * K);
        const a2 = e.upload(A0, transA ? [K, M] : [M, K]);
        const c3 = matmul(e, a2, b, { transA, transB, variant: v });
        expect(c3.shape).toEqual([B1, B2, M, N]);
        expectClose(await read(c3), refMatmul(A0, Bm, { batch: 6, M, K, N, transA, transB, aShared: true }), tolK(K), 0, `A broadcast ${what}`);
        // Accumulate: C += 2·A·B into c3 (its current values from the GPU are the prior C).
        const prior = await read(c3);
        const acc = matmul(e, a, b, { transA, transB, alpha: 2, accumulate: c3, variant: v });
        expect(acc).toBe(c3);
        // Tolerance: 2× the product's, plus one rounding of the prior |C| ≤ ~K/3.
        expectClose(await read(c3), refMatmul(A, Bm, { batch: 6, M, K, N, transA, transB }, 2, prior), tolK(K, 2) + EPS * K, 0, `accumulate ${what}`);
        // out + bias (bias is added unscaled by alpha).
        const bias = rng.uniformArray(N);
        const bt = e.upload(bias, [N]);
        const out = e.empty([B1, B2, M, N]);
        expect(matmul(e, a, b, { transA, transB, alpha: 0.25, out, bias: bt, variant: v })).toBe(out);
        const wantB = refMatmul(A, Bm, { batch: 6, M, K, N, transA, transB }, 0.25);
        for (let i = 0; i < wantB.length; i++) wantB[i] += bias[i % N]!;
        expectClose(await read(out), wantB, tolK(K, 0.25) + EPS * 2, 0, `bias ${what}`);
        for (const t of [a, b, c, b2, c2, a2, c3, bt, out]) t.free();
      }
    }
  }, T);

  // The default variant's production tile (a full-size 'uni' tile is the same generated code with
  // other unroll counts; it costs another 10–20 s of cold compile, so it is left to bench/matmul.ts).
  test('full-size tiles of the default variant, on a multi-tile shape', async () => {
    e.tune({ matmulTileCap: null });
    const rng = new Rng(303);
    const [M, K, N] = [70, 132, 140]; // 3×3 tiles of 32×32 rows×columns, partial at both edges
    for (const v of [defaultMatmulVariant(e)]) {
      for (const transB of [false, true]) {
        const A = rng.uniformArray(M * K);
        const B = rng.uniformArray(K * N);
        const c = matmul(e, e.upload(A, [M, K]), e.upload(B, transB ? [N, K] : [K, N]), { transB, variant: v });
        expectClose(await read(c), refMatmul(A, B, { batch: 1, M, K, N, transB }), tolK(K), 0, `${v} full tile tB=${transB}`);
      }
    }
    e.tune({ matmulTileCap: { R: 2, CN: 4 } });
  }, T);

  test("sizes as override constants (sizes: 'override'), with alpha, bias and accumulate", async () => {
    const rng = new Rng(909);
    const [M, K, N] = [33, 68, 36]; // vec4 loads along K and N, partial tiles
    const A = rng.uniformArray(M * K);
    const B = rng.uniformArray(K * N);
    const bias = rng.uniformArray(N);
    const C0 = rng.uniformArray(M * N);
    const c = e.upload(C0, [M, N]);
    matmul(e, e.upload(A, [M, K]), e.upload(B, [K, N]), { alpha: -1.5, bias: e.upload(bias, [N]), accumulate: c, sizes: 'override' });
    const want = refMatmul(A, B, { batch: 1, M, K, N }, -1.5, C0);
    for (let i = 0; i < want.length; i++) want[i] += bias[i % N]!;
    expectClose(await read(c), want, tolK(K, 1.5) + 4 * EPS, 0, 'override sizes');
  }, T);

  test('shape errors are thrown, not dispatched', () => {
    const a = e.zeros([4, 5]);
    const b = e.zeros([6, 7]);
    expect(() => matmul(e, a, b)).toThrow(ShapeError);
    expect(() => matmul(e, e.zeros([2, 4, 5]), e.zeros([3, 5, 7]))).toThrow(ShapeError);
    expect(() => matmul(e, a, e.zeros([5, 7]), { out: e.zeros([4, 6]) })).toThrow(ShapeError);
    expect(() => matmul(e, a, e.zeros([5, 4]), { out: a })).toThrow(ShapeError); // aliasing
  });
});

describe('linear and linearBackward vs f64 reference', () => {
  // linear and LoRA are compositions of matmul dispatches (tested per variant above); they run on
  // the device's default variant here.
  test('forward with bias, backward dx / dW (overwrite and accumulate) / db', async () => {
    const rng = new Rng(404);
    const [n, inF, outF] = [45, 67, 29];
    for (const v of [defaultMatmulVariant(e)]) {
      const X = rng.uniformArray(n * inF);
      const W = rng.uniformArray(outF * inF);
      const Bi = rng.uniformArray(outF);
      const DY = rng.uniformArray(n * outF);
      const x = e.upload(X, [5, 9, inF]); // leading dims are flattened
      const w = e.upload(W, [outF, inF]);
      const y = linear(e, x, w, e.upload(Bi, [outF]));
      expect(y.shape).toEqual([5, 9, outF]);
      expectClose(await read(y), refLinear(X, W, Bi, n, inF, outF), tolK(inF) + EPS * 2, 0, `linear ${v}`);
      const ref = refLinearBackward(DY, X, W, n, inF, outF);
      const dy = e.upload(DY, [5, 9, outF]);
      const dw = e.empty([outF, inF]);
      const db = e.empty([outF]);
      const { dx } = linearBackward(e, dy, x, w, { needDx: true, dw, db });
      expect(dx!.shape).toEqual([5, 9, inF]);
      expectClose(await read(dx!), ref.dx, tolK(outF), 0, `dx ${v}`);
      expectClose(await read(dw), ref.dw, tolK(n), 0, `dW ${v}`);
      expectClose(await read(db), ref.db, tolK(n), 0, `db ${v}`);
      // Accumulating a second micro-batch doubles the gradients (tolerance doubles too).
      const r2 = linearBackward(e, dy, x, w, { needDx: false, dw, db, accumulate: true });
      expect(r2.dx).toBeUndefined();
      expectClose(await read(dw), ref.dw.map((g) => 2 * g), 2 * tolK(n), 0, `dW accumulate ${v}`);
      expectClose(await read(db), ref.db.map((g) => 2 * g), 2 * tolK(n), 0, `db accumulate ${v}`);
    }
  }, T);
});

describe('LoRA linear vs f64 reference', () => {
  for (const withLoraBias of [false, true]) {
    test(`forward and backward${withLoraBias ? ' with LoRA bias' : ''}`, async () => {
      const rng = new Rng(withLoraBias ? 505 : 506);
      const [n, k, d, r] = [37, 72, 53, 8];
      for (const v of [defaultMatmulVariant(e)]) {
        e.tune({ matmulVariant: v });
        const X = rng.uniformArray(n * k);
        const W = rng.uniformArray(d * k);
        const Bi = rng.uniformArray(d);
        const L: RefLora = { a: rng.uniformArray(r * k), b: rng.uniformArray(d * r), scale: 0.75, bias: withLoraBias ? rng.uniformArray(d) : null };
        const DY = rng.uniformArray(n * d);
        const x = e.upload(X, [n, k]);
        const w = e.upload(W, [d, k]);
        const lora = {
          a: e.upload(L.a as Float32Array, [r, k]),
          b: e.upload(L.b as Float32Array, [d, r]),
          scale: L.scale,
          bias: withLoraBias ? e.upload(L.bias as Float32Array, [d]) : undefined,
        };
        const { y, h } = loraLinear(e, x, w, e.upload(Bi, [d]), lora);
        const ref = refLoraLinear(X, W, Bi, L, n, k, d, r);
        // y sums a K=k product and a K=r product of h (|h| up to ~sqrt(k)/3·3 = 5) scaled by s.
        expectClose(await read(h), ref.h, tolK(k), 0, `h ${v}`);
        expectClose(await read(y), ref.y, tolK(k) + tolK(r, 5 * L.scale) + 4 * EPS, 0, `y ${v}`);
        const g = loraLinearBackward(e, e.upload(DY, [n, d]), x, w, h, lora, { needDx: true });
        const rg = refLoraLinearBackward(DY, X, W, L, n, k, d, r);
        // dB: K=n sum of dy·h, |h| ≲ 5. dh: K=d. dA: K=n of dh (|dh| ≲ s·sqrt(d)/3·... ≈ 2) times x, plus dh's own error.
        expectClose(await read(g.dB), rg.dB, tolK(n, 5 * L.scale), 0, `dB ${v}`);
        expectClose(await read(g.dA), rg.dA, tolK(n, 2) + n * tolK(d, L.scale), 0, `dA ${v}`);
        expectClose(await read(g.dx!), rg.dx, tolK(d) + tolK(r, 2) + r * tolK(d, L.scale), 0, `dx ${v}`);
        if (withLoraBias) expectClose(await read(g.dBias!), rg.dBias, tolK(n), 0, `dBias ${v}`);
        else expect(g.dBias).toBeUndefined();
        const g2 = loraLinearBackward(e, e.upload(DY, [n, d]), x, w, h, lora, { needDx: false });
        expect(g2.dx).toBeUndefined();
        expectClose(await read(g2.dA), rg.dA, tolK(n, 2) + n * tolK(d, L.scale), 0, `dA (no dx) ${v}`);
      }
      e.tune({ matmulVariant: null });
    }, T);
  }
});

// ---------------------------------------------------------------- finite differences (f64)

/**
 * Central differences of L(θ) = Σ dy ⊙ f(θ) with respect to every element of `param` (mutated and
 * restored), compared to `grad`. In f64 with h = 1e-5 the truncation error of a central difference is
 * O(h²·f''') and f is linear or bilinear in each parameter, so it is exact up to rounding
 * (~1e-16·|L|/h ≈ 1e-10 here); tolerance 1e-7 leaves margin yet is far below a wrong term (~1e-2+).
 */
function checkGrad(param: Float64Array, grad: Num, loss: () => number, what: string): void {
  const h = 1e-5;
  const fd = new Float64Array(param.length);
  for (let i = 0; i < param.length; i++) {
    const p0 = param[i]!;
    param[i] = p0 + h;
    const lp = loss();
    param[i] = p0 - h;
    const lm = loss();
    param[i] = p0;
    fd[i] = (lp - lm) / (2 * h);
  }
  expectClose(grad, fd, 1e-7, 1e-7, `finite differences ${what}`);
}

function f64(rng: Rng, n: number): Float64Array {
  return Float64Array.from(rng.uniformArray(n));
}
const dot = (a: Num, b: Num) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
};

describe('CPU reference backward vs finite differences (f64)', () => {
  test('linear backward', () => {
    const rng = new Rng(606);
    const [n, inF, outF] = [4, 5, 3];
    const x = f64(rng, n * inF);
    const w = f64(rng, outF * inF);
    const b = f64(rng, outF);
    const dy = f64(rng, n * outF);
    const g = refLinearBackward(dy, x, w, n, inF, outF);
    const loss = () => dot(dy, refLinear(x, w, b, n, inF, outF));
    checkGrad(x, g.dx, loss, 'dx');
    checkGrad(w, g.dw, loss, 'dW');
    checkGrad(b, g.db, loss, 'db');
  });

  test('LoRA linear backward (dx, dA, dB, dBias)', () => {
    const rng = new Rng(707);
    const [n, k, d, r] = [4, 6, 5, 2];
    const x = f64(rng, n * k);
    const w = f64(rng, d * k);
    const bias = f64(rng, d);
    const L = { a: f64(rng, r * k), b: f64(rng, d * r), scale: 1.7, bias: f64(rng, d) };
    const dy = f64(rng, n * d);
    const g = refLoraLinearBackward(dy, x, w, L, n, k, d, r);
    const loss = () => dot(dy, refLoraLinear(x, w, bias, L, n, k, d, r).y);
    checkGrad(x, g.dx, loss, 'dx');
    checkGrad(L.a, g.dA, loss, 'dA');
    checkGrad(L.b, g.dB, loss, 'dB');
    checkGrad(L.bias, g.dBias, loss, 'dBias');
  });

  test('the check fails on a deliberately wrong gradient', () => {
    const rng = new Rng(808);
    const [n, k, d, r] = [3, 4, 5, 2];
    const x = f64(rng, n * k);
    const w = f64(rng, d * k);
    const L = { a: f64(rng, r * k), b: f64(rng, d * r), scale: 0.5 };
    const dy = f64(rng, n * d);
    const loss = () => dot(dy, refLoraLinear(x, w, null, L, n, k, d, r).y);
    const g = refLoraLinearBackward(dy, x, w, L, n, k, d, r);
    checkGrad(L.a, g.dA, loss, 'dA (correct)');
    // A classic bug: forgetting the scale s in dA.
    const wrong = g.dA.map((v) => v / L.scale);
    expect(() => checkGrad(L.a, wrong, loss, 'dA without s')).toThrow(/finite differences/);
    // A single perturbed element is caught too.
    const one = Float64Array.from(g.dB);
    one[3] += 1e-4;
    expect(() => checkGrad(L.b, one, loss, 'dB perturbed')).toThrow(/finite differences/);
  });
});
