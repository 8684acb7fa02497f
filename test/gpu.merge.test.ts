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
});
