import { describe, expect, setDefaultTimeout, test } from 'bun:test';
import { Engine, ShapeError } from '../src/gpu/engine.ts';
import { mergeLora, mergeLoraMany, NonFiniteError } from '../src/gpu/ops/merge.ts';
import { mergeLoraRef } from '../src/gpu/ref/merge.ts';
import { Rng } from '../src/util/rng.ts';
import { expectClose } from './helpers/compare.ts';

setDefaultTimeout(60_000); // lavapipe shares 2 cores with other jobs; never a timing assertion
const e = await Engine.create();

function setup(d: number, k: number, r: number, seed: number) {
  const rng = new Rng(seed);
  const w = rng.normalArray(d * k);
  const a = rng.normalArray(r * k, 0.5);
  const b = rng.normalArray(d * r, 0.5);
  return { w, a, b, tw: e.upload(w, [d, k]), ta: e.upload(a, [r, k]), tb: e.upload(b, [d, r]) };
}

// Tolerance: each merged value is W (O(1)) plus s·Σ of r ≤ 16 products of O(0.25) computed in f32
// (relative error ≲ r·6e-8) against f64: atol 1e-6, rtol 1e-6. Dropping the scale, transposing
// B·A or merging twice changes values by O(0.1).
describe('mergeLora', () => {
  for (const [d, k, r, scale] of [
    [37, 53, 5, 2],
    [64, 96, 8, 16 / 8],
    [3, 1, 1, -0.5],
  ] as const) {
    test(`W + s·B·A matches the reference (d=${d} k=${k} r=${r} s=${scale})`, async () => {
      const { w, a, b, tw, ta, tb } = setup(d, k, r, d * 1000 + k);
      await e.checked(() => mergeLora(e, tw, ta, tb, scale));
      expectClose(await e.readF32(tw), mergeLoraRef(w, a, b, d, k, r, scale), 1e-6, 1e-6, 'merged W');
      for (const t of [tw, ta, tb]) t.free();
    });
  }

  test('row-chunked merge (blocks bound at aligned offsets) equals the reference', async () => {
    const [d, k, r] = [45, 20, 4]; // 20 floats per row: blocks of 16 rows start on 256-byte boundaries
    const { w, a, b, tw, ta, tb } = setup(d, k, r, 77);
    await e.checked(() => mergeLora(e, tw, ta, tb, 1.5, { chunkRows: 16 }));
    expectClose(await e.readF32(tw), mergeLoraRef(w, a, b, d, k, r, 1.5), 1e-6, 1e-6, 'chunked merged W');
    await expect(mergeLora(e, tw, ta, tb, 1, { chunkRows: 10 })).rejects.toThrow(ShapeError); // misaligned block
  });

  test('W given as a row-slice view of a larger buffer: only those rows change', async () => {
    const [d, k, r] = [48, 16, 3]; // rows 16..47: byte offset 1024, a multiple of 256
    const { w, a, b, tw, ta } = setup(d, k, r, 9);
    const sub = tw.rows(16, 48);
    const bSub = b.subarray(16 * r);
    await e.checked(() => mergeLora(e, sub, ta, e.upload(bSub, [32, r]), 0.75, { chunkRows: 16 }));
    const got = await e.readF32(tw);
    expect(Array.from(got.subarray(0, 16 * k))).toEqual(Array.from(w.subarray(0, 16 * k))); // untouched rows
    expectClose(got.subarray(16 * k), mergeLoraRef(w.subarray(16 * k), a, bSub, 32, k, r, 0.75), 1e-6, 1e-6, 'merged slice');
  });

  test('a NaN in B: throws NonFiniteError and W is unchanged', async () => {
    const [d, k, r] = [33, 41, 4];
    const { w, tw, ta, b } = setup(d, k, r, 5);
    b[17] = NaN;
    const tb = e.upload(b, [d, r]);
    await expect(mergeLora(e, tw, ta, tb, 2)).rejects.toThrow(NonFiniteError);
    expect(Array.from(await e.readF32(tw))).toEqual(Array.from(w)); // bit-for-bit the original
  });

  test('an overflow to Inf from finite inputs (only in the last chunk): throws, W unchanged', async () => {
    const [d, k, r] = [40, 16, 2];
    const { w, a, b } = setup(d, k, r, 6);
    w[d * k - 3] = 3.0e38;
    b[(d - 1) * r] = 1e3;
    a[k - 3] = 1e3; // 3e38 + 1e6 · s·… overflows f32 for the element (d-1, k-3) only
    a[k + k - 3] = 0;
    b[(d - 1) * r + 1] = 0;
    expect(Number.isFinite(mergeLoraRef(w, a, b, d, k, r, 1e33)[d * k - 3]!)).toBe(true); // finite in f64 …
    expect(Math.fround(mergeLoraRef(w, a, b, d, k, r, 1e33)[d * k - 3]!)).toBe(Infinity); // … not in f32
    const tw = e.upload(w, [d, k]);
    const ta = e.upload(a, [r, k]);
    const tb = e.upload(b, [d, r]);
    await expect(mergeLora(e, tw, ta, tb, 1e33, { chunkRows: 16 })).rejects.toThrow(/non-finite/);
    expect(Array.from(await e.readF32(tw))).toEqual(Array.from(w));
    // The same merge with a sane scale goes through (the flag is per call, not sticky).
    await mergeLora(e, tw, ta, tb, 1e-3, { chunkRows: 16 });
    expectClose(await e.readF32(tw), mergeLoraRef(w, a, b, d, k, r, 1e-3), 1e-6, 1e-6, 'merged W after a refused merge');
  });

  test('shape errors and a non-finite scale', async () => {
    const { tw, ta, tb } = setup(4, 6, 2, 8);
    await expect(mergeLora(e, tw, tb, ta, 1)).rejects.toThrow(ShapeError);
    await expect(mergeLora(e, tw, ta, tb, Infinity)).rejects.toThrow(NonFiniteError);
    await expect(mergeLora(e, tw, ta, tb, 1e39)).rejects.toThrow(NonFiniteError); // Inf once in f32
  });
});

describe('mergeLoraMany (a whole knot, one wait)', () => {
  test('merges every module; a non-finite result in any module of the group leaves all of them unchanged', async () => {
    const e = await Engine.create();
    const rng = new Rng(21);
    const mk = (d: number, k: number, r: number) => ({ w: rng.uniformArray(d * k), a: rng.uniformArray(r * k), b: rng.uniformArray(d * r), d, k, r });
    const mods = [mk(5, 7, 2), mk(9, 3, 4)];
    const up = () => mods.map((m) => ({ w: e.upload(m.w, [m.d, m.k]), a: e.upload(m.a, [m.r, m.k]), b: e.upload(m.b, [m.d, m.r]), scale: 0.5 }));
    const items = up();
    await mergeLoraMany(e, items);
    for (const [i, m] of mods.entries()) {
      const got = await e.readF32(items[i]!.w);
      for (let x = 0; x < m.d; x++) for (let y = 0; y < m.k; y++) {
        let acc = 0;
        for (let j = 0; j < m.r; j++) acc += m.b[x * m.r + j]! * m.a[j * m.k + y]!;
        // f32 accumulation over r ≤ 4 terms of |x| ≤ 1: 1e-6 absolute.
        expect(Math.abs(got[x * m.k + y]! - (m.w[x * m.k + y]! + 0.5 * acc))).toBeLessThan(1e-6);
      }
    }
    const bad = up();
    const nanA = mods[1]!.a.slice();
    nanA[0] = NaN;
    bad[1]!.a = e.upload(nanA, [mods[1]!.r, mods[1]!.k]);
    await expect(mergeLoraMany(e, bad)).rejects.toThrow(NonFiniteError);
    for (const [i, m] of mods.entries()) expect(Array.from(await e.readF32(bad[i]!.w))).toEqual(Array.from(m.w));
  });

  test('16-bit weights: a failure in a later group frees the f32 results kept for earlier groups', async () => {
    const e = await Engine.create();
    const { halfBits, roundToHalf } = require('../src/gpu/half.ts') as typeof import('../src/gpu/half.ts');
    const rng = new Rng(22);
    const [d, k, r] = [16, 16, 2];
    const items = [0, 1, 2].map((i) => {
      const a = rng.uniformArray(r * k);
      if (i === 2) a[0] = NaN; // the last group fails
      return { w: e.upload(halfBits(roundToHalf(rng.uniformArray(d * k), 'bf16'), 'bf16')!, [d, k], 'bf16'), a: e.upload(a, [r, k]), b: e.upload(rng.uniformArray(d * r), [d, r]), scale: 0.5 };
    });
    await e.sync();
    e.trimPool();
    const before = e.allocatedBytes;
    // One item per group (scratch of one item = d·k·4 bytes): groups 0 and 1 merge, group 2 throws.
    await expect(mergeLoraMany(e, items, { maxScratchBytes: d * k * 4 })).rejects.toThrow(NonFiniteError);
    await e.sync();
    e.trimPool(); // pooled (freed) buffers are destroyed; live ones stay counted
    expect(e.allocatedBytes).toBe(before);
    for (const it of items) expect(it.w.isFreed).toBe(false);
  });
});

// Knots on 16-bit weights (ops/merge.ts): W is read as bf16/f16, the merge runs in f32, and the merged
// module is kept f32 — a new tensor — because rounding W + ΔW back to 16 bits drops much of a small
// update. The measurement below (printed, and bounded by the asserts) is what the decision rests on.
describe('mergeLora with a 16-bit W', () => {
  const { roundToHalf, halfBits } = require('../src/gpu/half.ts') as typeof import('../src/gpu/half.ts');
  /** ‖stored − W − ΔW‖ / ‖ΔW‖ and the share of elements left unchanged, for a stored merge result. */
  function updateLoss(w: Float32Array, stored: ArrayLike<number>, delta: Float64Array) {
    let err = 0, norm = 0, same = 0;
    for (let i = 0; i < w.length; i++) {
      const got = stored[i]! - w[i]!;
      err += (got - delta[i]!) ** 2;
      norm += delta[i]! ** 2;
      if (stored[i] === w[i]) same++;
    }
    return { relErr: Math.sqrt(err / norm), unchanged: same / w.length };
  }

  for (const kind of ['bf16', 'f16'] as const) {
    test(`${kind}: the whole update is kept in an f32 result; rounding it back to ${kind} would lose a small one`, async () => {
      const [d, k, r] = [64, 96, 8];
      const rng = new Rng(kind === 'bf16' ? 31 : 32);
      const w = roundToHalf(rng.normalArray(d * k, 0.02), kind); // weights at a typical init scale
      const a = rng.normalArray(r * k, 1);
      const b = rng.normalArray(d * r, 1);
      const tw = e.upload(halfBits(w, kind)!, [d, k], kind);
      const rows: string[] = [];
      for (const rel of [1e-1, 1e-2, 1e-3]) {
        // s·B·A has std ≈ s·√r; choose s so that the update's std is `rel` × the weights' std (0.02).
        const scale = (rel * 0.02) / Math.sqrt(r);
        const delta = mergeLoraRef(new Float32Array(d * k), a, b, d, k, r, scale);
        const merged = await mergeLora(e, tw, e.upload(a, [r, k]), e.upload(b, [d, r]), scale);
        expect(merged).not.toBe(tw);
        expect(merged.dtype).toBe('f32');
        const got = await e.readF32(merged);
        const kept = updateLoss(w, got, delta);
        const back = updateLoss(w, roundToHalf(got, kind), delta);
        rows.push(`update/weight ${rel}: f32 result rel. error ${kept.relErr.toExponential(2)}; rounded to ${kind}: rel. error ${back.relErr.toFixed(3)}, ${(100 * back.unchanged).toFixed(1)}% of values unchanged`);
        // f32 result: the update up to f32 rounding of W + ΔW (|W| ~ 0.02: ulp 2e-9 vs |ΔW| ≥ 2e-5·…).
        expect(kept.relErr).toBeLessThan(rel === 1e-3 ? 5e-3 : 1e-3);
        if (kind === 'bf16' && rel === 1e-3) {
          expect(back.relErr).toBeGreaterThan(0.5); // most of a small update rounds away in bf16
          expect(back.unchanged).toBeGreaterThan(0.5);
        }
        merged.free();
      }
      // W itself is untouched (the caller swaps the f32 result in and frees W).
      expect(Array.from(await e.readF32(tw))).toEqual(Array.from(w));
      console.log(`merge into ${kind} weights (std 0.02, ΔW = s·B·A, r = 8):\n  ${rows.join('\n  ')}`);
    });
  }
});
