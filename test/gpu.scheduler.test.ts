// The GPU scheduler's policy (src/gpu/scheduler.ts), with no device: units advance a fake clock by
// their cost. Table-style checks: one unit at a time, interactive first, training's guaranteed
// share, fairness between keys, and checkpoints that hand the device over only when someone waits.
import { describe, expect, test } from 'bun:test';
import { GpuScheduler, type WorkClass } from '../src/gpu/scheduler.ts';
import { trainKey } from '../src/cola/runner.ts';

function rig(trainShare: number) {
  let t = 0;
  const sched = new GpuScheduler(null, { trainShare, now: () => t, halfLifeMs: 1e9 });
  let inUnit = 0;
  let maxConcurrent = 0;
  const log: { cls: WorkClass; key: string; at: number }[] = [];
  /** A unit that takes `ms` of (fake) device time. */
  const unit = (cls: WorkClass, key: string, ms: number) =>
    sched.run(cls, key, async () => {
      inUnit++;
      maxConcurrent = Math.max(maxConcurrent, inUnit);
      log.push({ cls, key, at: t });
      await Promise.resolve();
      t += ms;
      inUnit--;
    });
  /** `n` units back to back (a stream of work of one key, like a batch's iterations). */
  const stream = async (cls: WorkClass, key: string, ms: number, n: number) => {
    for (let i = 0; i < n; i++) await unit(cls, key, ms);
  };
  return { sched, unit, stream, log, now: () => t, maxConcurrent: () => maxConcurrent };
}

describe('GPU scheduler policy', () => {
  test('one unit at a time, every unit runs', async () => {
    const r = rig(0.3);
    await Promise.all([r.stream('train', 'job:a', 10, 20), r.stream('interactive', 't:x', 2, 50), r.stream('interactive', 't:y', 3, 30)]);
    expect(r.maxConcurrent()).toBe(1);
    expect(r.log.length).toBe(100);
  });

  test.each([
    [0.0, 0.0, 0.02],
    [0.3, 0.27, 0.33],
    [0.5, 0.47, 0.53],
  ])('both classes always busy: training gets its share (share %p → %p..%p of device time)', async (share, lo, hi) => {
    const r = rig(share);
    let trainMs = 0;
    let done = false;
    const train = (async () => {
      while (!done) {
        await r.unit('train', 'job:a', 10);
        trainMs += 10;
      }
    })();
    await r.stream('interactive', 't:x', 2, 2000);
    done = true;
    await train;
    const frac = trainMs / r.now();
    expect(frac).toBeGreaterThanOrEqual(lo);
    expect(frac).toBeLessThanOrEqual(hi);
  });

  test('interactive first: a decode stream waits at most one training unit at a time', async () => {
    const r = rig(0.2);
    let done = false;
    const train = (async () => {
      while (!done) await r.unit('train', 'job:a', 8);
    })();
    let worst = 0;
    for (let i = 0; i < 200; i++) {
      const t0 = r.now();
      await r.unit('interactive', 't:x', 2);
      worst = Math.max(worst, r.now() - t0);
    }
    done = true;
    await train;
    expect(worst).toBeLessThanOrEqual(8 + 2); // its own 2 ms plus at most one 8 ms training unit
  });

  test('fair between keys of a class: a tenant with 10× the requests does not get 10× the device', async () => {
    const r = rig(0);
    await Promise.all([
      ...Array.from({ length: 10 }, () => r.stream('interactive', 't:heavy', 5, 20)),
      r.stream('interactive', 't:light', 5, 20),
    ]);
    // The light tenant's 20 units finish within the first ~45 units, not after the heavy tenant's 200.
    const lastLight = r.log.map((x) => x.key).lastIndexOf('t:light');
    expect(lastLight).toBeLessThan(45);
  });

  test('two jobs share the device in turns', async () => {
    const r = rig(1);
    await Promise.all([r.stream('train', 'job:a', 10, 30), r.stream('train', 'job:b', 10, 30)]);
    const firstHalf = r.log.slice(0, 30).map((x) => x.key);
    expect(firstHalf.filter((k) => k === 'job:a').length).toBeGreaterThanOrEqual(13);
    expect(firstHalf.filter((k) => k === 'job:b').length).toBeGreaterThanOrEqual(13);
  });

  test('training is fair between tenants, not jobs: two jobs of one tenant share what one job of another gets', async () => {
    const r = rig(1);
    const A = trainKey('tenant-a');
    const B = trainKey('tenant-b');
    await Promise.all([r.stream('train', A, 10, 30), r.stream('train', A, 10, 30), r.stream('train', B, 10, 30)]);
    // While all three run, tenant B gets about half of the steps (not a third).
    const firstHalf = r.log.slice(0, 40).map((x) => x.key);
    expect(firstHalf.filter((k) => k === B).length).toBeGreaterThanOrEqual(18);
    expect(firstHalf.filter((k) => k === A).length).toBeGreaterThanOrEqual(18);
  });

  test('a session hands the device over at a checkpoint only when someone waits', async () => {
    const r = rig(0.3);
    const s = await r.sched.session('train', 'job:a');
    await s.checkpoint(); // nobody waits: keeps the device
    let ran = false;
    const waiting = r.unit('interactive', 't:x', 1).then(() => (ran = true));
    await Promise.resolve();
    expect(ran).toBe(false); // the session holds the device
    await s.checkpoint(); // interactive first: hands over, waits, takes it back
    expect(ran).toBe(true);
    await s.end();
    await waiting;
    expect(r.sched.stats().units).toEqual({ interactive: 1, train: 2 });
  });

  test('stats: longest turn and longest wait by class', async () => {
    const r = rig(0.3);
    await Promise.all([r.unit('train', 'job:a', 40), r.unit('interactive', 't:x', 5), r.unit('interactive', 't:x', 7)]);
    const s = r.sched.stats();
    expect(s.maxTurnMs).toEqual({ interactive: 7, train: 40 });
    // The device was free: the training unit starts at once; the interactive ones wait 40 and 45.
    expect(s.maxWaitMs.train).toBe(0);
    expect(s.maxWaitMs.interactive).toBe(45);
  });
});
