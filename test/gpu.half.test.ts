// Frozen weights stored 16-bit (f16, bf16 packed two per u32 word): every kernel that reads a weight
// (matmul in all its families — forward x·Wᵀ, backward dX = dY·W, the GEMV decode product, the
// transposed register-tile path — and the embedding gather) against the f64 CPU reference on the
// decoded weights, i.e. the only error left is the kernels' f32 arithmetic.
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { Engine, ShapeError } from '../src/gpu/engine.ts';
import { availableMatmulVariants, matmul, transpose2d, type MatmulVariant } from '../src/gpu/ops/matmul.ts';
import { embedding } from '../src/gpu/ops/embedding.ts';
import { halfBits, roundToHalf, toHalf, uploadHalf, type HalfKind } from '../src/gpu/half.ts';
import { refMatmul } from '../src/gpu/ref/matmul.ts';
import { embeddingRef as refEmbedding } from '../src/gpu/ref/embedding.ts';
import { Rng } from '../src/util/rng.ts';

const T = 300_000;
const EPS = 2 ** -23;
const tolK = (K: number) => 16 * Math.sqrt(K) * EPS * Math.max(1, Math.sqrt(K) / 3);

let e: Engine;
let variants: MatmulVariant[];
beforeAll(async () => {
  e = await Engine.create();
  variants = availableMatmulVariants(e);
  e.tune({ matmulTileCap: { R: 2, CN: 4 } }); // same code paths, fast compiles on lavapipe (see gpu.matmul.test.ts)
});
afterAll(() => e.tune({ matmulTileCap: null }));

/** A random weight already rounded to `kind` (its f32 values are the decoded 16-bit ones). */
function weight(rng: Rng, n: number, kind: HalfKind): { f: Float32Array; bits: Uint16Array } {
  const f = roundToHalf(rng.uniformArray(n), kind);
  return { f, bits: halfBits(f, kind)! };
}

describe.each(['bf16', 'f16'] as const)('%s weights', (kind) => {
  test('round trip: bits of rounded values are exact, readF32 decodes them', async () => {
    const rng = new Rng(1);
    const { f, bits } = weight(rng, 37, kind);
    expect(bits).not.toBeNull();
    expect(Array.from(await e.readF32(uploadHalf(e, bits, [37], kind)))).toEqual(Array.from(f));
    // A value that is not a 16-bit number is refused by halfBits (the caller keeps f32).
    expect(halfBits(Float32Array.of(1 + 2 ** -20), kind)).toBeNull();
  });

  test('matmul x·Wᵀ and dY·W with a 16-bit W, every kernel family, vs f64', async () => {
    const rng = new Rng(kind === 'bf16' ? 2 : 3);
    // (M, N, K): a decode row (GEMV on 'tiled'), a few rows, a block that takes the transposed
    // register-tile path (M ≥ 64, N ≥ 32), and an odd K (scalar loads, no vec4).
    for (const v of variants) {
      for (const [M, N, K] of [[1, 36, 20], [5, 13, 12], [70, 40, 24], [3, 9, 7]] as const) {
        const x = rng.uniformArray(M * K);
        const w = weight(rng, N * K, kind);
        const W = uploadHalf(e, w.bits, [N, K], kind);
        const bias = rng.uniformArray(N);
        const y = await e.readF32(matmul(e, e.upload(x, [M, K]), W, { transB: true, bias: e.upload(bias, [N]), variant: v }));
        const want = refMatmul(x, w.f, { batch: 1, M, K, N, transB: true });
        for (let i = 0; i < M * N; i++) expect(Math.abs(y[i]! - want[i]! - bias[i % N]!)).toBeLessThanOrEqual(tolK(K) + 1e-6);
        // Backward through the frozen weight: dX (M, K) = dY (M, N) · W (N, K), B untransposed.
        const dy = rng.uniformArray(M * N);
        const dx = await e.readF32(matmul(e, e.upload(dy, [M, N]), W, { variant: v }));
        const wantDx = refMatmul(dy, w.f, { batch: 1, M, K: N, N: K });
        for (let i = 0; i < M * K; i++) expect(Math.abs(dx[i]! - wantDx[i]!)).toBeLessThanOrEqual(tolK(N) + 1e-6);
      }
    }
  }, T);

  test('transpose2d of a 16-bit matrix gives the f32 transpose exactly', async () => {
    const rng = new Rng(4);
    const w = weight(rng, 8 * 12, kind);
    const t = await e.readF32(transpose2d(e, uploadHalf(e, w.bits, [8, 12], kind)));
    for (let r = 0; r < 8; r++) for (let c = 0; c < 12; c++) expect(t[c * 8 + r]).toBe(w.f[r * 12 + c]!);
  }, T);

  test('embedding gather from a 16-bit table equals the decoded rows (odd width, bad ids → 0)', async () => {
    const rng = new Rng(5);
    const V = 11, C = 7;
    const w = weight(rng, V * C, kind);
    const ids = Int32Array.of(3, 0, 10, -1, 3, 11);
    const got = await e.readF32(embedding(e, e.upload(ids, [ids.length], 'i32'), uploadHalf(e, w.bits, [V, C], kind)));
    expect(Array.from(got)).toEqual(Array.from(refEmbedding(ids, w.f, V, C)));
  }, T);
});

test('a 16-bit A or a batched 16-bit B is refused', async () => {
  const h = uploadHalf(e, toHalf(new Float32Array(8), 'bf16'), [2, 4], 'bf16');
  expect(() => matmul(e, h, e.upload(new Float32Array(8), [4, 2]))).toThrow(ShapeError);
  const hb = uploadHalf(e, toHalf(new Float32Array(16), 'bf16'), [2, 2, 4], 'bf16');
  expect(() => matmul(e, e.upload(new Float32Array(8), [2, 4]), hb, { transB: true })).toThrow(ShapeError);
});
