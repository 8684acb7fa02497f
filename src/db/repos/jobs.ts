import { and, asc, desc, eq, gt, inArray, sql } from 'drizzle-orm';
import type { Db } from '../index.ts';
import { jobEvents, jobs, type Job, type JobEvent } from '../schema.ts';
import { newId } from '../ids.ts';
import { ACTIVE_STATES } from '../../jobs/states.ts';

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
