// The loss curve of a job (job_steps) on PGlite and on the Postgres server: one entry per step however
// often the job is resumed, a bounded job view (GET /finetune/{id}), the full curve paged
// (GET /finetune/{id}/losses), and the migration that moves an old jobs.losses array into job_steps.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { sql } from 'drizzle-orm';
import { tempDir, tiers, type TestDb } from './db.fixtures.ts';
import { loadConfig } from '../src/config.ts';
import { createApp } from '../src/app.ts';
import { createTenant } from '../src/db/repos/tenants.ts';
import { createModel, insertVersion } from '../src/db/repos/models.ts';
import { insertJob } from '../src/db/repos/jobs.ts';
import { claim, recordStep, succeed } from '../src/jobs/transitions.ts';
import { MIGRATIONS_DIR } from '../src/db/index.ts';
import type { Db } from '../src/db/index.ts';

async function jobOf(db: Db, tag: string) {
  const t = await createTenant(db, { name: `steps-${tag}-${crypto.randomUUID().slice(0, 8)}` });
  const base = await createModel(db, { tenantId: null, name: `b-${crypto.randomUUID().slice(0, 8)}`, architecture: 'llama' });
  await insertVersion(db, { modelId: base.id, version: 0, parentModelId: null, parentVersion: null, kind: 'base', jobId: null, link: null, rank: null, sha256: 'a'.repeat(64), bytes: 1, path: '/x', adapterPath: null, metrics: null });
  const job = await insertJob(db, { tenantId: t.tenant.id, request: {}, baseModelId: base.id, baseModelName: base.name, baseVersion: 0, outputModel: 'out' });
  return { key: t.apiKey, job };
}

const progress = (step: number, total: number) => ({ step, total_steps: total, link: step <= total / 2 ? 0 : 1, links: 2, epoch: 1 });

for (const tier of tiers) {
  describe(`job loss curve on ${tier.name}`, () => {
    let T: TestDb;
    let db: Db;
    let app: ReturnType<typeof createApp>;
    beforeAll(async () => {
      T = await tier.make();
      db = T.database.db;
      app = createApp({ config: loadConfig({ COLA_DATA_DIR: T.dataDir, COLA_QUOTA_RPM: '100000' }), db: T.database });
    }, 60_000);
    afterAll(async () => {
      await T?.cleanup();
    }, 30_000);

    const get = async (key: string, p: string) => {
      const r = await app.request(p, { headers: { authorization: `Bearer ${key}` } });
      expect(r.status).toBe(200);
      return (await r.json()) as any;
    };

    test('a resumed job has exactly one entry per step (the resumed run overwrites)', async () => {
      const { key, job } = await jobOf(db, 'resume');
      const w1 = (await claim(db, job.id, 'w1', 60_000))!;
      for (let s = 1; s <= 4; s++) await recordStep(db, w1.lease, { progress: progress(s, 6), loss: 10 + s, lr: 0.1 });
      // w1 dies after step 4; its last knot was at step 2, so w2 redoes steps 3 and 4.
      await db.execute(sql`update jobs set lease_expires_at = now() - interval '1 second' where id = ${job.id}`);
      const w2 = (await claim(db, job.id, 'w2', 60_000))!;
      for (let s = 3; s <= 6; s++) await recordStep(db, w2.lease, { progress: progress(s, 6), loss: 20 + s, lr: 0.2 });
      await succeed(db, w2.lease);
      const j = await get(key, `/finetune/${job.id}`);
      expect(j.losses.map((x: any) => x.step)).toEqual([1, 2, 3, 4, 5, 6]);
      expect(j.losses.map((x: any) => x.loss)).toEqual([11, 12, 23, 24, 25, 26]);
      expect(j.losses_count).toBe(6);
      const page = await get(key, `/finetune/${job.id}/losses`);
      expect(page.data.map((x: any) => x.step)).toEqual([1, 2, 3, 4, 5, 6]);
      expect(page.data[2]).toEqual({ step: 3, link: 0, loss: 23, lr: 0.2, epoch: 1 });
      expect(page.next_after).toBeNull();
    });

    test('the job view holds at most 500 loss points (first, every k-th, last); the full curve pages by step', async () => {
      const { key, job } = await jobOf(db, 'long');
      const w = (await claim(db, job.id, 'w', 60_000))!;
      const n = 2345;
      // Many steps, written directly (one transaction per step would take minutes on PGlite).
      await db.execute(sql`insert into job_steps (job_id, step, link, loss, lr, epoch)
        select ${job.id}, s, 0, 1.0 / s, 0.001, 1 from generate_series(1, ${n}) s`);
      await recordStep(db, w.lease, { progress: progress(n + 1, n + 1), loss: 0.5 });
      const j = await get(key, `/finetune/${job.id}`);
      expect(j.losses_count).toBe(n + 1);
      expect(j.losses.length).toBeLessThanOrEqual(500);
      expect(j.losses.length).toBeGreaterThan(400);
      const steps = j.losses.map((x: any) => x.step);
      expect(steps[0]).toBe(1);
      expect(steps.at(-1)).toBe(n + 1);
      expect(steps).toEqual([...steps].sort((a: number, b: number) => a - b));
      const list = await get(key, '/finetune');
      expect(list.data.find((x: any) => x.id === job.id).losses.length).toBeLessThanOrEqual(50);
      // paging: every step exactly once, in order
      const seen: number[] = [];
      let after = 0;
      for (;;) {
        const p = await get(key, `/finetune/${job.id}/losses?after=${after}&limit=1000`);
        seen.push(...p.data.map((x: any) => x.step));
        if (p.next_after === null) break;
        after = p.next_after;
      }
      expect(seen).toEqual(Array.from({ length: n + 1 }, (_, i) => i + 1));
      const bad = await app.request(`/finetune/${job.id}/losses?limit=100000`, { headers: { authorization: `Bearer ${key}` } });
      expect(bad.status).toBe(400);
      // another tenant's job is 404
      const other = await createTenant(db, { name: `steps-other-${crypto.randomUUID().slice(0, 8)}` });
      expect((await app.request(`/finetune/${job.id}/losses`, { headers: { authorization: `Bearer ${other.apiKey}` } })).status).toBe(404);
    });

    test('deleted version numbers are never handed out again; concurrent inserts get distinct numbers', async () => {
      const m = await createModel(db, { tenantId: null, name: `v-${crypto.randomUUID().slice(0, 8)}`, architecture: 'llama' });
      const mk = () => insertVersion(db, { modelId: m.id, parentModelId: null, parentVersion: null, kind: 'knot', jobId: null, link: null, rank: null, sha256: 'a'.repeat(64), bytes: 1, path: '/x', adapterPath: null, metrics: null });
      expect((await mk()).version).toBe(1);
      expect((await mk()).version).toBe(2);
      await db.execute(sql`delete from model_versions where model_id = ${m.id} and version = 2`);
      expect((await mk()).version).toBe(3);
      const vs = await Promise.all(Array.from({ length: 5 }, mk));
      expect(new Set(vs.map((v) => v.version)).size).toBe(5);
    });
  });
}

describe('migration 0001', () => {
  test('moves jobs.losses into job_steps, one row per step, the later entry of a duplicated step winning', async () => {
    const dir = tempDir('cola-mig-');
    const { PGlite } = await import('@electric-sql/pglite');
    const client = new PGlite(path.join(dir, 'pg'));
    try {
      const run = async (file: string) => {
        for (const stmt of fs.readFileSync(path.join(MIGRATIONS_DIR, file), 'utf8').split('--> statement-breakpoint')) if (stmt.trim()) await client.exec(stmt);
      };
      await run('0000_init.sql');
      await client.exec(`insert into tenants (id, name) values ('t', 't');
        insert into jobs (id, tenant_id, request, base_model_id, base_model_name, base_version, output_model, losses)
        values ('j', 't', '{}', 'm', 'm', 0, 'o', '[{"step":1,"link":0,"loss":3},{"step":2,"link":0,"loss":2},{"step":2,"link":0,"loss":1.5},{"step":3,"link":1,"loss":1}]');
        insert into models (id, tenant_id, name, architecture) values ('m1', 't', 'a', 'llama');
        insert into model_versions (model_id, version, kind, sha256, bytes, path) values ('m1', 0, 'base', 'x', 1, '/p'), ('m1', 4, 'knot', 'y', 1, '/q');`);
      await run(fs.readdirSync(MIGRATIONS_DIR).find((f) => f.startsWith('0001_'))!);
      const steps = await client.query<{ step: number; loss: number }>('select step, loss from job_steps order by step');
      expect(steps.rows).toEqual([{ step: 1, loss: 3 }, { step: 2, loss: 1.5 }, { step: 3, loss: 1 }]);
      const m = await client.query<{ max_version: number }>('select max_version from models');
      expect(m.rows[0]!.max_version).toBe(4);
    } finally {
      await client.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
