import { describe, expect, setDefaultTimeout, test } from 'bun:test';
import { Engine, ShapeError, sizeClass, type Tensor } from '../src/gpu/engine.ts';
import { attention, attentionBackward, attentionDecode } from '../src/gpu/ops/attention.ts';
import { attentionBackwardRef, attentionDecodeRef, attentionRef, type AttnDims } from '../src/gpu/ref/attention.ts';
import { Rng } from '../src/util/rng.ts';
import { expectClose } from './helpers/compare.ts';

// lavapipe shares 2 cores with other jobs: a generous per-test limit, never a timing assertion.
setDefaultTimeout(60_000);

const e = await Engine.create();

function f64(n: number, rng: Rng, std = 1): Float64Array {
  const a = new Float64Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal() * std;
  return a;
}

/** Padding mask: per sequence, a random run of padding at the left (incl. key 0 sometimes) and right. */
function randomMask(B: number, T: number, rng: Rng): Uint32Array {
  const m = new Uint32Array(B * T).fill(1);
  for (let b = 0; b < B; b++) {
    const left = rng.int(Math.min(3, T));
    const right = rng.int(Math.max(1, Math.floor(T / 3)));
    for (let t = 0; t < left; t++) m[b * T + t] = 0;
    for (let t = T - right; t < T; t++) m[b * T + t] = 0;
  }
  return m;
}

/** Σ out·G: a scalar loss whose gradient w.r.t. out is G. */
function lossOf(q: Float64Array, k: Float64Array, v: Float64Array, g: Float64Array, dims: AttnDims, mask: Uint32Array | null): number {
  const out = attentionRef(q, k, v, dims, { keyMask: mask });
  let s = 0;
  for (let i = 0; i < out.length; i++) s += out[i]! * g[i]!;
  return s;
}

/**
 * Central finite differences in f64 against an analytic gradient. h = 1e-5: truncation error
 * O(h²·|f'''|) ≈ 1e-10 and round-off ≈ 1e-16·|L|/h ≈ 1e-10, so 1e-7 (abs) + 1e-6 (rel) holds
 * for a correct gradient with a wide margin while a gradient off by ≥ 1e-4 fails.
 */
function fdCheck(
  name: string,
  x: Float64Array,
  analytic: ArrayLike<number>,
  loss: () => number,
): void {
  const h = 1e-5;
  const numeric = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const x0 = x[i]!;
    x[i] = x0 + h;
    const lp = loss();
    x[i] = x0 - h;
    const lm = loss();
    x[i] = x0;
    numeric[i] = (lp - lm) / (2 * h);
  }
  expectClose(analytic, numeric, 1e-7, 1e-6, `finite differences ${name}`);
}

describe('attention CPU reference', () => {
  const dims: AttnDims = { B: 2, T: 5, H: 4, Hkv: 2, D: 3 };
  const rng = new Rng(101);
  const q = f64(dims.B * dims.T * dims.H * dims.D, rng);
  const k = f64(dims.B * dims.T * dims.Hkv * dims.D, rng);
  const v = f64(dims.B * dims.T * dims.Hkv * dims.D, rng);
  const g = f64(q.length, rng);
  const mask = new Uint32Array([0, 1, 1, 0, 1, 1, 1, 1, 1, 0]); // seq 0: key 0 padded (row 0 sees no key)

  for (const m of [null, mask]) {
    test(`backward matches f64 central finite differences (GQA 2, ${m ? 'key mask' : 'no mask'})`, () => {
      const grads = attentionBackwardRef(g, q, k, v, dims, { keyMask: m, scale: 0.7 });
      const loss = () => {
        const out = attentionRef(q, k, v, dims, { keyMask: m, scale: 0.7 });
        let s = 0;
        for (let i = 0; i < out.length; i++) s += out[i]! * g[i]!;
        return s;
      };
      fdCheck('dq', q, grads.dq, loss);
      fdCheck('dk', k, grads.dk, loss);
      fdCheck('dv', v, grads.dv, loss);
    });
  }

  test('the finite-difference check fails for a wrong gradient', () => {
    const grads = attentionBackwardRef(g, q, k, v, dims, { keyMask: mask });
    const wrong = Float64Array.from(grads.dk);
    wrong[7]! += 1e-4;
    expect(() => fdCheck('dk (perturbed)', k, wrong, () => lossOf(q, k, v, g, dims, mask))).toThrow(/finite differences/);
    // Ignoring the mask in the backward (a plausible bug) is caught as well.
    const unmasked = attentionBackwardRef(g, q, k, v, dims, {});
    expect(() => fdCheck('dq (mask ignored)', q, unmasked.dq, () => lossOf(q, k, v, g, dims, mask))).toThrow(/finite differences/);
  });

  test('fully padded rows output zero; padding keys get no gradient', () => {
    const out = attentionRef(q, k, v, dims, { keyMask: mask });
    for (let i = 0; i < dims.H * dims.D; i++) expect(out[i]).toBe(0); // b=0, t=0
    const { dk, dv } = attentionBackwardRef(g, q, k, v, dims, { keyMask: mask });
    for (let i = 0; i < dims.Hkv * dims.D; i++) {
      expect(dk[i]).toBe(0);
      expect(dv[i]).toBe(0);
    }
  });
});

// GPU vs reference. Inputs N(0,1) and scale 1/sqrt(D), so scores are O(1) and outputs / gradients
// are O(1). The GPU accumulates in f32 over D (≤ 128) and T (≤ 70) terms in a different order
// (online softmax rescaling, q pre-multiplied by the scale); each term carries ~6e-8 relative
// error and exp() turns an absolute score error into a relative one, so observed errors are
// ≈ 1e-6. Forward: atol 2e-5, rtol 1e-4; gradients (a further sum over T, and dq/dk scaled by
// Σ of O(1) terms): atol 5e-5, rtol 2e-4. A wrong mask, head mapping or a missing term
// changes values by O(0.1).
// D % 4 == 0 runs the vec4 kernels, other D the scalar ones; kernel: 'scalar' forces the latter.
const cases: { name: string; B: number; T: number; H: number; Hkv: number; D: number; mask: boolean; scale?: number; kernel?: 'scalar' }[] = [
  { name: 'MHA (ratio 1), odd T and D', B: 2, T: 7, H: 3, Hkv: 3, D: 5, mask: false },
  { name: 'GQA ratio 2, key mask', B: 2, T: 13, H: 4, Hkv: 2, D: 3, mask: true },
  { name: 'GQA ratio 4, T over one workgroup, key mask', B: 2, T: 67, H: 8, Hkv: 2, D: 17, mask: true },
  { name: 'MQA (ratio 4), D=128, custom scale', B: 1, T: 21, H: 4, Hkv: 1, D: 128, mask: false, scale: 0.05 },
  { name: 'ratio 2, D=64, T=1', B: 3, T: 1, H: 2, Hkv: 1, D: 64, mask: false },
  { name: 'vec4 kernels: GQA ratio 2, D=16, T=70, key mask', B: 2, T: 70, H: 4, Hkv: 2, D: 16, mask: true },
  { name: 'scalar kernels forced: the same shape', B: 2, T: 70, H: 4, Hkv: 2, D: 16, mask: true, kernel: 'scalar' },
];

describe('attention on the GPU vs the CPU reference', () => {
  for (const c of cases) {
    test(c.name, async () => {
      const rng = new Rng(7 + c.T * 31 + c.D);
      const dims: AttnDims = { B: c.B, T: c.T, H: c.H, Hkv: c.Hkv, D: c.D };
      const q = rng.normalArray(c.B * c.T * c.H * c.D);
      const k = rng.normalArray(c.B * c.T * c.Hkv * c.D);
      const v = rng.normalArray(c.B * c.T * c.Hkv * c.D);
      const g = rng.normalArray(q.length);
      const mask = c.mask ? randomMask(c.B, c.T, rng) : null;
      if (mask) mask[0] = 0; // sequence 0 starts with padding: its row 0 sees no key at all
      const opts = { keyMask: mask, scale: c.scale };
      await e.checked(async () => {
        const tq = e.upload(q, [c.B, c.T, c.H, c.D]);
        const tk = e.upload(k, [c.B, c.T, c.Hkv, c.D]);
        const tv = e.upload(v, [c.B, c.T, c.Hkv, c.D]);
        const tg = e.upload(g, [c.B, c.T, c.H, c.D]);
        const tm = mask ? e.upload(mask, [c.B, c.T], 'u32') : undefined;
        const { out, saved } = attention(e, tq, tk, tv, { keyMask: tm, scale: c.scale, kernel: c.kernel });
        expect(saved.lse.shape).toEqual([c.B, c.H, c.T]);
        expect(saved.variant).toBe(c.D % 4 === 0 && !c.kernel ? '4' : '');
        const grads = attentionBackward(e, tg, tq, tk, tv, saved);
        const ref = attentionRef(q, k, v, dims, opts);
        const rg = attentionBackwardRef(g, q, k, v, dims, opts);
        expectClose(await e.readF32(out), ref, 2e-5, 1e-4, 'out');
        expectClose(await e.readF32(grads.dq), rg.dq, 5e-5, 2e-4, 'dq');
        expectClose(await e.readF32(grads.dk), rg.dk, 5e-5, 2e-4, 'dk');
        expectClose(await e.readF32(grads.dv), rg.dv, 5e-5, 2e-4, 'dv');
        // Deterministic: a second backward gives bit-identical gradients (no atomics).
        const again = attentionBackward(e, tg, tq, tk, tv, saved);
        expect(Array.from(await e.readF32(again.dk))).toEqual(Array.from(await e.readF32(grads.dk)));
        expect(Array.from(await e.readF32(again.dv))).toEqual(Array.from(await e.readF32(grads.dv)));
        for (const t of [tq, tk, tv, tg, out, saved.lse, grads.dq, grads.dk, grads.dv, again.dq, again.dk, again.dv]) t.free();
        tm?.free();
      });
    });
  }

  test('shape errors', () => {
    const q = e.empty([1, 4, 3, 8]);
    const k = e.empty([1, 4, 2, 8]);
    expect(() => attention(e, q, k, k)).toThrow(ShapeError); // 3 heads over 2 kv heads
    const k1 = e.empty([1, 4, 1, 8]);
    expect(() => attention(e, q, k1, k1, { keyMask: e.empty([1, 4]) })).toThrow(/u32/);
    for (const t of [q, k, k1]) t.free();
  });
});

describe('attention decode (KV cache)', () => {
  for (const c of [
    { B: 2, T: 9, maxT: 16, H: 4, Hkv: 1, D: 7, mask: true },
    { B: 1, T: 70, maxT: 80, H: 4, Hkv: 2, D: 64, mask: false },
    { B: 3, T: 5, maxT: 5, H: 2, Hkv: 2, D: 33, mask: true },
  ]) {
    test(`equals the last row of full attention (B=${c.B} T=${c.T} maxT=${c.maxT} H=${c.H} Hkv=${c.Hkv} D=${c.D}${c.mask ? ', mask' : ''})`, async () => {
      const rng = new Rng(5000 + c.T);
      const { B, T, maxT, H, Hkv, D } = c;
      const q = rng.normalArray(B * T * H * D);
      const kc = rng.normalArray(B * maxT * Hkv * D); // rows ≥ T are stale cache contents
      const vc = rng.normalArray(B * maxT * Hkv * D);
      const mask = c.mask ? randomMask(B, maxT, rng) : null;
      if (mask) for (let b = 0; b < B; b++) mask[b * maxT + T - 1] = 1; // the new token is real
      // Full attention over the first T cache rows.
      const k = new Float32Array(B * T * Hkv * D);
      const v = new Float32Array(B * T * Hkv * D);
      const mT = mask ? new Uint32Array(B * T) : null;
      const qLast = new Float32Array(B * H * D);
      for (let b = 0; b < B; b++) {
        k.set(kc.subarray(b * maxT * Hkv * D, (b * maxT + T) * Hkv * D), b * T * Hkv * D);
        v.set(vc.subarray(b * maxT * Hkv * D, (b * maxT + T) * Hkv * D), b * T * Hkv * D);
        mT?.set(mask!.subarray(b * maxT, b * maxT + T), b * T);
        qLast.set(q.subarray((b * T + T - 1) * H * D, (b * T + T) * H * D), b * H * D);
      }
      await e.checked(async () => {
        const tkc = e.upload(kc, [B, maxT, Hkv, D]);
        const tvc = e.upload(vc, [B, maxT, Hkv, D]);
        const tm = mask ? e.upload(mask, [B, maxT], 'u32') : undefined;
        const dec = attentionDecode(e, e.upload(qLast, [B, 1, H, D]), tkc, tvc, T, { keyMask: tm });
        const full = attention(e, e.upload(q, [B, T, H, D]), e.upload(k, [B, T, Hkv, D]), e.upload(v, [B, T, Hkv, D]), {
          keyMask: mT ? e.upload(mT, [B, T], 'u32') : undefined,
        });
        const fullOut = await e.readF32(full.out);
        const last = new Float32Array(B * H * D);
        for (let b = 0; b < B; b++) last.set(fullOut.subarray((b * T + T - 1) * H * D, (b * T + T) * H * D), b * H * D);
        const got = await e.readF32(dec);
        // Same f32 math split differently over lanes: ≈1e-7 apart; 1e-5 abs + 1e-4 rel.
        expectClose(got, last, 1e-5, 1e-4, 'decode vs last row of full attention');
        const ref = attentionDecodeRef(qLast, kc, vc, { B, maxT, H, Hkv, D }, T, { keyMask: mask });
        expectClose(got, ref, 2e-5, 1e-4, 'decode vs f64 reference');
      });
    });
  }

  test('one pipeline serves every position (pos is a uniform), and each position is honoured', async () => {
    const rng = new Rng(9);
    const [B, maxT, H, Hkv, D] = [2, 12, 4, 2, 8];
    const kc = rng.normalArray(B * maxT * Hkv * D);
    const vc = rng.normalArray(B * maxT * Hkv * D);
    const q = rng.normalArray(B * H * D);
    const tq = e.upload(q, [B, 1, H, D]);
    const tkc = e.upload(kc, [B, maxT, Hkv, D]);
    const tvc = e.upload(vc, [B, maxT, Hkv, D]);
    attentionDecode(e, tq, tkc, tvc, 1).free(); // create the pipeline
    const before = e.stats.pipelinesCreated;
    const outs = [];
    for (let pos = 1; pos <= maxT; pos++) outs.push(attentionDecode(e, tq, tkc, tvc, pos)); // one submit
    expect(e.stats.pipelinesCreated).toBe(before);
    for (let pos = 1; pos <= maxT; pos++) {
      const ref = attentionDecodeRef(q, kc, vc, { B, maxT, H, Hkv, D }, pos);
      expectClose(await e.readF32(outs[pos - 1]!), ref, 2e-5, 1e-4, `decode pos ${pos}`);
    }
    expect(() => attentionDecode(e, tq, tkc, tvc, maxT + 1)).toThrow(ShapeError);
    expect(() => attentionDecode(e, tq, tkc, tvc, 0)).toThrow(ShapeError);
  });
});

describe('attention memory', () => {
  test('backward keeps O(B·H·T): the forward saves only lse, the backward allocates outputs + one (B,H,T) temporary', async () => {
    const e2 = await Engine.create(); // own pool, so the accounting is this test's alone
    const [B, T, H, Hkv, D] = [1, 384, 4, 2, 8];
    const rng = new Rng(3);
    const q = e2.upload(rng.normalArray(B * T * H * D), [B, T, H, D]);
    const k = e2.upload(rng.normalArray(B * T * Hkv * D), [B, T, Hkv, D]);
    const v = e2.upload(rng.normalArray(B * T * Hkv * D), [B, T, Hkv, D]);
    const g = e2.upload(rng.normalArray(B * T * H * D), [B, T, H, D]);
    // Warm-up on a 1-element problem: creates the engine's (1) placeholder mask once (256-byte class).
    const one = e2.upload(new Float32Array([1]), [1, 1, 1, 1]);
    const w = attention(e2, one, one, one);
    w.out.free();
    w.saved.lse.free();
    const before = e2.allocatedBytes;
    const { out, saved } = attention(e2, q, k, v);
    expect(saved.lse.byteLength).toBe(B * H * T * 4); // the only tensor kept for backward besides out
    expect(e2.allocatedBytes - before).toBe(sizeClass(B * T * H * D * 4) + sizeClass(B * H * T * 4));
    e2.resetPeak();
    const atBackward = e2.allocatedBytes;
    const grads = attentionBackward(e2, g, q, k, v, saved);
    await e2.sync();
    const extra = e2.peakBytes - atBackward;
    const outputs = sizeClass(B * T * H * D * 4) + 2 * sizeClass(B * T * Hkv * D * 4);
    expect(extra).toBe(outputs + sizeClass(B * H * T * 4)); // dq, dk, dv + delta (B,H,T)
    expect(extra).toBeLessThan((B * H * T * T * 4) / 8); // the probability matrix would be 2.25 MiB here
    for (const t of [q, k, v, g, out, saved.lse, grads.dq, grads.dk, grads.dv]) t.free();
    e2.trimPool();
  });
});

describe('attention on a fresh engine (uniform-arena regression)', () => {
  test('the first unmasked call is right even when more uniform-using work follows before any flush', async () => {
    // Regression: the placeholder mask used to be created with upload(), which flushes. Created
    // after the call's e.uniform() block while other work was pending, the flush reset the uniform
    // arena, and later calls' uniform blocks overwrote this call's block before it ran.
    const e3 = await Engine.create();
    const rng = new Rng(77);
    // Inputs uploaded first (each upload flushes), so the calls below are recorded back to back.
    const mk = (B: number, T: number, H: number, D: number, masked = false) => {
      const q = rng.normalArray(B * T * H * D);
      const k = rng.normalArray(B * T * H * D);
      const v = rng.normalArray(B * T * H * D);
      const m = new Uint32Array(B * T).fill(1);
      const t = [q, k, v].map((x) => e3.upload(x, [B, T, H, D])) as [Tensor, Tensor, Tensor];
      const tm = masked ? e3.upload(m, [B, T], 'u32') : undefined;
      return { run: () => attention(e3, ...t, { keyMask: tm }).out, ref: attentionRef(q, k, v, { B, T, H, Hkv: H, D }) };
    };
    const calls = [mk(1, 6, 2, 4, true), mk(2, 8, 4, 8), mk(1, 5, 2, 8), mk(1, 3, 1, 8), mk(2, 4, 2, 8)];
    const outs = calls.map((c) => c.run()); // masked call first: work is pending when the placeholder is made
    for (let i = 0; i < calls.length; i++) expectClose(await e3.readF32(outs[i]!), calls[i]!.ref, 2e-5, 1e-4, `call ${i}`);
  });
});
