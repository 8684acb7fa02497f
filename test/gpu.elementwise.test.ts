import { expect, test } from 'bun:test';
import { Engine } from '../src/gpu/engine.ts';
import { add } from '../src/gpu/ops/elementwise.ts';
import { Rng } from '../src/util/rng.ts';

test('add: vec4 path (N % 4 == 0) and scalar path give exact f32 sums', async () => {
  const e = await Engine.create();
  const rng = new Rng(11);
  for (const n of [4, 1000, 65536, 3, 1001, 65537]) {
    const a = rng.uniformArray(n), b = rng.uniformArray(n);
    const out = (await e.read(add(e, e.upload(a, [n]), e.upload(b, [n])))) as Float32Array;
    const want = a.map((x, i) => Math.fround(x + b[i]!)); // one f32 rounding, as on the GPU
    expect(Array.from(out)).toEqual(Array.from(want));
  }
});
