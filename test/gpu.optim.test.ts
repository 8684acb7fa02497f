import { describe, expect, setDefaultTimeout, test } from 'bun:test';
import { Engine, ShapeError, type Tensor } from '../src/gpu/engine.ts';
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

  // Golden values from PyTorch 1.13 (Debian python3-torch), float64, made by:
  //   torch.set_default_dtype(torch.float64); p = Parameter(tensor(P0)); opt = <optimizer>([p])
  //   for i, g in enumerate(GRADS): opt.param_groups[0]['lr'] = LRS[i]; p.grad = tensor(g); opt.step()
  // (the lr is set before every step, for every optimizer)
  // with AdamW(lr, betas=(0.9,0.999), eps=1e-8, weight_decay=0.1); SGD(momentum=0.9, dampening=0.1,
  // weight_decay=0.01); SGD(momentum=0.8, nesterov=True, weight_decay=0.01);
  // Adagrad(lr_decay=0.05, weight_decay=0.01, eps=1e-10). They pin the reference (and so the GPU) to
  // PyTorch's formulas: the f64 reference must agree to 1e-12 (only rounding-order differences),
  // the f32 GPU to atol 1e-6 (three f32 steps on O(1) values).
  const P0 = [0.5, -1.25, 2.0, 0.0, 3.0];
  const GRADS = [
    [0.1, -0.2, 0.3, 0.0, 2.0],
    [-0.4, 0.5, 0.0, 1e-3, -1.0],
    [0.2, 0.2, -0.7, 0.05, 0.5],
  ];
  const LRS = [0.1, 0.05, 0.02];
  const TORCH = {
    adamw: [0.42236165652100643, -1.1624742806306407, 1.8410907497862186, -0.05013554501602773, 2.8298398993888205],
    sgdMomentum: [0.5035639661494999, -1.24896960077875, 1.9594600954080001, -0.0009611919000000001, 2.7227573455570004],
    sgdNesterov: [0.5099054386764, -1.2596787316069997, 1.9513914645375998, -0.0019027676000000005, 2.6299878144104],
    adagrad: [0.43790947686724363, -1.199719017756065, 1.9136280971274267, -0.06579715550545295, 2.9163854156684255],
  };
  test('reference and GPU reproduce PyTorch 1.13 (golden values)', async () => {
    const adamHp = { lr: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
    const sgdM = { lr: 0, momentum: 0.9, dampening: 0.1, weightDecay: 0.01 };
    const sgdN = { lr: 0, momentum: 0.8, nesterov: true, weightDecay: 0.01 };
    const ada = { lr: 0, lrDecay: 0.05, weightDecay: 0.01, eps: 1e-10 };
    // CPU reference in f64.
    const run = (stepFn: (p: Float64Array, g: number[], i: number, s1: Float64Array, s2: Float64Array) => void) => {
      const p = Float64Array.from(P0);
      const s1 = new Float64Array(5);
      const s2 = new Float64Array(5);
      GRADS.forEach((g, i) => stepFn(p, g, i, s1, s2));
      return p;
    };
    expectClose(run((p, g, i, m, v) => adamwStepRef(p, g, m, v, { ...adamHp, lr: LRS[i]! }, i + 1)), TORCH.adamw, 1e-12, 0, 'ref adamw vs torch');
    expectClose(run((p, g, i, b) => sgdStepRef(p, g, b, { ...sgdM, lr: LRS[i]! }, i === 0)), TORCH.sgdMomentum, 1e-12, 0, 'ref sgd vs torch');
    expectClose(run((p, g, i, b) => sgdStepRef(p, g, b, { ...sgdN, lr: LRS[i]! }, i === 0)), TORCH.sgdNesterov, 1e-12, 0, 'ref nesterov vs torch');
    expectClose(run((p, g, i, s) => adagradStepRef(p, g, s, { ...ada, lr: LRS[i]! }, i + 1)), TORCH.adagrad, 1e-12, 0, 'ref adagrad vs torch');
    // GPU, same runs.
    const gpu = async (step: (tp: Tensor, tg: Tensor, i: number) => void, tp: Tensor) => {
      GRADS.forEach((g, i) => step(tp, e.upload(Float32Array.from(g), [5]), i));
      return e.readF32(tp);
    };
    const mk = () => e.upload(Float32Array.from(P0), [5]);
    let tp = mk();
    const sa = createAdamWState(e, tp);
    expectClose(await gpu((p, g, i) => adamwStep(e, p, g, sa, { ...adamHp, lr: LRS[i]! }), tp), TORCH.adamw, 1e-6, 0, 'gpu adamw vs torch');
    tp = mk();
    const sm = createSgdState(e, tp, 0.9);
    expectClose(await gpu((p, g, i) => sgdStep(e, p, g, sm, { ...sgdM, lr: LRS[i]! }), tp), TORCH.sgdMomentum, 1e-6, 0, 'gpu sgd vs torch');
    tp = mk();
    const sn = createSgdState(e, tp, 0.8);
    expectClose(await gpu((p, g, i) => sgdStep(e, p, g, sn, { ...sgdN, lr: LRS[i]! }), tp), TORCH.sgdNesterov, 1e-6, 0, 'gpu nesterov vs torch');
    tp = mk();
    const sg = createAdagradState(e, tp);
    expectClose(await gpu((p, g, i) => adagradStep(e, p, g, sg, { ...ada, lr: LRS[i]! }), tp), TORCH.adagrad, 1e-6, 0, 'gpu adagrad vs torch');
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
