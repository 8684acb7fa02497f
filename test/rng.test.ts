import { expect, test } from 'bun:test';
import { Rng, mixSeed } from '../src/util/rng.ts';

test('rng is deterministic per seed and streams differ across seeds', () => {
  const a = new Rng(42), b = new Rng(42), c = new Rng(43);
  const xa = Array.from({ length: 5 }, () => a.nextU32());
  expect(Array.from({ length: 5 }, () => b.nextU32())).toEqual(xa);
  expect(Array.from({ length: 5 }, () => c.nextU32())).not.toEqual(xa);
  expect(mixSeed(1, 2)).not.toBe(mixSeed(2, 1));
});

test('normal() has mean ~0 and variance ~1', () => {
  const r = new Rng(7);
  const n = 200_000;
  let s = 0, s2 = 0;
  for (let i = 0; i < n; i++) { const x = r.normal(); s += x; s2 += x * x; }
  const mean = s / n, variance = s2 / n - mean * mean;
  // 5-sigma bounds for n = 2e5: std(mean) = 0.0022, std(var) ≈ 0.0032
  expect(Math.abs(mean)).toBeLessThan(0.011);
  expect(Math.abs(variance - 1)).toBeLessThan(0.016);
});
