import { describe, expect, test } from 'bun:test';
import { ColaConfigError } from '../src/cola/errors.ts';
import { actionAt, knotSteps, linkForStep, planChain, replayKnots, splitAt, type ChainConfig, type ChainPlan } from '../src/cola/schedule.ts';
import { AutoKnots, checkAuto } from '../src/cola/auto.ts';

const spans = (p: ChainPlan) => p.links.map((l) => [l.startStep, l.endStep, l.rank]);

describe('planChain: valid configurations', () => {
  const cases: { name: string; totalSteps?: number; chain?: ChainConfig; rank: number; want: number[][] }[] = [
    { name: 'no chain = plain LoRA', totalSteps: 10, rank: 8, want: [[0, 10, 8]] },
    { name: 'links 1', totalSteps: 7, chain: { links: 1 }, rank: 8, want: [[0, 7, 8]] },
    { name: 'links 3 even', totalSteps: 12, chain: { links: 3 }, rank: 8, want: [[0, 4, 8], [4, 8, 8], [8, 12, 8]] },
    // T = 3·3 + 2: the first two links get one extra step.
    { name: 'links 3 remainder 2', totalSteps: 11, chain: { links: 3 }, rank: 4, want: [[0, 4, 4], [4, 8, 4], [8, 11, 4]] },
    { name: 'links 3 remainder 1', totalSteps: 10, chain: { links: 3 }, rank: 4, want: [[0, 4, 4], [4, 7, 4], [7, 10, 4]] },
    { name: 'links = steps', totalSteps: 3, chain: { links: 3 }, rank: 2, want: [[0, 1, 2], [1, 2, 2], [2, 3, 2]] },
    // Paper: M = 2 over 5 epochs uses epochs 1–3 then 4–5 (10 steps per epoch).
    { name: 'knots: epochs 1-3 then 4-5', totalSteps: 50, chain: { knots: [30] }, rank: 8, want: [[0, 30, 8], [30, 50, 8]] },
    { name: 'knots two', totalSteps: 360, chain: { knots: [120, 240] }, rank: 8, want: [[0, 120, 8], [120, 240, 8], [240, 360, 8]] },
    { name: 'knots empty = one link', totalSteps: 5, chain: { knots: [] }, rank: 8, want: [[0, 5, 8]] },
    { name: 'knots at 1 and T-1', totalSteps: 5, chain: { knots: [1, 4] }, rank: 8, want: [[0, 1, 8], [1, 4, 8], [4, 5, 8]] },
    {
      name: 'per-link rank step-down, total given',
      totalSteps: 500,
      chain: { links: [{ steps: 300, rank: 8 }, { steps: 200, rank: 4 }] },
      rank: 8,
      want: [[0, 300, 8], [300, 500, 4]],
    },
    {
      name: 'per-link defines the total; missing rank = default',
      chain: { links: [{ steps: 3 }, { steps: 2, rank: 2 }] },
      rank: 6,
      want: [[0, 3, 6], [3, 5, 2]],
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const plan = planChain({ totalSteps: c.totalSteps, chain: c.chain, rank: c.rank });
      expect(spans(plan)).toEqual(c.want);
      expect(plan.totalSteps).toBe(c.want[c.want.length - 1]![1]!);
      plan.links.forEach((l, i) => {
        expect(l.index).toBe(i);
        expect(l.steps).toBe(l.endStep - l.startStep);
      });
    });
  }

  test('equal split: lengths differ by at most one and earlier links are never shorter', () => {
    for (let T = 1; T <= 40; T++) {
      for (let M = 1; M <= T; M++) {
        const p = planChain({ totalSteps: T, chain: { links: M }, rank: 8 });
        const n = p.links.map((l) => l.steps);
        expect(n.reduce((a, b) => a + b, 0)).toBe(T);
        expect(Math.max(...n) - Math.min(...n)).toBeLessThanOrEqual(1);
        for (let j = 1; j < M; j++) expect(n[j]!).toBeLessThanOrEqual(n[j - 1]!);
      }
    }
  });
});

describe('planChain: invalid configurations name the field', () => {
  const cases: { name: string; input: Parameters<typeof planChain>[0]; path: string; msg: RegExp }[] = [
    { name: 'zero links', input: { totalSteps: 10, chain: { links: 0 }, rank: 8 }, path: 'chain.links', msg: /\[1, 1000\]/ },
    { name: 'fractional links', input: { totalSteps: 10, chain: { links: 2.5 }, rank: 8 }, path: 'chain.links', msg: /integer/ },
    { name: 'more links than steps', input: { totalSteps: 2, chain: { links: 3 }, rank: 8 }, path: 'chain.links', msg: /at least 3 steps/ },
    { name: 'knot at 0', input: { totalSteps: 10, chain: { knots: [0] }, rank: 8 }, path: 'chain.knots[0]', msg: /\[1, / },
    { name: 'knot at T', input: { totalSteps: 10, chain: { knots: [5, 10] }, rank: 8 }, path: 'chain.knots[1]', msg: /less than/ },
    { name: 'knots not increasing', input: { totalSteps: 10, chain: { knots: [5, 5] }, rank: 8 }, path: 'chain.knots[1]', msg: /strictly increasing/ },
    { name: 'knots decreasing', input: { totalSteps: 10, chain: { knots: [6, 3] }, rank: 8 }, path: 'chain.knots[1]', msg: /strictly increasing/ },
    { name: 'knot NaN', input: { totalSteps: 10, chain: { knots: [NaN] }, rank: 8 }, path: 'chain.knots[0]', msg: /integer/ },
    {
      name: 'per-link sum mismatch',
      input: { totalSteps: 10, chain: { links: [{ steps: 3 }, { steps: 3 }] }, rank: 8 },
      path: 'chain.links',
      msg: /sum to 6 but the run has 10/,
    },
    { name: 'per-link zero steps', input: { chain: { links: [{ steps: 0 }] }, rank: 8 }, path: 'chain.links[0].steps', msg: /\[1, / },
    { name: 'per-link bad rank', input: { chain: { links: [{ steps: 2, rank: 0 }] }, rank: 8 }, path: 'chain.links[0].rank', msg: /\[1, 1024\]/ },
    { name: 'per-link empty', input: { chain: { links: [] }, rank: 8 }, path: 'chain.links', msg: /1 to 1000/ },
    {
      name: 'per-link unknown field',
      input: { chain: { links: [{ steps: 2, rnk: 3 } as never] }, rank: 8 },
      path: 'chain.links[0].rnk',
      msg: /unknown/,
    },
    { name: 'both keys', input: { totalSteps: 10, chain: { links: 2, knots: [3] } as never, rank: 8 }, path: 'chain', msg: /exactly one/ },
    { name: 'missing total', input: { chain: { links: 2 }, rank: 8 }, path: 'total_steps', msg: /required/ },
    { name: 'total zero', input: { totalSteps: 0, chain: { links: 1 }, rank: 8 }, path: 'total_steps', msg: /\[1, / },
    { name: 'default rank huge', input: { totalSteps: 10, rank: 5000 }, path: 'lora.rank', msg: /\[1, 1024\]/ },
  ];
  for (const c of cases) {
    test(c.name, () => {
      let err: unknown;
      try {
        planChain(c.input);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ColaConfigError);
      expect((err as ColaConfigError).path).toBe(c.path);
      expect((err as Error).message).toMatch(c.msg);
    });
  }
});

describe('actionAt / linkForStep', () => {
  const plan = planChain({ totalSteps: 10, chain: { links: [{ steps: 4, rank: 8 }, { steps: 3, rank: 4 }, { steps: 3, rank: 2 }] }, rank: 8 });

  test('table of actions after `done` completed steps', () => {
    const want: [number, string, number, number?][] = [
      [0, 'train', 0],
      [1, 'train', 0],
      [3, 'train', 0],
      [4, 'tie_knot', 0, 1],
      [5, 'train', 1],
      [6, 'train', 1],
      [7, 'tie_knot', 1, 2],
      [9, 'train', 2],
      [10, 'finish', 2],
    ];
    for (const [done, kind, link, next] of want) {
      const a = actionAt(done, plan);
      expect([done, a.kind, a.link.index] as unknown[]).toEqual([done, kind, link]);
      if (a.kind === 'tie_knot') {
        expect(a.nextLink.index).toBe(next!);
        expect(a.nextRank).toBe(plan.links[next!]!.rank);
      }
    }
  });

  test('simulated trainer: each step trained exactly once, M knots (M versions) in order', () => {
    for (const p of [plan, planChain({ totalSteps: 1, rank: 8 }), planChain({ totalSteps: 17, chain: { links: 5 }, rank: 8 })]) {
      const trained: number[] = [];
      const knots: [number, number][] = []; // (link, done)
      let done = 0;
      let current = 0;
      for (let guard = 0; guard < 1000; guard++) {
        const a = actionAt(done, p);
        if (a.kind === 'train') {
          expect(a.link.index).toBe(current);
          trained.push(done);
          done++;
        } else if (a.kind === 'tie_knot') {
          knots.push([a.link.index, done]);
          current = a.nextLink.index;
          // After the knot, step `done` is trained in the next link.
          expect(linkForStep(done, p).index).toBe(current);
          // tie_knot is a state of `done`; a trainer moves on by training in nextLink.
          trained.push(done);
          done++;
        } else {
          knots.push([a.link.index, done]);
          break;
        }
      }
      expect(trained).toEqual(Array.from({ length: p.totalSteps }, (_, i) => i));
      expect(knots.map((k) => k[0])).toEqual(p.links.map((l) => l.index));
      expect(knots.map((k) => k[1])).toEqual(p.links.map((l) => l.endStep));
      expect(knotSteps(p)).toEqual(p.links.slice(0, -1).map((l) => l.endStep));
    }
  });

  test('out of range', () => {
    expect(() => actionAt(-1, plan)).toThrow(RangeError);
    expect(() => actionAt(11, plan)).toThrow(RangeError);
    expect(() => linkForStep(10, plan)).toThrow(RangeError);
    expect(() => actionAt(1.5, plan)).toThrow(RangeError);
  });
});

describe('splitAt (tie a knot now)', () => {
  const plan = planChain({ totalSteps: 10, chain: { links: [{ steps: 6, rank: 8 }, { steps: 4, rank: 4 }] }, rank: 8 });
  test('cuts the current link and keeps later ones', () => {
    expect(spans(splitAt(plan, 2))).toEqual([[0, 2, 8], [2, 6, 8], [6, 10, 4]]);
    expect(spans(splitAt(plan, 7, 2))).toEqual([[0, 6, 8], [6, 7, 4], [7, 10, 2]]);
  });
  test('refuses at an existing knot, at 0 and at the end', () => {
    expect(() => splitAt(plan, 6)).toThrow(/already tied/);
    expect(() => splitAt(plan, 0)).toThrow(ColaConfigError);
    expect(() => splitAt(plan, 10)).toThrow(ColaConfigError);
  });
});

describe('replayKnots (resume after requested knots)', () => {
  const planned = planChain({ totalSteps: 9, chain: { links: 3 }, rank: 8 }); // [0,3) [3,6) [6,9)
  const cases: [string, number[], number[][]][] = [
    ['only planned knots: unchanged', [3, 6], [[0, 3, 8], [3, 6, 8], [6, 9, 8]]],
    ['a requested knot at 1, then the planned one at 3', [1, 3], [[0, 1, 8], [1, 3, 8], [3, 6, 8], [6, 9, 8]]],
    ['two requested knots in different links', [2, 3, 4], [[0, 2, 8], [2, 3, 8], [3, 4, 8], [4, 6, 8], [6, 9, 8]]],
    ['a requested knot as the last one persisted', [3, 5], [[0, 3, 8], [3, 5, 8], [5, 6, 8], [6, 9, 8]]],
  ];
  for (const [name, steps, want] of cases) {
    test(name, () => {
      const p = replayKnots(planned, steps);
      expect(spans(p)).toEqual(want);
      // the same plan the uninterrupted run built by splitting as the requests came
      let live = planned;
      for (const s of steps) if (!live.links.some((l) => l.endStep === s)) live = splitAt(live, s);
      expect(p).toEqual(live);
    });
  }
});

describe('automatic knots (src/cola/auto.ts)', () => {
  test('plans one link; validation names the field', () => {
    expect(planChain({ totalSteps: 100, chain: { auto: {} }, rank: 8 }).links.map((l) => [l.startStep, l.endStep, l.rank])).toEqual([[0, 100, 8]]);
    const bad: [object, string][] = [
      [{ min_link_steps: 60 }, 'chain.auto.min_link_steps'],
      [{ threshold: 1 }, 'chain.auto.threshold'],
      [{ ema: 1 }, 'chain.auto.ema'],
      [{ window: 0 }, 'chain.auto.window'],
      [{ max_links: 0 }, 'chain.auto.max_links'],
      [{ every: 3 }, 'chain.auto.every'],
    ];
    for (const [auto, path] of bad) {
      try {
        planChain({ totalSteps: 100, chain: { auto } as never, rank: 8 });
        throw new Error(`accepted ${JSON.stringify(auto)}`);
      } catch (err) {
        expect((err as ColaConfigError).path).toBe(path);
      }
    }
  });

  test('ties when the EMA rate falls to threshold × the initial rate, not before min_link_steps, never past max_links', () => {
    const cfg = checkAuto({ min_link_steps: 20, max_links: 2, threshold: 0.25, ema: 0.8, window: 5 }, 200);
    const c = new AutoKnots(cfg);
    expect(c.startLink(0, 0)).toBeNull();
    // loss = 1 + 2·exp(-s/10): the rate ∝ exp(-s/10) falls to 1/4 of its peak ≈ 14 steps after the peak,
    // which the EMA (β 0.8) and the window (5) delay by several steps: past min_link_steps (20), before 40.
    let tie: ReturnType<AutoKnots['observe']> = null;
    let s = 0;
    while (!tie && s < 200) {
      s++;
      tie = c.observe(s, 1 + 2 * Math.exp(-s / 10), 200);
    }
    expect(tie!.decision).toBe('tie');
    expect(tie!.step).toBeGreaterThan(20);
    expect(tie!.step).toBeLessThan(40);
    expect(tie!.rate).toBeLessThanOrEqual(0.25 * tie!.initial_rate!);
    // A flat-then-falling curve is not cut while it still improves at its initial pace.
    const d = new AutoKnots(checkAuto({ min_link_steps: 20, max_links: 3, threshold: 0.25, ema: 0.8, window: 5 }, 200));
    d.startLink(0, 0);
    for (let t = 1; t <= 100; t++) expect(d.observe(t, 10 - 0.05 * t, 200)).toBeNull();
    // The last link records why no knot follows, and never ties.
    const last = c.startLink(1, 20);
    expect(last?.decision).toBe('last_link');
    for (let t = 21; t <= 200; t++) expect(c.observe(t, 1, 200)).toBeNull();
  });

  test('a loss that never improves (initial rate ≤ 0: flat or rising) ties no knot', () => {
    const cfg = checkAuto({ min_link_steps: 10, max_links: 5, threshold: 0.25, ema: 0.8, window: 5 }, 200);
    for (const loss of [(_t: number) => 2, (t: number) => 2 + 0.01 * t, (t: number) => 2 + 0.01 * Math.sqrt(t)]) {
      const c = new AutoKnots(cfg);
      c.startLink(0, 0);
      for (let t = 1; t <= 190; t++) expect(c.observe(t, loss(t), 200)).toBeNull();
    }
  });
});
