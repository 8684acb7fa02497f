// Queue and worker on PGlite and the Postgres server: pg-boss dispatch, no-runner failure,
// lease expiry → reclaim by another worker resuming from the last knot, a stale worker fenced
// out, cancel between steps. The JobRunner here is a test double (the real one is the COLA trainer).
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { sql } from 'drizzle-orm';
import { tiers, type TestDb } from './db.fixtures.ts';
import { createTenant } from '../src/db/repos/tenants.ts';
import { createModel, ensureTenantModel, insertVersion, listVersions, findModel } from '../src/db/repos/models.ts';
import { listSteps, getJobById, insertJob, listEvents } from '../src/db/repos/jobs.ts';
import { claim } from '../src/jobs/transitions.ts';
import { JobWorker } from '../src/jobs/worker.ts';
import { FinetuneRequest } from '../src/domain/schemas.ts';
import { openQueue } from '../src/jobs/queue.ts';
import type { FinetuneJobSpec, JobContext, JobRunner } from '../src/services.ts';
import type { Db } from '../src/db/index.ts';
import { Store } from '../src/store/store.ts';

const cfg = (o: Partial<{ leaseMs: number; heartbeatMs: number }> = {}) => ({
  leaseMs: o.leaseMs ?? 5_000,
  heartbeatMs: o.heartbeatMs ?? 200,
  reclaimIntervalMs: 100,
  maxJobAttempts: 5,
  workerConcurrency: 2,
  repoRoot: '/',
});

/** Test double: `steps` steps, a knot every `every` steps; snapshot = sha256(job, step). Resumes after resumeFrom.step. */
function fakeRunner(o: { steps: number; every: number; stepDelayMs?: number; onRun?: (spec: FinetuneJobSpec, ctx: JobContext) => void; gate?: Promise<void> }): JobRunner & { runs: number } {
  const r = {
    runs: 0,
    async run(spec: FinetuneJobSpec, ctx: JobContext) {
      r.runs++;
      o.onRun?.(spec, ctx);
      const start = ctx.resumeFrom?.step ?? 0;
      for (let step = start + 1; step <= o.steps; step++) {
        if (ctx.isCancelled()) return { cancelled: true };
        if (o.gate && step === start + 1) await o.gate;
        if (o.stepDelayMs) await Bun.sleep(o.stepDelayMs);
        const link = Math.ceil(step / o.every);
        await ctx.onStep({ step, total_steps: o.steps, link, links: Math.ceil(o.steps / o.every), epoch: 1, loss: 1 / step });
        if (step % o.every === 0) {
          const p = path.join(spec.storeDir, `${spec.id}-${step}.bin`);
          fs.mkdirSync(spec.storeDir, { recursive: true });
          const content = `${spec.request.seed}-${step}`;
          fs.writeFileSync(p, content);
          await ctx.onKnot({ link, step, rank: 8, flops: step, snapshot: { path: p, sha256: crypto.createHash('sha256').update(content).digest('hex'), bytes: content.length } });
        }
      }
    },
  };
  return r;
}

async function newJob(db: Db) {
  const t = await createTenant(db, { name: `q-${crypto.randomBytes(4).toString('hex')}` });
  const base = await createModel(db, { tenantId: null, name: `b-${crypto.randomBytes(4).toString('hex')}`, architecture: 'llama' });
  await insertVersion(db, { modelId: base.id, version: 0, parentModelId: null, parentVersion: null, kind: 'base', jobId: null, link: null, rank: null, sha256: 'a'.repeat(64), bytes: 1, path: '/x', adapterPath: null, metrics: null });
  await ensureTenantModel(db, { tenantId: t.tenant.id, name: 'out', architecture: 'llama' });
  const job = await insertJob(db, { tenantId: t.tenant.id, request: FinetuneRequest.parse({ model: base.name, seed: 7, train: [{ text: 'a' }] }), baseModelId: base.id, baseModelName: base.name, baseVersion: 0, outputModel: 'out' });
  return { tenantId: t.tenant.id, job, base };
}

async function waitFor<T>(f: () => Promise<T | null | undefined | false>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = await f();
    if (v) return v;
    await Bun.sleep(50);
  }
  throw new Error('timed out waiting');
}

for (const tier of tiers) {
  describe(`jobs on ${tier.name}`, () => {
    let T: TestDb;
    let db: Db;
    let store: string;
    beforeAll(async () => {
      T = await tier.make();
      db = T.database.db;
      store = path.join(T.dataDir, 'store');
    }, 60_000);
    afterAll(async () => {
      await T?.cleanup();
    }, 30_000);

    test('pg-boss dispatch runs a job to success with its knots as versions 1..n', async () => {
      const q = await openQueue(T.database);
      const runner = fakeRunner({ steps: 6, every: 2 });
      const w = new JobWorker({ db, config: cfg(), store: new Store(store), runner, owner: 'w-boss', log: () => {} });
      try {
        await q.work(w, 1);
        const { job, tenantId, base } = await newJob(db);
        await q.enqueue(job.id);
        const done = await waitFor(async () => {
          const j = await getJobById(db, job.id);
          return j && j.status === 'succeeded' ? j : null;
        });
        expect(done.knots.map((k) => k.version)).toEqual([1, 2, 3]);
        const out = (await findModel(db, tenantId, 'out'))!;
        const vs = await listVersions(db, out.id);
        expect(vs.map((v) => [v.version, v.parentModelId, v.parentVersion, v.kind])).toEqual([
          [1, base.id, 0, 'knot'],
          [2, out.id, 1, 'knot'],
          [3, out.id, 2, 'knot'],
        ]);
        const evs = await listEvents(db, job.id, 0);
        expect(evs.at(-1)!.type).toBe('done');
        expect(evs.filter((e) => e.type === 'knot').length).toBe(3);
      } finally {
        await w.stop();
        await q.stop();
      }
    }, 30_000);

    test('without a runner a job fails with "trainer not available"', async () => {
      const w = new JobWorker({ db, config: cfg(), store: new Store(store), log: () => {} });
      const { job } = await newJob(db);
      expect(await w.process(job.id)).toBe(true);
      const j = (await getJobById(db, job.id))!;
      expect(j.status).toBe('failed');
      expect(j.error?.type).toBe('trainer_unavailable');
      expect(j.error?.detail).toContain('trainer not available');
    });

    test('a dead worker\'s job is reclaimed after its lease expires and resumes from the last knot', async () => {
      const { job, tenantId } = await newJob(db);
      // worker A ran 4 of 6 steps, tied knots at 2 and 4, then "died" (no more heartbeats)
      let resumedFrom: unknown = 'unset';
      const a = await claim(db, job.id, 'dead', 400);
      expect(a).not.toBeNull();
      // simulate A's progress through the fenced transitions
      const { recordKnot } = await import('../src/jobs/transitions.ts');
      const out = (await findModel(db, tenantId, 'out'))!;
      for (const step of [2, 4]) {
        await recordKnot(db, a!.lease, { link: step / 2, step, rank: 8, flops: step }, {
          modelId: out.id, parentModelId: step === 2 ? job.baseModelId : out.id, parentVersion: step === 2 ? 0 : 1, kind: 'knot', jobId: job.id,
          link: step / 2, rank: 8, sha256: crypto.createHash('sha256').update(`7-${step}`).digest('hex'), bytes: 3, path: `/tmp/${step}`, adapterPath: null, metrics: null,
        });
      }
      // B must not take it while the lease is live
      const runnerB = fakeRunner({ steps: 6, every: 2, onRun: (_s, ctx) => (resumedFrom = ctx.resumeFrom) });
      const b = new JobWorker({ db, config: cfg(), store: new Store(store), runner: runnerB, owner: 'B', log: () => {} });
      expect(await b.reclaimOnce()).toBe(0);
      await Bun.sleep(500);
      expect(await b.reclaimOnce()).toBe(1);
      const j = await waitFor(async () => {
        const x = await getJobById(db, job.id);
        return x && x.status === 'succeeded' ? x : null;
      });
      expect(runnerB.runs).toBe(1);
      expect(resumedFrom).toMatchObject({ link: 2, step: 4, version: 2 });
      expect(j.knots.map((k) => [k.step, k.version])).toEqual([[2, 1], [4, 2], [6, 3]]);
      expect(j.attempts).toBe(2);
      expect(j.leaseToken).toBe(2);
      await b.stop();
    }, 30_000);

    test('a stale worker keeps running but cannot write: its knot is refused and its signal aborted', async () => {
      const { job } = await newJob(db);
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      let signal: AbortSignal | null = null;
      const runnerA = fakeRunner({ steps: 2, every: 2, gate, onRun: (_s, ctx) => (signal = ctx.signal) });
      const a = new JobWorker({ db, config: cfg({ leaseMs: 1000, heartbeatMs: 100 }), store: new Store(store), runner: runnerA, owner: 'A', log: () => {} });
      const pa = a.process(job.id);
      await waitFor(async () => signal);
      // steal the lease (as if A's heartbeats had stopped reaching the database)
      await db.execute(sql`update jobs set lease_expires_at = now() - interval '1 second' where id = ${job.id}`);
      const stolen = (await claim(db, job.id, 'C', 60_000))!;
      expect(stolen.lease.token).toBe(2);
      await waitFor(async () => signal!.aborted);
      release();
      await pa;
      const j = (await getJobById(db, job.id))!;
      expect(j.status).toBe('running');
      expect(j.leaseOwner).toBe('C');
      expect(j.knots).toEqual([]);
      expect(await listSteps(db, job.id, 0, 10)).toEqual([]);
    }, 30_000);

    test('a resumed run\'s knot decisions that the first attempt recorded are not recorded again', async () => {
      const { job } = await newJob(db);
      const last = { decision: 'last_link', link: 1, step: 2, steps_in_link: 0, ema_loss: null, rate: null, initial_rate: null, threshold: 0.5 };
      // Attempt 1 decided "last_link" at the start of link 1, then died.
      const a = (await claim(db, job.id, 'dead', 400))!;
      const { recordKnotDecision } = await import('../src/jobs/transitions.ts');
      await recordKnotDecision(db, a.lease, last);
      await Bun.sleep(500);
      // Attempt 2 re-enters link 1 and takes the same decision, then a new one.
      const runner: JobRunner = {
        async run(_spec, ctx) {
          await ctx.onKnotDecision!(last);
          await ctx.onKnotDecision!({ ...last, link: 2, step: 4 });
          await ctx.onKnotDecision!({ ...last, link: 2, step: 4 });
        },
      };
      const b = new JobWorker({ db, config: cfg(), store: new Store(store), runner, owner: 'B2', log: () => {} });
      expect(await b.reclaimOnce()).toBe(1);
      await waitFor(async () => ((await getJobById(db, job.id))!.status === 'succeeded' ? true : null));
      await b.stop();
      const ds = (await listEvents(db, job.id, 0)).filter((e) => e.type === 'knot_decision').map((e) => [e.data.link, e.data.step]);
      expect(ds).toEqual([[1, 2], [2, 4]]);
    }, 30_000);

    test('cancel is honoured between steps; knots already tied stay', async () => {
      const { job, tenantId } = await newJob(db);
      const runner = fakeRunner({ steps: 1000, every: 2, stepDelayMs: 5 });
      const w = new JobWorker({ db, config: cfg(), store: new Store(store), runner, owner: 'W', log: () => {} });
      const p = w.process(job.id);
      await waitFor(async () => ((await getJobById(db, job.id))!.knots.length >= 1 ? true : null));
      const { requestCancel } = await import('../src/jobs/transitions.ts');
      expect(await requestCancel(db, tenantId, job.id)).toBe('running');
      await p;
      const j = (await getJobById(db, job.id))!;
      expect(j.status).toBe('cancelled');
      expect(j.knots.length).toBeGreaterThanOrEqual(1);
      expect(j.progress!.step).toBeLessThan(1000);
    }, 30_000);
  });
}

describe('graceful stop', () => {
  test('a job running when its worker stops goes back to the queue (not cancelled), keeping its knots', async () => {
    const T = await tiers[0]!.make();
    try {
      const db = T.database.db;
      const { job } = await newJob(db);
      // A runner that, like the COLA trainer, treats an aborted signal as "stop now".
      const runner: JobRunner = {
        async run(spec, ctx) {
          for (let step = 1; step <= 1000; step++) {
            if (ctx.isCancelled() || ctx.signal.aborted) return { cancelled: true };
            await ctx.onStep({ step, total_steps: 1000, link: 1, links: 1, epoch: 1, loss: 1 });
            await Bun.sleep(5);
          }
        },
      };
      const w = new JobWorker({ db, config: cfg(), store: new Store(path.join(T.dataDir, 'store')), runner, log: () => {} });
      const p = w.process(job.id);
      await waitFor(async () => ((await getJobById(db, job.id))!.progress?.step ?? 0) >= 3);
      await w.stop();
      await p;
      const j = (await getJobById(db, job.id))!;
      expect(j.status).toBe('queued');
      expect(j.leaseOwner).toBeNull();
      const evs = await listEvents(db, job.id, 0);
      expect(evs.at(-1)).toMatchObject({ type: 'status', data: { status: 'queued', reason: 'worker shutting down' } });
    } finally {
      await T.cleanup();
    }
  }, 60_000);
});
