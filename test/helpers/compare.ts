// Comparison helpers for GPU-vs-reference tests.
import { expect } from 'bun:test';

export type Num = ArrayLike<number>;

/** Largest |a-b| and largest |a-b| / (atol + rtol·|b|) over all elements. */
export function diff(a: Num, b: Num): { maxAbs: number; maxIdx: number } {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let maxAbs = 0;
  let maxIdx = -1;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= maxAbs)) {
      maxAbs = d;
      maxIdx = i;
    }
  }
  return { maxAbs, maxIdx };
}

/**
 * Asserts |a - b| <= atol + rtol·|b| elementwise (NaN fails). `what` names the comparison in the
 * failure message.
 */
export function expectClose(a: Num, b: Num, atol: number, rtol: number, what = 'values'): void {
  expect(a.length).toBe(b.length);
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    const ok = Math.abs(x - y) <= atol + rtol * Math.abs(y);
    if (!ok) {
      throw new Error(`${what}: element ${i} got ${x}, expected ${y} (atol ${atol}, rtol ${rtol}); max diff ${diff(a, b).maxAbs}`);
    }
  }
}
