import { describe, expect, setDefaultTimeout, test } from 'bun:test';
import { Engine, ShapeError } from '../src/gpu/engine.ts';
import {
  adagradStep,
  adamwStep,
  clipGradNorm,
  createAdagradState,
  createAdamWState,
  createSgdState,
  gradNormSq,
  sgdStep,
  zeroState,
  type SgdHp,
} from '../src/gpu/ops/optim.ts';
import { adagradStepRef, adamwStepRef, clipGradNormRef, sgdStepRef } from '../src/gpu/ref/optim.ts';
import { Rng } from '../src/util/rng.ts';
import { expectClose } from './helpers/compare.ts';

// lavapipe shares 2 cores with other jobs: a generous per-test limit, never a timing assertion.
setDefaultTimeout(60_000);
const e = await Engine.create();

const N = 1037; // not a multiple of the 256-lane workgroup
const STEPS = 6;
const lrAt = (t: number) => 1e-2 * (1 - t / 10); // a linear schedule: lr differs at every step

// Tolerances: parameters are O(1) and each step changes them by O(lr) = O(1e-2). The GPU works in
// f32 (each op rounds by ≤ 6e-8 relative; lavapipe does not fuse mul+add) while the reference runs
// in f64, so after a few steps parameters differ by ~1e-7: atol 1e-6, rtol 1e-6. Moments and
// accumulators are compared with rtol 1e-5 (a few f32 roundings each, plus the f32 constants
// β, 1−β). A formula error (e.g. a missing bias correction: a 10× change at t=1 for β2=0.999,
// or weight decay applied to the gradient instead of the weight) is far outside these.
describe('optimizers: GPU vs the CPU reference of the PyTorch formulas', () => {
  test('AdamW: several steps with a changing lr, a reset, then more steps; one pipeline', async () => {
    const rng = new Rng(11);
    const p0 = rng.normalArray(N);
    const p = Float64Array.from(p0);
    const m = new Float64Array(N);
    const v = new Float64Array(N);
    const tp = e.upload(p0, [N]);
    const st = createAdamWState(e, tp);
    const hp = { lr: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.05 };
    const created = () => e.stats.pipelinesCreated;
    let before = -1;
    for (let t = 1; t <= STEPS; t++) {
      const g = rng.normalArray(N, t === 3 ? 1e-3 : 1); // one step with tiny gradients (ε matters less, v decays)
      const tg = e.upload(g, [N]);
      adamwStep(e, tp, tg, st, { ...hp, lr: lrAt(t) });
      adamwStepRef(p, g, m, v, { ...hp, lr: lrAt(t) }, t);
      if (t === 1) before = created();
      tg.free();
    }
    expect(created()).toBe(before); // lr went through the uniform, not a new pipeline
    expect(st.step).toBe(STEPS);
    expectClose(await e.readF32(tp), p, 1e-6, 1e-6, 'adamw param');
    expectClose(await e.readF32(st.m), m, 1e-7, 1e-5, 'adamw m');
    expectClose(await e.readF32(st.v), v, 1e-9, 1e-5, 'adamw v');

    // COLA knot: reset moments and step counter; the next step uses t = 1 again.
    zeroState(st);
    expect(st.step).toBe(0);
    expect(Array.from(await e.readF32(st.m)).every((x) => x === 0)).toBe(true);
    expect(Array.from(await e.readF32(st.v)).every((x) => x === 0)).toBe(true);
    const p1 = Float64Array.from(await e.readF32(tp));
    m.fill(0);
    v.fill(0);
    for (let t = 1; t <= 2; t++) {
      const g = rng.normalArray(N);
      const tg = e.upload(g, [N]);
      adamwStep(e, tp, tg, st, { ...hp, lr: 3e-3 });
      adamwStepRef(p1, g, m, v, { ...hp, lr: 3e-3 }, t);
      tg.free();
    }
    expectClose(await e.readF32(tp), p1, 1e-6, 1e-6, 'adamw param after reset');
    tp.free();
  });

  test('AdamW first step moves every weight by ≈ lr (bias correction) and decays weights, not gradients', async () => {
    // Hand-checkable: at t=1, m̂ = g and v̂ = g², so θ ← θ(1−lr·λ) − lr·sign(g)·|g|/(|g|+ε).
    const p0 = new Float32Array([1, -2, 0.5, 3]);
    const g = new Float32Array([0.1, 4, -0.02, 0]);
    const tp = e.upload(p0, [4]);
    const st = createAdamWState(e, tp);
    adamwStep(e, tp, e.upload(g, [4]), st, { lr: 0.01, weightDecay: 0.1 });
    const want = Array.from(p0, (x, i) => x * (1 - 0.001) - (g[i] === 0 ? 0 : 0.01 * Math.sign(g[i]!) * (Math.abs(g[i]!) / (Math.abs(g[i]!) + 1e-8))));
    expectClose(await e.readF32(tp), want, 1e-7, 1e-6, 'adamw step 1 by hand');
  });

  const sgdCases: SgdHp[] = [
    { lr: 0, momentum: 0.9, dampening: 0.1, weightDecay: 1e-3 },
    { lr: 0, momentum: 0.8, nesterov: true, weightDecay: 1e-2 },
    { lr: 0 }, // plain SGD, no state
  ];
  for (const hpc of sgdCases) {
    test(`SGD ${JSON.stringify(hpc)}: several steps, reset (momentum buffer re-seeded from d)`, async () => {
      const rng = new Rng(21);
      const p0 = rng.normalArray(N);
      const p = Float64Array.from(p0);
      const buf = new Float64Array(N);
      const tp = e.upload(p0, [N]);
      const st = createSgdState(e, tp, hpc.momentum ?? 0);
      let first = true;
      const run = async (steps: number) => {
        for (let t = 1; t <= steps; t++) {
          const g = rng.normalArray(N);
          const tg = e.upload(g, [N]);
          sgdStep(e, tp, tg, st, { ...hpc, lr: lrAt(t) });
          sgdStepRef(p, g, buf, { ...hpc, lr: lrAt(t) }, first);
          first = false;
          tg.free();
        }
      };
      await run(STEPS);
      expectClose(await e.readF32(tp), p, 1e-6, 1e-6, 'sgd param');
      if (st.momentumBuffer) expectClose(await e.readF32(st.momentumBuffer), buf, 1e-6, 1e-5, 'sgd momentum buffer');
      zeroState(st);
      expect(st.step).toBe(0);
      first = true; // PyTorch's buffer is gone after a reset: the next step sets buf = d
      p.set(await e.readF32(tp));
      await run(2);
      expectClose(await e.readF32(tp), p, 1e-6, 1e-6, 'sgd param after reset');
      tp.free();
    });
  }

  test('AdaGrad with lr decay and weight decay; reset zeroes the accumulator and the step', async () => {
    const rng = new Rng(31);
    const p0 = rng.normalArray(N);
    const p = Float64Array.from(p0);
    const s = new Float64Array(N);
    const tp = e.upload(p0, [N]);
    const st = createAdagradState(e, tp);
    const hp = { lr: 0.05, lrDecay: 0.01, weightDecay: 0.01, eps: 1e-10 };
    for (let t = 1; t <= STEPS; t++) {
      const g = rng.normalArray(N);
      const tg = e.upload(g, [N]);
      adagradStep(e, tp, tg, st, hp);
      adagradStepRef(p, g, s, hp, t);
      tg.free();
    }
    expectClose(await e.readF32(tp), p, 1e-6, 1e-6, 'adagrad param');
    expectClose(await e.readF32(st.sum), s, 1e-6, 1e-5, 'adagrad sum');
    zeroState(st);
    expect(st.step).toBe(0);
    expect(Array.from(await e.readF32(st.sum)).every((x) => x === 0)).toBe(true);
    const p1 = Float64Array.from(await e.readF32(tp));
    s.fill(0);
    const g = rng.normalArray(N);
    adagradStep(e, tp, e.upload(g, [N]), st, hp);
    adagradStepRef(p1, g, s, hp, 1);
    expectClose(await e.readF32(tp), p1, 1e-6, 1e-6, 'adagrad after reset');
  });

  test('shape and argument errors', () => {
    const a = e.zeros([4]);
    const b = e.zeros([5]);
    expect(() => adamwStep(e, a, b, createAdamWState(e, a), { lr: 1 })).toThrow(ShapeError);
    expect(() => sgdStep(e, a, a, createSgdState(e, a, 0), { lr: 1, momentum: 0.9 })).toThrow(/momentum/);
    expect(() => adamwStep(e, a, a, createAdamWState(e, a), { lr: 1 }, 0)).toThrow(/step/);
    expect(() => clipGradNorm(e, [a], 0)).toThrow(/maxNorm/);
  });
});

// Norms: f32 sums of up to 7e4 squares of N(0,1) values in a fixed tree; the relative error of
// such a sum is ≲ log2(n)·6e-8 ≈ 1e-6, so rtol 1e-5 against f64. Clipped gradients: one more
// rounding of the coefficient and of each product: atol 1e-7, rtol 1e-5.
describe('gradient norm and clipping', () => {
  const sizes = [1, 300, 70_001];
  const make = (seed: number, std: number) => {
    const rng = new Rng(seed);
    return sizes.map((n) => rng.normalArray(n, std));
  };

  test('gradNormSq matches Σg² and is bit-identical across runs', async () => {
    const gs = make(41, 1);
    const ts = gs.map((g, i) => e.upload(g, [sizes[i]!]));
    let want = 0;
    for (const g of gs) for (const x of g) want += x * x;
    const a = gradNormSq(e, ts);
    const b = gradNormSq(e, ts);
    const got = (await e.readF32(a))[0]!;
    expectClose([got], [want], 0, 1e-5, 'Σg²');
    expect((await e.readF32(b))[0]).toBe(got);
    expectClose([(await e.readF32(gradNormSq(e, ts[2]!)))[0]!], [gs[2]!.reduce((s, x) => s + x * x, 0)], 0, 1e-5, 'Σg² one tensor');
  });

  test('clipGradNorm scales every gradient when the norm is over the limit', async () => {
    const gs = make(42, 1);
    const ts = gs.map((g, i) => e.upload(g, [sizes[i]!]));
    const ref = gs.map((g) => Float64Array.from(g));
    const wantNorm = clipGradNormRef(ref, 5);
    expect(wantNorm).toBeGreaterThan(100);
    const norm = clipGradNorm(e, ts, 5);
    expectClose(await e.readF32(norm), [wantNorm], 0, 1e-5, 'total norm');
    for (let i = 0; i < ts.length; i++) expectClose(await e.readF32(ts[i]!), ref[i]!, 1e-7, 1e-5, `clipped grad ${i}`);
    // After clipping, the norm is maxNorm (up to the 1e-6 in the denominator).
    expectClose(await e.readF32(gradNormSq(e, ts)), [25], 0, 1e-5, 'norm² after clipping');
  });

  test('clipGradNorm leaves gradients under the limit unchanged (coefficient clamped to 1)', async () => {
    const gs = make(43, 1e-3);
    const ts = gs.map((g, i) => e.upload(g, [sizes[i]!]));
    const wantNorm = clipGradNormRef(gs.map((g) => Float64Array.from(g)), 1);
    expect(wantNorm).toBeLessThan(1);
    const norm = clipGradNorm(e, ts, 1);
    expectClose(await e.readF32(norm), [wantNorm], 0, 1e-5, 'total norm');
    for (let i = 0; i < ts.length; i++) expect(Array.from(await e.readF32(ts[i]!))).toEqual(Array.from(gs[i]!));
  });
});
