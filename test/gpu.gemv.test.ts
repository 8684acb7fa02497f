// The one-row matmul path (decode on GPUs: variant 'tiled', M = 1, x·Wᵀ) against the f64 reference.
import { expect, test } from 'bun:test';
import { Engine } from '../src/gpu/engine.ts';
import { matmul } from '../src/gpu/ops/matmul.ts';
import { refMatmul } from '../src/gpu/ref/matmul.ts';
import { Rng } from '../src/util/rng.ts';

test('x·Wᵀ for one row: alpha, bias and accumulate, odd N, N past one workgroup row block', async () => {
  const e = await Engine.create();
  const rng = new Rng(5);
  for (const [N, K] of [[1, 4], [13, 12], [300, 64], [1000, 172]]) {
    const x = rng.uniformArray(K), w = rng.uniformArray(N * K), bias = rng.uniformArray(N), c0 = rng.uniformArray(N);
    const want = refMatmul(x, w, { batch: 1, M: 1, K, N, transB: true }, 0.5, c0);
    for (let n = 0; n < N; n++) want[n]! += bias[n]!;
    const c = e.upload(c0, [1, N]);
    matmul(e, e.upload(x, [1, K]), e.upload(w, [N, K]), { transB: true, alpha: 0.5, bias: e.upload(bias, [N]), accumulate: c, variant: 'tiled' });
    const got = await e.readF32(c);
    // f32 sums of K ≤ 172 products of |x| ≤ 1 in a fixed tree: error ≲ √K·eps·K/3; allow 1e-5 + 1e-5·|y|.
    for (let n = 0; n < N; n++) expect(Math.abs(got[n]! - want[n]!)).toBeLessThanOrEqual(1e-5 + 1e-5 * Math.abs(want[n]!));
  }
});

test('x·Wᵀ for 2..8 rows (a continuous batch on GPUs): each row equals its one-row product bit for bit', async () => {
  const e = await Engine.create();
  const rng = new Rng(9);
  for (const [M, N, K] of [[2, 13, 12], [5, 300, 64], [8, 1000, 172]] as const) {
    const x = rng.uniformArray(M * K), w = rng.uniformArray(N * K), bias = rng.uniformArray(N);
    const W = e.upload(w, [N, K]);
    const B = e.upload(bias, [N]);
    const all = await e.readF32(matmul(e, e.upload(x, [M, K]), W, { transB: true, bias: B, variant: 'tiled' }));
    const want = refMatmul(x, w, { batch: 1, M, K, N, transB: true });
    for (let m = 0; m < M; m++) {
      const one = await e.readF32(matmul(e, e.upload(x.subarray(m * K, (m + 1) * K), [1, K]), W, { transB: true, bias: B, variant: 'tiled' }));
      expect(Array.from(all.subarray(m * N, (m + 1) * N))).toEqual(Array.from(one));
      for (let n = 0; n < N; n++) expect(Math.abs(one[n]! - want[m * N + n]! - bias[n]!)).toBeLessThanOrEqual(1e-5 + 1e-5 * Math.abs(want[m * N + n]!));
    }
  }
});
