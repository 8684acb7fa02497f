// Job state machine: every state change is one small function, a single conditional UPDATE.
// Worker writes are fenced: they carry the lease token the worker got when it claimed the job
// and match `WHERE id = $1 AND lease_token = $2 AND status = 'running'`; a worker whose lease
// was taken over (token incremented by the new claim) writes nothing and gets StaleLeaseError.
//
//   (submit) ──▶ queued ──claim──▶ running ──succeed──▶ succeeded
//     │                 │ ├────fail─────▶ failed
//     │                 │ └──finishCancel▶ cancelled
//     └──cancelQueued──────────────────▶ cancelled
//   running (lease expired) ──claim (token+1)──▶ running      (reclaim by another worker)
import { and, eq, or, sql } from 'drizzle-orm';
import type { Db } from '../db/index.ts';
import { jobEvents, jobs, jobSteps, type Job, type JobKnot, type JobProgress, type ModelVersion } from '../db/schema.ts';
import { appendEvent, insertJob } from '../db/repos/jobs.ts';
import { ensureTenantModel, guardStorePaths, guardTensorObjects, insertVersion, type NewVersion } from '../db/repos/models.ts';
import type { JobStatus } from '../domain/job-states.ts';
import { UserInputError } from '../services.ts';

export class StaleLeaseError extends Error {
  constructor(jobId: string, token: number) {
    super(`lease token ${token} of job ${jobId} is no longer current`);
    this.name = 'StaleLeaseError';
  }
}

export interface Lease {
  jobId: string;
  owner: string;
  token: number;
}

const fenced = (l: Lease) => and(eq(jobs.id, l.jobId), eq(jobs.leaseToken, l.token), eq(jobs.status, 'running'));
const leaseUntil = (ms: number) => sql`now() + (${ms} || ' milliseconds')::interval`;

/**
 * Claim a queued job, or a running one whose lease expired (its worker died). Increments the
 * fencing token and the attempt count. Null when the job is not claimable (someone holds a live
 * lease, or it is finished).
 */
export async function claim(db: Db, jobId: string, owner: string, leaseMs: number): Promise<{ lease: Lease; job: Job } | null> {
  const rows = await db
    .update(jobs)
    .set({
      status: 'running',
      leaseOwner: owner,
      leaseToken: sql`${jobs.leaseToken} + 1`,
      leaseExpiresAt: leaseUntil(leaseMs),
      heartbeatAt: sql`now()`,
      attempts: sql`${jobs.attempts} + 1`,
      startedAt: sql`coalesce(${jobs.startedAt}, now())`,
      updatedAt: sql`now()`,
    })
    .where(
      and(
        eq(jobs.id, jobId),
        or(eq(jobs.status, 'queued'), and(eq(jobs.status, 'running'), sql`${jobs.leaseExpiresAt} < now()`)),
      ),
    )
    .returning();
  const job = rows[0];
  if (!job) return null;
  await appendEvent(db, jobId, 'status', { status: 'running', attempt: job.attempts });
  return { lease: { jobId, owner, token: job.leaseToken }, job };
}

/** Extend the lease. Returns whether a cancel was requested; throws StaleLeaseError when fenced out. */
export async function heartbeat(db: Db, l: Lease, leaseMs: number): Promise<{ cancelRequested: boolean; mergeRequests: number }> {
  const [r] = await db
    .update(jobs)
    .set({ leaseExpiresAt: leaseUntil(leaseMs), heartbeatAt: sql`now()` })
    .where(fenced(l))
    .returning({ cancel: jobs.cancelRequested, merges: jobs.mergeRequests });
  if (!r) throw new StaleLeaseError(l.jobId, l.token);
  return { cancelRequested: r.cancel, mergeRequests: r.merges };
}

/** Give a claimed job back to the queue (graceful shutdown): status queued, lease cleared. Fenced. */
export async function release(db: Db, l: Lease, reason = 'worker shutting down'): Promise<void> {
  await db.transaction(async (tx) => {
    const [r] = await tx
      .update(jobs)
      .set({ status: 'queued', leaseOwner: null, leaseExpiresAt: null, attempts: sql`greatest(${jobs.attempts} - 1, 0)`, updatedAt: sql`now()` })
      .where(fenced(l))
      .returning({ id: jobs.id });
    if (!r) throw new StaleLeaseError(l.jobId, l.token);
    await appendEvent(tx, l.jobId, 'status', { status: 'queued', reason });
  });
}

/**
 * Record a training step (progress, its loss row, its `step` event). Fenced. The loss goes into
 * job_steps keyed by (job, step): a step recorded again after a resume replaces its row, so the
 * curve holds one entry per step however often the job was resumed.
 */
export async function recordStep(
  db: Db,
  l: Lease,
  s: { progress: JobProgress; loss?: number; lr?: number; tokens?: number },
): Promise<{ cancelRequested: boolean; mergeRequests: number }> {
  return db.transaction(async (tx) => {
    const [r] = await tx
      .update(jobs)
      .set({ progress: s.progress, updatedAt: sql`now()` })
      .where(fenced(l))
      .returning({ cancel: jobs.cancelRequested, merges: jobs.mergeRequests });
    if (!r) throw new StaleLeaseError(l.jobId, l.token);
    if (s.loss !== undefined) {
      const row = { link: s.progress.link, loss: s.loss, lr: s.lr ?? null, epoch: s.progress.epoch };
      await tx
        .insert(jobSteps)
        .values({ jobId: l.jobId, step: s.progress.step, ...row })
        .onConflictDoUpdate({ target: [jobSteps.jobId, jobSteps.step], set: { ...row, createdAt: sql`now()` } });
    }
    // `at` and `tokens` give a watcher tokens/s (the dashboard's job page).
    await appendEvent(tx, l.jobId, 'step', {
      step: s.progress.step,
      loss: s.loss ?? null,
      lr: s.lr ?? null,
      link: s.progress.link,
      epoch: s.progress.epoch,
      ...(s.tokens !== undefined ? { tokens: s.tokens } : {}),
      at: new Date().toISOString(),
    });
    return { cancelRequested: r.cancel, mergeRequests: r.merges };
  });
}

/** Record a non-step event (link_started, eval, ...) only while holding the lease. Fenced. */
export async function recordEvent(db: Db, l: Lease, type: string, data: Record<string, unknown>): Promise<void> {
  await db.transaction(async (tx) => {
    const [r] = await tx.update(jobs).set({ updatedAt: sql`now()` }).where(fenced(l)).returning({ id: jobs.id });
    if (!r) throw new StaleLeaseError(l.jobId, l.token);
    await appendEvent(tx, l.jobId, type, data);
  });
}

/**
 * An automatic-knot decision (event `knot_decision`), recorded once per (decision, link, step): a
 * resumed run takes again the decisions after its last knot (every resume re-enters a link, and the
 * last link's `last_link` is decided at its start), which an earlier attempt may have recorded.
 */
export async function recordKnotDecision(db: Db, l: Lease, d: Record<string, unknown>): Promise<void> {
  await db.transaction(async (tx) => {
    const [r] = await tx.update(jobs).set({ updatedAt: sql`now()` }).where(fenced(l)).returning({ id: jobs.id });
    if (!r) throw new StaleLeaseError(l.jobId, l.token);
    const key = JSON.stringify({ decision: d.decision, link: d.link, step: d.step });
    const [seen] = await tx
      .select({ id: jobEvents.id })
      .from(jobEvents)
      .where(and(eq(jobEvents.jobId, l.jobId), eq(jobEvents.type, 'knot_decision'), sql`${jobEvents.data} @> ${key}::jsonb`))
      .limit(1);
    if (!seen) await appendEvent(tx, l.jobId, 'knot_decision', d);
  });
}

/** The job's output model to create with its first version (tenant-owned; same architecture if it exists). */
export type OutputModel = { tenantId: string; name: string; architecture: string; params: number; config: Record<string, unknown> };

/**
 * Tie a knot: in one transaction, append the knot to the job (fenced: the row lock taken by
 * this UPDATE also orders it against a concurrent claim) and insert the immutable model version.
 * `modelId` may name the output model to create instead, so a model never exists without versions.
 * A stale worker gets StaleLeaseError and nothing is written.
 */
export async function recordKnot(
  db: Db,
  l: Lease,
  knot: Omit<JobKnot, 'version'>,
  version: Omit<NewVersion, 'version' | 'modelId'> & { modelId: string | OutputModel },
  /** The knot's store files and tensor objects: locked and checked to exist, so a concurrent delete cannot leave the row dangling. */
  guard?: { paths: string[]; tensors?: string[]; exists: (p: string) => boolean },
): Promise<ModelVersion> {
  return db.transaction(async (tx) => {
    const [r] = await tx.update(jobs).set({ updatedAt: sql`now()` }).where(fenced(l)).returning({ id: jobs.id });
    if (!r) throw new StaleLeaseError(l.jobId, l.token);
    if (guard) {
      await guardStorePaths(tx, guard.paths, guard.exists);
      await guardTensorObjects(tx, guard.tensors ?? [], guard.exists);
    }
    let modelId: string;
    if (typeof version.modelId === 'string') modelId = version.modelId;
    else {
      const want = version.modelId;
      const m = await ensureTenantModel(tx, want);
      if (m.architecture !== want.architecture) {
        throw new UserInputError(`output model "${want.name}" exists with architecture ${m.architecture}, not ${want.architecture}`);
      }
      modelId = m.id;
    }
    const v = await insertVersion(tx, { ...version, modelId });
    const full: JobKnot = { ...knot, version: v.version };
    await tx
      .update(jobs)
      .set({ knots: sql`${jobs.knots} || ${JSON.stringify([full])}::jsonb` })
      .where(eq(jobs.id, l.jobId));
    await appendEvent(tx, l.jobId, 'knot', { link: knot.link, step: knot.step, version: v.version, rank: knot.rank, val_loss: knot.val_loss ?? null });
    return v;
  });
}

async function finish(db: Db, l: Lease, status: JobStatus, error: { type: string; detail: string } | null): Promise<void> {
  await db.transaction(async (tx) => {
    const [r] = await tx
      .update(jobs)
      .set({
        status: status as Job['status'],
        error,
        finishedAt: sql`now()`,
        updatedAt: sql`now()`,
        leaseOwner: null,
        leaseExpiresAt: null,
      })
      .where(fenced(l))
      .returning({ id: jobs.id });
    if (!r) throw new StaleLeaseError(l.jobId, l.token);
    await appendEvent(tx, l.jobId, 'status', { status, ...(error ? { error } : {}) });
    await appendEvent(tx, l.jobId, 'done', { status });
  });
}

export const succeed = (db: Db, l: Lease) => finish(db, l, 'succeeded', null);
export const fail = (db: Db, l: Lease, error: { type: string; detail: string }) => finish(db, l, 'failed', error);
export const finishCancel = (db: Db, l: Lease) => finish(db, l, 'cancelled', null);

/**
 * A user's cancel: a queued job becomes cancelled at once; a running one gets its cancel flag
 * (the worker stops at the next step). Returns the resulting status, or null when the job is
 * already finished (conflict).
 */
export async function requestCancel(db: Db, tenantId: string, jobId: string): Promise<JobStatus | null> {
  return db.transaction(async (tx) => {
    const [q] = await tx
      .update(jobs)
      .set({ status: 'cancelled', cancelRequested: true, finishedAt: sql`now()`, updatedAt: sql`now()` })
      .where(and(eq(jobs.id, jobId), eq(jobs.tenantId, tenantId), eq(jobs.status, 'queued')))
      .returning({ id: jobs.id });
    if (q) {
      await appendEvent(tx, jobId, 'status', { status: 'cancelled' });
      await appendEvent(tx, jobId, 'done', { status: 'cancelled' });
      return 'cancelled';
    }
    const [r] = await tx
      .update(jobs)
      .set({ cancelRequested: true, updatedAt: sql`now()` })
      .where(and(eq(jobs.id, jobId), eq(jobs.tenantId, tenantId), eq(jobs.status, 'running')))
      .returning({ id: jobs.id });
    return r ? 'running' : null;
  });
}

/** A new job, queued, with its first event: one transaction (a job never exists without its 'queued' event). */
export async function submit(db: Db, input: Parameters<typeof insertJob>[1]): Promise<Job> {
  return db.transaction(async (tx) => {
    const job = await insertJob(tx, input);
    await appendEvent(tx, job.id, 'status', { status: 'queued' });
    return job;
  });
}

/**
 * A user's request to tie a knot now in a running job (POST /merge {job}): counts one more merge
 * request, which the worker compares with those it has honoured. False when the job is not running.
 */
export async function requestKnot(db: Db, tenantId: string, jobId: string): Promise<boolean> {
  const [r] = await db
    .update(jobs)
    .set({ mergeRequests: sql`${jobs.mergeRequests} + 1` })
    .where(and(eq(jobs.id, jobId), eq(jobs.tenantId, tenantId), eq(jobs.status, 'running')))
    .returning({ id: jobs.id });
  return !!r;
}

/** A job that ran out of attempts after lease expiries is failed without running it again. */
export async function failExhausted(db: Db, l: Lease, attempts: number): Promise<void> {
  await fail(db, l, { type: 'worker_lost', detail: `the job's worker stopped ${attempts} times without finishing; giving up` });
}
