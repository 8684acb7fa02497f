import { describe, expect, test } from 'bun:test';
import { ShapeError } from '../src/gpu/engine.ts';
import { embedding, embeddingBackward } from '../src/gpu/ops/embedding.ts';
import { embeddingBackwardRef, embeddingRef } from '../src/gpu/ref/embedding.ts';
import { Rng } from '../src/util/rng.ts';
import { expectClose } from './helpers/compare.ts';
import { dot, f64, gradCheck } from './helpers/gradcheck.ts';
import { bitsEqual, testEngine } from './helpers/gpu.ts';

/** The GPU's exact summation: f32, per vocab row, tokens in ascending order, starting from 0. */
function scatterF32(dy: Float32Array, ids: Int32Array, V: number, C: number): Float32Array {
  const out = new Float32Array(V * C);
  for (let n = 0; n < ids.length; n++) {
    const id = ids[n]!;
    if (id < 0 || id >= V) continue;
    for (let c = 0; c < C; c++) out[id * C + c] = Math.fround(out[id * C + c]! + dy[n * C + c]!);
  }
  return out;
}

describe('embedding', () => {
  test('CPU reference backward matches f64 finite differences (w.r.t. the table)', () => {
    const rng = new Rng(41);
    const V = 5, C = 3;
    const ids = [1, 4, 1, -1, 0, 1, 7];
    const table = f64(rng.normalArray(V * C));
    const r = f64(rng.normalArray(ids.length * C));
    const dT = embeddingBackwardRef(r, ids, V, C);
    expect(gradCheck((t) => dot(r, embeddingRef(ids, t, V, C)), table, dT).worst).toBeLessThan(1);
    dT[1 * C + 2] += 1e-4; // a wrong gradient in a repeated row is caught
    expect(gradCheck((t) => dot(r, embeddingRef(ids, t, V, C)), table, dT).worst).toBeGreaterThan(1);
  });

  test('GPU gather and scatter-add are exact and bit-reproducible', async () => {
    const e = await testEngine();
    const rng = new Rng(42);
    // Small vocabularies force many repeated ids; invalid ids (−1, ≥ V) must be zero / skipped.
    for (const [B, T, V, C] of [[1, 1, 3, 65], [3, 67, 11, 65], [8, 130, 300, 65], [2, 5, 4, 130]]) {
      const N = B * T;
      const idsH = Int32Array.from({ length: N }, () => rng.int(V + 2) - 1);
      const tableH = rng.normalArray(V * C);
      const dyH = rng.normalArray(N * C);
      const ids = e.upload(idsH, [B, T]);
      const table = e.upload(tableH, [V, C]);
      const dy = e.upload(dyH, [B, T, C]);
      const out = embedding(e, ids, table);
      expect(out.shape).toEqual([B, T, C]);
      // A gather is a copy: exact.
      expect(Array.from(await e.read(out))).toEqual(Array.from(embeddingRef(idsH, tableH, V, C)));
      const dT = embeddingBackward(e, dy, ids, V);
      expect(dT.shape).toEqual([V, C]);
      const got = (await e.read(dT)) as Float32Array;
      // Same additions in the same order as the f32 emulation: bit-exact (this also proves the
      // summation order is the fixed ascending one, not whatever the scheduler picked).
      expect(bitsEqual(got, scatterF32(dyH, idsH, V, C))).toBe(true);
      // and within f32 rounding of the f64 reference (≤ N terms of size ~1: ≪ 1e-4)
      const ref = embeddingBackwardRef(dyH, idsH, V, C);
      expectClose(got, ref, 1e-4, 0, `dTable ${B}x${T} V=${V}`);
      for (const t of [ids, table, dy, out, dT]) t.free();
    }
  }, 60_000);

  test('shape errors', async () => {
    const e = await testEngine();
    const table = e.upload(new Float32Array(12), [4, 3]);
    expect(() => embedding(e, e.upload(new Float32Array(2), [2]), table)).toThrow(ShapeError);
    expect(() => embeddingBackward(e, e.upload(new Float32Array(5), [5]), e.upload(new Int32Array(2), [2]), 4)).toThrow(ShapeError);
  });
});
