import { and, asc, desc, eq, gt, inArray, sql } from 'drizzle-orm';
import type { Db } from '../index.ts';
import { jobEvents, jobs, jobSteps, type Job, type JobEvent } from '../schema.ts';
import { newId } from '../ids.ts';
import { ACTIVE_STATES } from '../../domain/job-states.ts';

export async function insertJob(
  db: Db,
  input: {
    tenantId: string;
    request: Record<string, unknown>;
    baseModelId: string;
    baseModelName: string;
    baseVersion: number;
    outputModel?: string;
    id?: string;
  },
): Promise<Job> {
  const id = input.id ?? newId('job');
  const [j] = await db
    .insert(jobs)
    .values({
      id,
      tenantId: input.tenantId,
      request: input.request,
      baseModelId: input.baseModelId,
      baseModelName: input.baseModelName,
      baseVersion: input.baseVersion,
      outputModel: input.outputModel ?? `${input.baseModelName}-${id}`,
    })
    .returning();
  return j!;
}

/** A tenant's job, or null (also when another tenant owns it). */
export async function getJob(db: Db, tenantId: string, id: string): Promise<Job | null> {
  const [j] = await db.select().from(jobs).where(and(eq(jobs.id, id), eq(jobs.tenantId, tenantId)));
  return j ?? null;
}

/** Any job by id (workers only). */
export async function getJobById(db: Db, id: string): Promise<Job | null> {
  const [j] = await db.select().from(jobs).where(eq(jobs.id, id));
  return j ?? null;
}

export async function listJobs(db: Db, tenantId: string, limit = 100): Promise<Job[]> {
  return db.select().from(jobs).where(eq(jobs.tenantId, tenantId)).orderBy(desc(jobs.createdAt)).limit(limit);
}

export async function countJobsOfTenant(db: Db, tenantId: string): Promise<number> {
  const [r] = await db.select({ n: sql<number>`count(*)::int` }).from(jobs).where(eq(jobs.tenantId, tenantId));
  return Number(r?.n ?? 0);
}

export async function countActiveJobs(db: Db, tenantId: string): Promise<number> {
  const [r] = await db
    .select({ n: sql<number>`count(*)::int` })
    .from(jobs)
    .where(and(eq(jobs.tenantId, tenantId), inArray(jobs.status, [...ACTIVE_STATES])));
  return Number(r?.n ?? 0);
}

export async function countJobsByStatus(db: Db): Promise<Record<string, number>> {
  const rows = await db.select({ s: jobs.status, n: sql<number>`count(*)::int` }).from(jobs).groupBy(jobs.status);
  return Object.fromEntries(rows.map((r) => [r.s, Number(r.n)]));
}

/** Jobs whose worker's lease ran out (candidates for reclaim). */
export async function expiredRunningJobIds(db: Db, limit = 10): Promise<string[]> {
  const rows = await db
    .select({ id: jobs.id })
    .from(jobs)
    .where(and(eq(jobs.status, 'running'), sql`${jobs.leaseExpiresAt} < now()`))
    .orderBy(asc(jobs.leaseExpiresAt))
    .limit(limit);
  return rows.map((r) => r.id);
}

/** Queued jobs older than `ageMs` (a safety net if a queue message was lost). */
export async function staleQueuedJobIds(db: Db, ageMs: number, limit = 10): Promise<string[]> {
  const rows = await db
    .select({ id: jobs.id })
    .from(jobs)
    .where(and(eq(jobs.status, 'queued'), sql`${jobs.createdAt} < now() - (${ageMs} || ' milliseconds')::interval`))
    .orderBy(asc(jobs.createdAt))
    .limit(limit);
  return rows.map((r) => r.id);
}

/**
 * Append an event with the next seq of its job (the seq is taken from jobs.event_seq in one
 * UPDATE, so concurrent writers never share a seq). Returns the seq.
 */
export async function appendEvent(db: Db, jobId: string, type: string, data: Record<string, unknown>): Promise<number> {
  return db.transaction(async (tx) => {
    const [r] = await tx
      .update(jobs)
      .set({ eventSeq: sql`${jobs.eventSeq} + 1` })
      .where(eq(jobs.id, jobId))
      .returning({ seq: jobs.eventSeq });
    if (!r) throw new Error(`no job ${jobId}`);
    await tx.insert(jobEvents).values({ jobId, seq: r.seq, type, data });
    return r.seq;
  });
}

export async function listEvents(db: Db, jobId: string, afterSeq: number, limit = 500): Promise<JobEvent[]> {
  return db
    .select()
    .from(jobEvents)
    .where(and(eq(jobEvents.jobId, jobId), gt(jobEvents.seq, afterSeq)))
    .orderBy(asc(jobEvents.seq))
    .limit(limit);
}

export type LossPoint = { step: number; link: number; loss: number | null };

const lossOf = (x: unknown): number | null => {
  const n = Number(x);
  return Number.isFinite(n) ? n : null; // NaN/Infinity are stored as such; JSON has no spelling for them
};

/** One page of a job's loss curve, steps after `after` in order (GET /finetune/{id}/losses). */
export async function listSteps(db: Db, jobId: string, after: number, limit: number): Promise<(LossPoint & { lr: number | null; epoch: number | null })[]> {
  const rows = await db
    .select()
    .from(jobSteps)
    .where(and(eq(jobSteps.jobId, jobId), gt(jobSteps.step, after)))
    .orderBy(asc(jobSteps.step))
    .limit(limit);
  return rows.map((r) => ({ step: r.step, link: r.link, loss: lossOf(r.loss), lr: r.lr, epoch: r.epoch }));
}

/**
 * The loss curves of several jobs, each thinned to at most `maxPoints` entries: every k-th step
 * (k = ceil((n - 1) / (maxPoints - 1))) from the first, plus the last. One query for the whole page.
 */
export async function sampledLosses(db: Db, jobIds: string[], maxPoints: number): Promise<Map<string, { points: LossPoint[]; count: number }>> {
  const out = new Map<string, { points: LossPoint[]; count: number }>();
  if (jobIds.length === 0) return out;
  const m = Math.max(2, Math.floor(maxPoints));
  const res = await db.execute<{ job_id: string; step: number; link: number; loss: number | string; n: number | string }>(sql`
    select job_id, step, link, loss, n from (
      select job_id, step, link, loss,
             row_number() over (partition by job_id order by step) as rn,
             count(*) over (partition by job_id) as n
      from ${jobSteps} where ${inArray(jobSteps.jobId, jobIds)}
    ) s
    where (rn - 1) % greatest(ceil((n - 1)::float8 / ${m - 1}), 1)::int = 0 or rn = n
    order by job_id, step`);
  const rows = (Array.isArray(res) ? res : (res as { rows: unknown[] }).rows) as { job_id: string; step: number; link: number; loss: number | string; n: number | string }[];
  for (const r of rows) {
    let e = out.get(r.job_id);
    if (!e) out.set(r.job_id, (e = { points: [], count: Number(r.n) }));
    e.points.push({ step: Number(r.step), link: Number(r.link), loss: lossOf(r.loss) });
  }
  return out;
}
