import { describe, expect, test } from 'bun:test';
import { ColaConfigError } from '../src/cola/errors.ts';
import { lrAt, lrCurve } from '../src/cola/lr.ts';
import { planChain } from '../src/cola/schedule.ts';

// Exact rationals are compared with toBeCloseTo(·, 12): they are one division and one multiply in f64.
describe('linear schedule over the whole run', () => {
  test('no warmup: 1, (T-1)/T, …, 1/T', () => {
    const c = lrCurve({ name: 'linear', lr: 1 }, 4);
    expect(Array.from(c)).toEqual([1, 0.75, 0.5, 0.25]);
  });
  test('warmup 2 of 6: 0, 1/2, then 1 → decays to 0 at T', () => {
    const c = Array.from(lrCurve({ name: 'linear', lr: 2, warmupSteps: 2 }, 6));
    const want = [0, 1, 2, 2 * 3 / 4, 2 * 2 / 4, 2 * 1 / 4];
    c.forEach((x, i) => expect(x).toBeCloseTo(want[i]!, 12));
  });
  test('not restarted at knots by default: same curve with or without a chain', () => {
    const plan = planChain({ totalSteps: 9, chain: { links: 3 }, rank: 8 });
    const a = lrCurve({ name: 'linear', lr: 1e-3, warmupSteps: 1 }, 9, plan);
    const b = lrCurve({ name: 'linear', lr: 1e-3, warmupSteps: 1 }, 9);
    expect(Array.from(a)).toEqual(Array.from(b));
    // Strictly decreasing after warm-up: the schedule does not jump back up at knots 3 and 6.
    for (let s = 2; s < 9; s++) expect(a[s]!).toBeLessThan(a[s - 1]!);
  });
  test('restart_at_knots restarts warmup and decay per link', () => {
    const plan = planChain({ totalSteps: 7, chain: { links: [{ steps: 4 }, { steps: 3 }] }, rank: 8 });
    const c = Array.from(lrCurve({ name: 'linear', lr: 1, warmupSteps: 1, restartAtKnots: true }, 7, plan));
    const want = [0, 1, 2 / 3, 1 / 3, 0, 1, 1 / 2];
    c.forEach((x, i) => expect(x).toBeCloseTo(want[i]!, 12));
  });
  test('restart with a link shorter than the warmup warms over the whole link', () => {
    const plan = planChain({ totalSteps: 5, chain: { links: [{ steps: 3 }, { steps: 2 }] }, rank: 8 });
    const c = Array.from(lrCurve({ name: 'linear', lr: 1, warmupSteps: 3, restartAtKnots: true }, 5, plan));
    [0, 1 / 3, 2 / 3, 0, 1 / 2].forEach((w, i) => expect(c[i]!).toBeCloseTo(w, 12));
  });
});

describe('constant schedule', () => {
  test('warmup then flat', () => {
    expect(Array.from(lrCurve({ name: 'constant', lr: 4, warmupSteps: 4 }, 6))).toEqual([0, 1, 2, 3, 4, 4]);
    expect(Array.from(lrCurve({ name: 'constant', lr: 4 }, 3))).toEqual([4, 4, 4]);
  });
});

describe('validation', () => {
  const bad: [string, () => unknown, RegExp][] = [
    ['step = T', () => lrAt(5, { name: 'linear', lr: 1 }, 5), /outside/],
    ['negative step', () => lrAt(-1, { name: 'linear', lr: 1 }, 5), /outside/],
    ['lr 0', () => lrAt(0, { name: 'linear', lr: 0 }, 5), /> 0/],
    ['lr NaN', () => lrAt(0, { name: 'linear', lr: NaN }, 5), /finite/],
    ['lr huge', () => lrAt(0, { name: 'linear', lr: 11 }, 5), /\[0, 10\]/],
    ['warmup > T', () => lrAt(0, { name: 'linear', lr: 1, warmupSteps: 6 }, 5), /warmup_steps/],
    ['unknown name', () => lrAt(0, { name: 'cosine' as never, lr: 1 }, 5), /schedule.name/],
    ['restart without plan', () => lrAt(0, { name: 'linear', lr: 1, restartAtKnots: true }, 5), /needs the chain plan/],
  ];
  for (const [name, f, msg] of bad) {
    test(name, () => {
      expect(f).toThrow(msg);
    });
  }
  test('config errors are ColaConfigError', () => {
    expect(() => lrAt(0, { name: 'linear', lr: -1 }, 5)).toThrow(ColaConfigError);
  });
});
