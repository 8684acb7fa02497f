// The GPU scheduler: the one owner of the device's time in a process (issue 9).
//
// Every piece of device work is a unit run through `run()` or a `session()`: a decode iteration of
// a model's running batch, a prefill chunk, a scoring batch of an evaluation, a slice of a training
// step, a knot. One unit has the device at a time (the engine records into one command stream), and
// a unit ends with the device idle, so the next unit never queues behind another's GPU work.
//
// Policy when both classes have work: interactive units (generation, evaluation) go first, except
// that training is guaranteed `trainShare` of the device time (decayed usage over a few seconds),
// so a job never starves under load and a generation waits at most for one training slice. Within
// a class, the key (a tenant, a job) with the least recent device time goes next, so tenants and
// jobs share the device fairly whatever their request rates. Training code calls
// `session.checkpoint()` between slices of a step (layers of the forward and backward): when
// nobody is waiting it returns at once (full speed alone); otherwise the slice's work is waited
// for and the device handed over.
import type { Engine } from './engine.ts';

export type WorkClass = 'interactive' | 'train';

export interface SchedulerOptions {
  /** Share of device time guaranteed to training when both classes have work (0..1). */
  trainShare: number;
  /** Half-life of the usage that the policy compares (ms). */
  halfLifeMs?: number;
  now?: () => number;
}

interface Waiter {
  cls: WorkClass;
  key: string;
  seq: number;
  grant: () => void;
}

class Decayed {
  private v = 0;
  private at = 0;
  constructor(private readonly halfLifeMs: number) {}
  value(now: number): number {
    return this.v * 2 ** (-(now - this.at) / this.halfLifeMs);
  }
  add(now: number, ms: number): void {
    this.v = this.value(now) + ms;
    this.at = now;
  }
}

export interface SchedulerStats {
  units: Record<WorkClass, number>;
  busyMs: Record<WorkClass, number>;
  waiting: Record<WorkClass, number>;
  /** Longest wait for the device (ms) by class since start. */
  maxWaitMs: Record<WorkClass, number>;
  /** Longest turn on the device (ms) by class since start: a unit, or a session's stretch between hand-overs. */
  maxTurnMs: Record<WorkClass, number>;
}

/** A held turn on the device; `checkpoint()` may hand it over and take it back. */
export interface DeviceSession {
  /** Gives the device up if someone else's turn has come, and waits to get it back. */
  checkpoint(): Promise<void>;
  /** Ends the session (waits for its device work first). */
  end(): Promise<void>;
}

export class GpuScheduler {
  private busy = false;
  private current: { cls: WorkClass; key: string; since: number } | null = null;
  private readonly waiters: Waiter[] = [];
  private seq = 0;
  private readonly halfLife: number;
  private readonly now: () => number;
  private readonly classUse: Record<WorkClass, Decayed>;
  private readonly keyUse = new Map<string, Decayed>();
  private readonly s: SchedulerStats = {
    units: { interactive: 0, train: 0 },
    busyMs: { interactive: 0, train: 0 },
    waiting: { interactive: 0, train: 0 },
    maxWaitMs: { interactive: 0, train: 0 },
    maxTurnMs: { interactive: 0, train: 0 },
  };

  constructor(
    /** The engine whose queue is drained at the end of each unit (null in pure policy tests). */
    readonly e: Engine | null,
    readonly opts: SchedulerOptions,
  ) {
    if (!(opts.trainShare >= 0 && opts.trainShare <= 1)) throw new RangeError(`trainShare ${opts.trainShare} must be in [0, 1]`);
    this.halfLife = opts.halfLifeMs ?? 2000;
    this.now = opts.now ?? (() => performance.now());
    this.classUse = { interactive: new Decayed(this.halfLife), train: new Decayed(this.halfLife) };
  }

  stats(): SchedulerStats {
    const waiting = { interactive: 0, train: 0 };
    for (const w of this.waiters) waiting[w.cls]++;
    return { ...structuredClone(this.s), waiting };
  }

  /** Runs `fn` as one unit of device work of `cls` for `key` (a tenant or a job). */
  async run<T>(cls: WorkClass, key: string, fn: () => Promise<T>): Promise<T> {
    await this.acquire(cls, key);
    try {
      const r = await fn();
      await this.drain();
      return r;
    } catch (err) {
      await this.drain().catch(() => {});
      throw err;
    } finally {
      this.release();
    }
  }

  /** A turn that spans several slices (a training step); see DeviceSession. */
  async session(cls: WorkClass, key: string): Promise<DeviceSession> {
    await this.acquire(cls, key);
    let held = true;
    return {
      checkpoint: async () => {
        if (!held) throw new Error('checkpoint after end');
        if (!this.shouldYield()) return;
        await this.drain();
        this.release();
        held = false;
        await this.acquire(cls, key);
        held = true;
      },
      end: async () => {
        if (!held) return;
        held = false;
        try {
          await this.drain();
        } finally {
          this.release();
        }
      },
    };
  }

  /** Whether the unit running now should hand the device to a waiter (the policy would pick another). */
  shouldYield(): boolean {
    if (!this.current || this.waiters.length === 0) return false;
    const now = this.now();
    const elapsed = now - this.current.since;
    const next = this.pick(now, this.current, elapsed);
    if (!next) return false;
    if (next.cls !== this.current.cls) return true;
    return next.key !== this.current.key;
  }

  private async drain(): Promise<void> {
    if (this.e?.hasUnwaitedWork) await this.e.sync();
  }

  private acquire(cls: WorkClass, key: string): Promise<void> {
    const enq = this.now();
    return new Promise<void>((resolve) => {
      const grant = () => {
        const t = this.now();
        this.s.maxWaitMs[cls] = Math.max(this.s.maxWaitMs[cls], t - enq);
        this.busy = true;
        this.current = { cls, key, since: t };
        resolve();
      };
      if (!this.busy && this.waiters.length === 0) grant();
      else {
        this.waiters.push({ cls, key, seq: this.seq++, grant });
        if (!this.busy) this.grantNext();
      }
    });
  }

  private release(): void {
    const cur = this.current;
    if (cur) {
      const t = this.now();
      const ms = t - cur.since;
      this.classUse[cur.cls].add(t, ms);
      this.useOf(cur.key).add(t, ms);
      this.s.units[cur.cls]++;
      this.s.busyMs[cur.cls] += ms;
      this.s.maxTurnMs[cur.cls] = Math.max(this.s.maxTurnMs[cur.cls], ms);
    }
    this.current = null;
    this.busy = false;
    this.grantNext();
  }

  private useOf(key: string): Decayed {
    let d = this.keyUse.get(key);
    if (!d) {
      d = new Decayed(this.halfLife);
      this.keyUse.set(key, d);
      if (this.keyUse.size > 10_000) {
        // Forget the oldest keys (finished jobs, idle tenants); their usage has decayed anyway.
        for (const k of this.keyUse.keys()) {
          if (this.keyUse.size <= 5_000) break;
          this.keyUse.delete(k);
        }
      }
    }
    return d;
  }

  /**
   * Decides the next unit one macrotask later, not at release: the owner of the unit that just
   * ended (a batch's next iteration, a job's next step) re-submits in the continuations of the same
   * task, and must be among the candidates. Deciding at once would hand the device to whoever else
   * waits every time (a training job would run after every decode iteration, whatever the share).
   * The device stays reserved meanwhile, so newcomers queue instead of slipping in.
   */
  private grantNext(): void {
    if (this.busy || this.waiters.length === 0) return;
    this.busy = true; // reserved until the decision
    setImmediate(() => {
      if (this.waiters.length === 0) {
        this.busy = false;
        return;
      }
      const w = this.pick(this.now(), null, 0) as Waiter;
      this.waiters.splice(this.waiters.indexOf(w), 1);
      w.grant();
    });
  }

  /**
   * The waiter the policy serves next; `running` (with its elapsed time) competes as if it were
   * waiting, so shouldYield() can compare it with the waiters.
   */
  private pick(now: number, running: { cls: WorkClass; key: string } | null, elapsed: number): Waiter | { cls: WorkClass; key: string } | null {
    const has = { interactive: running?.cls === 'interactive', train: running?.cls === 'train' };
    for (const w of this.waiters) has[w.cls] = true;
    let cls: WorkClass;
    if (has.interactive && has.train) {
      const tu = this.classUse.train.value(now) + (running?.cls === 'train' ? elapsed : 0);
      const iu = this.classUse.interactive.value(now) + (running?.cls === 'interactive' ? elapsed : 0);
      cls = tu + iu > 0 && tu / (tu + iu) < this.opts.trainShare ? 'train' : 'interactive';
    } else cls = has.train ? 'train' : 'interactive';
    // Least recent use first; equal use (the same key) in arrival order. The running unit has seq −1.
    const cands: { key: string; use: number; seq: number; w: Waiter | null }[] = [];
    if (running && running.cls === cls) cands.push({ key: running.key, use: this.useOf(running.key).value(now) + elapsed, seq: -1, w: null });
    for (const w of this.waiters) if (w.cls === cls) cands.push({ key: w.key, use: this.useOf(w.key).value(now), seq: w.seq, w });
    if (cands.length === 0) return null;
    const best = cands.reduce((a, b) => (b.use < a.use || (b.use === a.use && b.seq < a.seq) ? b : a));
    return best.w ?? { cls, key: best.key };
  }
}
