// Repositories and job transitions (fencing, lease expiry, cancel, events) on PGlite and on the
// Postgres server (DATABASE_TEST_URL; that tier is skipped when unset).
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { sql } from 'drizzle-orm';
import { tiers, type TestDb } from './db.fixtures.ts';
import { createKey, createTenant, findTenantByKey, revokeKey } from '../src/db/repos/tenants.ts';
import { createModel, ensureTenantModel, findModel, getVersion, insertVersion, listModels } from '../src/db/repos/models.ts';
import { appendEvent, getJobById, insertJob, listEvents, listSteps } from '../src/db/repos/jobs.ts';
import { claim, fail, heartbeat, recordKnot, recordStep, requestCancel, StaleLeaseError, succeed } from '../src/jobs/transitions.ts';
import { JOB_STATES } from '../src/domain/job-states.ts';
import type { Db } from '../src/db/index.ts';

async function seed(db: Db, tag: string) {
  const t = await createTenant(db, { name: `t-${tag}-${Math.random().toString(36).slice(2, 8)}` });
  let base = await findModel(db, t.tenant.id, 'base-m');
  if (!base) {
    base = await createModel(db, { tenantId: null, name: `base-${Math.random().toString(36).slice(2, 8)}`, architecture: 'llama' });
    await insertVersion(db, { modelId: base.id, version: 0, parentModelId: null, parentVersion: null, kind: 'base', jobId: null, link: null, rank: null, sha256: 'a'.repeat(64), bytes: 10, path: 'x.bin', adapterPath: null, metrics: null });
  }
  const out = await ensureTenantModel(db, { tenantId: t.tenant.id, name: 'out', architecture: 'llama' });
  const job = await insertJob(db, { tenantId: t.tenant.id, request: { seed: 0 }, baseModelId: base.id, baseModelName: base.name, baseVersion: 0, outputModel: 'out' });
  return { t, base, out, job };
}

const knotVersion = (modelId: string, baseId: string, jobId: string) => ({
  modelId,
  parentModelId: baseId,
  parentVersion: 0,
  kind: 'knot' as const,
  jobId,
  link: 1,
  rank: 8,
  sha256: 'b'.repeat(64),
  bytes: 100,
  path: '/tmp/w.bin',
  adapterPath: null,
  metrics: null,
});

for (const tier of tiers) {
  describe(`repositories on ${tier.name}`, () => {
    let T: TestDb;
    let db: Db;
    beforeAll(async () => {
      T = await tier.make();
      db = T.database.db;
    }, 60_000);
    afterAll(async () => {
      await T?.cleanup();
    }, 30_000);

    test('the job_status enum is the frozen JOB_STATES constant', async () => {
      const r: any = await db.execute(sql`select unnest(enum_range(null::job_status))::text as s`);
      expect(r.rows.map((x: any) => x.s)).toEqual([...JOB_STATES]);
      expect(Object.isFrozen(JOB_STATES)).toBe(true);
    });

    test('api keys are stored hashed, found by key, and revoked', async () => {
      const { tenant, apiKey, keyId } = await createTenant(db, { name: `k-${Date.now()}` });
      const r: any = await db.execute(sql`select hash, prefix from api_keys where id = ${keyId}`);
      expect(r.rows[0].hash).not.toContain(apiKey);
      expect(r.rows[0].hash).toHaveLength(64);
      expect((await findTenantByKey(db, apiKey))?.id).toBe(tenant.id);
      expect(await findTenantByKey(db, apiKey.slice(0, -1) + (apiKey.endsWith('A') ? 'B' : 'A'))).toBeNull();
      const k2 = (await createKey(db, tenant.id))!;
      expect(await revokeKey(db, keyId)).toBe(true);
      expect(await revokeKey(db, keyId)).toBe(false);
      expect(await findTenantByKey(db, apiKey)).toBeNull();
      expect((await findTenantByKey(db, k2.apiKey))?.id).toBe(tenant.id);
      expect(await createKey(db, 'ten_nope')).toBeNull();
    });

    test('models: shared + own are visible, another tenant\'s are not; names unique per owner', async () => {
      const a = await createTenant(db, { name: `a-${Date.now()}` });
      const b = await createTenant(db, { name: `b-${Date.now()}` });
      await createModel(db, { tenantId: a.tenant.id, name: 'mine', architecture: 'llama' });
      await createModel(db, { tenantId: b.tenant.id, name: 'mine', architecture: 'gpt2' });
      expect(createModel(db, { tenantId: a.tenant.id, name: 'mine', architecture: 'llama' })).rejects.toThrow();
      expect((await findModel(db, a.tenant.id, 'mine'))?.architecture).toBe('llama');
      expect((await findModel(db, b.tenant.id, 'mine'))?.architecture).toBe('gpt2');
      const names = (await listModels(db, a.tenant.id)).filter((m) => m.tenantId).map((m) => m.tenantId);
      expect(names.every((id) => id === a.tenant.id)).toBe(true);
    });

    test('fencing: a stale lease token can write neither steps nor knots', async () => {
      const { out, base, job } = await seed(db, 'fence');
      const w1 = (await claim(db, job.id, 'w1', 60_000))!;
      expect(w1.lease.token).toBe(1);
      // a live lease cannot be claimed by another worker
      expect(await claim(db, job.id, 'w2', 60_000)).toBeNull();
      await recordStep(db, w1.lease, { progress: { step: 1, total_steps: 10, link: 1, links: 2, epoch: 1 }, loss: 2.5 });
      // force the lease to expire; w2 reclaims with token 2
      await db.execute(sql`update jobs set lease_expires_at = now() - interval '1 second' where id = ${job.id}`);
      const w2 = (await claim(db, job.id, 'w2', 60_000))!;
      expect(w2.lease.token).toBe(2);
      expect(w2.job.attempts).toBe(2);
      await expect(recordKnot(db, w1.lease, { link: 1, step: 5, rank: 8, flops: 1 }, knotVersion(out.id, base.id, job.id))).rejects.toBeInstanceOf(StaleLeaseError);
      await expect(recordStep(db, w1.lease, { progress: { step: 2, total_steps: 10, link: 1, links: 2, epoch: 1 } })).rejects.toBeInstanceOf(StaleLeaseError);
      await expect(heartbeat(db, w1.lease, 1000)).rejects.toBeInstanceOf(StaleLeaseError);
      await expect(succeed(db, w1.lease)).rejects.toBeInstanceOf(StaleLeaseError);
      expect(await getVersion(db, out.id, 1)).toBeNull();
      const v = await recordKnot(db, w2.lease, { link: 1, step: 5, rank: 8, flops: 1 }, knotVersion(out.id, base.id, job.id));
      expect(v.version).toBe(1);
      const j = (await getJobById(db, job.id))!;
      expect(j.knots).toEqual([{ link: 1, step: 5, rank: 8, flops: 1, version: 1 }]);
      expect(await listSteps(db, job.id, 0, 10)).toEqual([{ step: 1, link: 1, loss: 2.5, lr: null, epoch: 1 }]);
      await succeed(db, w2.lease);
      expect((await getJobById(db, job.id))!.status).toBe('succeeded');
      // a finished job cannot be claimed again
      expect(await claim(db, job.id, 'w3', 60_000)).toBeNull();
    });

    test('the first knot creates the output model in its transaction; one of another architecture is refused, nothing written', async () => {
      const { t, base, job } = await seed(db, 'lazy');
      const w = (await claim(db, job.id, 'w', 60_000))!;
      const want = { tenantId: t.tenant.id, name: 'made-at-knot', architecture: 'llama', params: 7, config: {} };
      expect(await findModel(db, t.tenant.id, 'made-at-knot')).toBeNull();
      const v = await recordKnot(db, w.lease, { link: 0, step: 1, rank: 8, flops: 1 }, { ...knotVersion(base.id, base.id, job.id), modelId: want });
      const m = (await findModel(db, t.tenant.id, 'made-at-knot'))!;
      expect([m.tenantId, m.architecture, m.params, v.modelId, v.version]).toEqual([t.tenant.id, 'llama', 7, m.id, 1]);
      const other = await ensureTenantModel(db, { tenantId: t.tenant.id, name: 'gpt2-out', architecture: 'gpt2' });
      await expect(recordKnot(db, w.lease, { link: 1, step: 2, rank: 8, flops: 1 }, { ...knotVersion(base.id, base.id, job.id), modelId: { ...want, name: 'gpt2-out' } })).rejects.toThrow(/architecture gpt2, not llama/);
      expect(await getVersion(db, other.id, 1)).toBeNull();
      expect((await getJobById(db, job.id))!.knots.map((k) => k.step)).toEqual([1]);
    });

    test('cancel: queued → cancelled at once; running → flag seen by the heartbeat; finished → conflict', async () => {
      const q = await seed(db, 'cq');
      expect(await requestCancel(db, q.t.tenant.id, q.job.id)).toBe('cancelled');
      expect(await claim(db, q.job.id, 'w', 1000)).toBeNull();
      const r = await seed(db, 'cr');
      const c = (await claim(db, r.job.id, 'w', 60_000))!;
      expect((await heartbeat(db, c.lease, 60_000)).cancelRequested).toBe(false);
      // another tenant cannot cancel it
      expect(await requestCancel(db, q.t.tenant.id, r.job.id)).toBeNull();
      expect(await requestCancel(db, r.t.tenant.id, r.job.id)).toBe('running');
      expect((await heartbeat(db, c.lease, 60_000)).cancelRequested).toBe(true);
      await fail(db, c.lease, { type: 'x', detail: 'y' });
      expect(await requestCancel(db, r.t.tenant.id, r.job.id)).toBeNull();
    });

    test('events get consecutive seqs, also when written concurrently', async () => {
      const { job } = await seed(db, 'ev');
      await Promise.all(Array.from({ length: 20 }, (_, i) => appendEvent(db, job.id, 'step', { i })));
      const evs = await listEvents(db, job.id, 0);
      expect(evs.map((e) => e.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
      expect((await listEvents(db, job.id, 15)).map((e) => e.seq)).toEqual([16, 17, 18, 19, 20]);
    });
  });
}
