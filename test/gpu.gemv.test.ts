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
