// The job worker: claims a job (fenced lease), keeps the lease alive with heartbeats, runs the
// pluggable JobRunner, and records steps and knots through fenced transitions. Without a runner
// a claimed job fails with "trainer not available" (nothing is faked).
import path from 'node:path';
import { existsSync } from 'node:fs';
import crypto from 'node:crypto';
import { MAX_FILE_LIMIT_BYTES, type Config } from '../config.ts';
import { FinetuneRequest, type FinetuneRequestBody } from '../domain/schemas.ts';
import type { Store } from '../store/store.ts';
import { isSystemError, publicMessage } from '../util/redact.ts';
import type { Db } from '../db/index.ts';
import { eq } from 'drizzle-orm';
import { models, type Job } from '../db/schema.ts';
import { getJobById, expiredRunningJobIds, staleQueuedJobIds } from '../db/repos/jobs.ts';
import { getVersion, findModel } from '../db/repos/models.ts';
import { getAdapter, getFile, readFileExamples, tenantStoredBytes } from '../db/repos/files.ts';
import { getTenant } from '../db/repos/tenants.ts';
import { QuotaExceededError, type Example, type FinetuneJobSpec, type JobContext, type JobRunner, type ResumePoint } from '../services.ts';
import {
  claim,
  fail,
  failExhausted,
  finishCancel,
  heartbeat,
  recordEvent,
  recordKnot,
  recordKnotDecision,
  recordStep,
  release,
  StaleLeaseError,
  succeed,
  type Lease,
} from './transitions.ts';

export interface WorkerOptions {
  db: Db;
  /** `defaultQuotas` absent: only a tenant's own stored_bytes quota limits its jobs. */
  config: Pick<Config, 'leaseMs' | 'heartbeatMs' | 'reclaimIntervalMs' | 'maxJobAttempts' | 'workerConcurrency' | 'repoRoot'> & Partial<Pick<Config, 'defaultQuotas'>>;
  /** The service's Store (the same one the app uses): the runner writes snapshots into its weightsDir. */
  store: Store;
  runner?: JobRunner;
  /** Worker identity (lease owner); default host-pid-random. */
  owner?: string;
  log?: (msg: string) => void;
}

function absPath(root: string, p: string): string {
  return path.isAbsolute(p) ? p : path.join(root, p);
}

export class JobWorker {
  readonly owner: string;
  private running = new Map<string, { abort: AbortController; done: Promise<void> }>();
  private reclaimTimer: ReturnType<typeof setInterval> | null = null;
  private stopping = false;
  private log: (m: string) => void;

  constructor(private readonly o: WorkerOptions) {
    this.owner = o.owner ?? `${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
    this.log = o.log ?? ((m) => console.log(`[worker ${this.owner}] ${m}`));
  }

  get inFlight(): number {
    return this.running.size;
  }

  /** Periodically reclaim jobs whose lease expired (their worker died) and queued jobs nobody picked up. */
  startReclaimer(): void {
    if (this.reclaimTimer) return;
    let busy = false;
    this.reclaimTimer = setInterval(async () => {
      if (busy || this.stopping) return;
      busy = true;
      try {
        await this.reclaimOnce();
      } catch (e) {
        this.log(`reclaim failed: ${e instanceof Error ? e.message : e}`);
      } finally {
        busy = false;
      }
    }, this.o.config.reclaimIntervalMs);
  }

  async reclaimOnce(): Promise<number> {
    const free = this.o.config.workerConcurrency - this.running.size;
    if (free <= 0) return 0;
    const ids = [
      ...(await expiredRunningJobIds(this.o.db, free)),
      ...(await staleQueuedJobIds(this.o.db, Math.max(this.o.config.leaseMs, 10_000), free)),
    ];
    let n = 0;
    for (const id of ids) {
      if (this.running.size >= this.o.config.workerConcurrency) break;
      if (await this.tryStart(id)) n++;
    }
    return n;
  }

  /**
   * Claim and run one job; resolves when it finished here (or was not claimable).
   * Returns false when the job could not be claimed.
   */
  async process(jobId: string): Promise<boolean> {
    if (this.stopping || this.running.has(jobId)) return false;
    const c = await claim(this.o.db, jobId, this.owner, this.o.config.leaseMs);
    if (!c) return false;
    const abort = new AbortController();
    let resolveDone!: () => void;
    const done = new Promise<void>((r) => (resolveDone = r));
    this.running.set(jobId, { abort, done });
    try {
      await this.runClaimed(c.job, c.lease, abort);
    } finally {
      this.running.delete(jobId);
      resolveDone();
    }
    return true;
  }

  /** Start processing in the background; false when not claimed. */
  private async tryStart(jobId: string): Promise<boolean> {
    if (this.stopping || this.running.has(jobId)) return false;
    const c = await claim(this.o.db, jobId, this.owner, this.o.config.leaseMs);
    if (!c) return false;
    const abort = new AbortController();
    const done = this.runClaimed(c.job, c.lease, abort).finally(() => this.running.delete(jobId));
    this.running.set(jobId, { abort, done });
    return true;
  }

  private async runClaimed(job: Job, lease: Lease, abort: AbortController): Promise<void> {
    const db = this.o.db;
    let lost = false;
    let cancel = job.cancelRequested;
    let merges = job.mergeRequests;
    let mergesHonoured = job.mergeRequests;
    const hb = setInterval(async () => {
      try {
        const r = await heartbeat(db, lease, this.o.config.leaseMs);
        cancel = r.cancelRequested;
        merges = r.mergeRequests;
      } catch (e) {
        if (e instanceof StaleLeaseError) {
          lost = true;
          abort.abort(new Error('lease lost'));
        }
      }
    }, this.o.config.heartbeatMs);
    try {
      if (job.attempts > this.o.config.maxJobAttempts) {
        await failExhausted(db, lease, job.attempts - 1);
        return;
      }
      if (cancel) {
        await finishCancel(db, lease);
        return;
      }
      const spec = await this.buildSpec(job);
      if (!this.o.runner) {
        await fail(db, lease, {
          type: 'trainer_unavailable',
          detail: 'trainer not available: no COLA trainer is wired into this server, so the job cannot run',
        });
        return;
      }
      // The output model is created with the first knot's version (recordKnot), so a job that
      // fails before tying one leaves no empty model behind.
      const out = await findModel(db, job.tenantId, job.outputModel);
      let outModelId = out && out.tenantId === job.tenantId ? out.id : null;
      const last = job.knots[job.knots.length - 1];
      let lastVersion = last?.version ?? null;
      let resumeFrom: ResumePoint | null = null;
      if (last && outModelId) {
        const v = await getVersion(db, outModelId, last.version);
        if (v) {
          resumeFrom = {
            link: last.link,
            step: last.step,
            knotSteps: job.knots.map((k) => k.step),
            version: last.version,
            path: absPath(this.o.config.repoRoot, v.path),
            sha256: v.sha256,
            adapterPath: v.adapterPath ? absPath(this.o.config.repoRoot, v.adapterPath) : null,
          };
        }
      }
      const ctx: JobContext = {
        resumeFrom,
        signal: abort.signal,
        isCancelled: () => cancel,
        takeMergeRequest: () => {
          if (merges > mergesHonoured) {
            mergesHonoured = merges;
            return true;
          }
          return false;
        },
        onStep: async (s) => {
          const r = await recordStep(db, lease, {
            progress: { step: s.step, total_steps: s.total_steps, link: s.link, links: s.links, epoch: s.epoch },
            loss: s.loss,
            lr: s.lr,
            tokens: s.tokens,
          });
          cancel = r.cancelRequested;
          merges = r.mergeRequests;
        },
        reserveBytes: async (bytes) => {
          const t = await getTenant(db, job.tenantId);
          const quota = t?.quotas.stored_bytes ?? this.o.config.defaultQuotas?.stored_bytes ?? Number.POSITIVE_INFINITY;
          const used = await tenantStoredBytes(db, job.tenantId);
          if (used + bytes > quota) {
            throw new QuotaExceededError(`the next knot (${bytes} bytes) would take the tenant's stored bytes to ${used + bytes}, over its quota of ${quota}; the versions already written are kept — delete data first`);
          }
        },
        onLinkStarted: (e) => recordEvent(db, lease, 'link_started', { link: e.link, rank: e.rank }),
        onEval: (e) => recordEvent(db, lease, 'eval', e),
        onKnotDecision: (d) => recordKnotDecision(db, lease, d),
        onKnot: async (k) => {
          const parent = lastVersion == null || !outModelId ? { modelId: job.baseModelId, version: job.baseVersion } : { modelId: outModelId, version: lastVersion };
          const v = await recordKnot(
            db,
            lease,
            { link: k.link, step: k.step, rank: k.rank, ...(k.val_loss !== undefined ? { val_loss: k.val_loss } : {}), flops: k.flops },
            {
              modelId: outModelId ?? {
                tenantId: job.tenantId,
                name: job.outputModel,
                architecture: spec.base.architecture,
                params: (await getJobModel(db, job))?.params ?? 0,
                config: spec.base.config,
              },
              parentModelId: parent.modelId,
              parentVersion: parent.version,
              kind: 'knot',
              jobId: job.id,
              link: k.link,
              rank: k.rank,
              sha256: k.snapshot.sha256,
              bytes: k.snapshot.bytes,
              path: k.snapshot.path,
              addedBytes: k.snapshot.addedBytes ?? null,
              tensors: k.snapshot.tensors ?? [],
              adapterPath: k.adapterPath ?? null,
              adapterBytes: k.adapterBytes ?? 0,
              metrics: { ...(k.metrics ?? {}), ...(k.val_loss !== undefined ? { val_loss: k.val_loss } : {}), flops: k.flops, step: k.step },
            },
            {
              paths: [k.snapshot.path, ...(k.adapterPath ? [k.adapterPath] : [])].map((p) => absPath(this.o.config.repoRoot, p)),
              tensors: tensorObjectPaths(this.o.store, k.snapshot.tensors),
              exists: existsSync,
            },
          );
          lastVersion = v.version;
          outModelId = v.modelId;
          return { model: job.outputModel, version: v.version };
        },
      };
      const r = await this.o.runner.run(spec, ctx);
      if (lost) return;
      if (this.stopping && abort.signal.aborted && !cancel) {
        // Stopped by shutdown, not by the user: hand the job back; another worker resumes it from its last knot.
        await release(db, lease).catch(() => {});
        this.log(`job ${job.id}: released for another worker (shutdown)`);
        return;
      }
      if ((r && r.cancelled) || cancel) await finishCancel(db, lease);
      else await succeed(db, lease);
    } catch (e) {
      if (lost || e instanceof StaleLeaseError) {
        this.log(`job ${job.id}: lease lost (token ${lease.token}); stopping without writing`);
        return;
      }
      if (this.stopping && abort.signal.aborted) {
        await release(db, lease).catch(() => {});
        this.log(`job ${job.id}: released for another worker (shutdown)`);
        return;
      }
      if ((e as { name?: string })?.name === 'StoreObjectGoneError') {
        // A delete removed a shared snapshot between its write and its row: run again from the last knot (it rewrites the file).
        await release(db, lease, 'a snapshot was removed while being recorded').catch(() => {});
        this.log(`job ${job.id}: released, ${e instanceof Error ? e.message : e}`);
        return;
      }
      if ((e as { name?: string })?.name === 'DeviceUnavailableError') {
        // No usable GPU here right now: not the job's fault. Give it back to the queue so this or
        // another worker retries it (after the stale-queued delay) instead of failing it.
        await release(db, lease, 'GPU unavailable on this worker').catch(() => {});
        this.log(`job ${job.id}: released, GPU unavailable: ${e instanceof Error ? e.message : e}`);
        return;
      }
      const detail = e instanceof Error ? e.message : String(e);
      this.log(`job ${job.id} failed: ${detail}`);
      // The job's error is read by the tenant: no server paths or errno text (the log above has them).
      const shown = isSystemError(e) ? 'the job failed on the server (a file system error); the incident was logged' : publicMessage(detail);
      await fail(db, lease, { type: errorType(e), detail: shown.slice(0, 2000) }).catch(
        (err) => this.log(`job ${job.id}: could not record failure: ${err instanceof Error ? err.message : err}`),
      );
    } finally {
      clearInterval(hb);
    }
  }

  private async buildSpec(job: Job): Promise<FinetuneJobSpec> {
    const db = this.o.db;
    const req = storedRequest(job);
    const baseModel = (await getJobModel(db, job))!;
    const bv = await getVersion(db, job.baseModelId, job.baseVersion);
    if (!baseModel || !bv) throw new Error(`base model version ${job.baseModelName}@${job.baseVersion} no longer exists`);
    const fromFile = async (id: string | undefined): Promise<Example[] | null> => {
      if (!id) return null;
      const f = await getFile(db, job.tenantId, id);
      if (!f) throw new Error(`file ${id} no longer exists`);
      return readFileExamples<Example>(f, MAX_FILE_LIMIT_BYTES);
    };
    const train = (req.train as Example[] | undefined) ?? (await fromFile(req.training_file)) ?? [];
    const validation = (req.validation as Example[] | undefined) ?? (await fromFile(req.validation_file)) ?? [];
    let initAdapter: FinetuneJobSpec['initAdapter'];
    if (req.init_adapter) {
      const a = await getAdapter(db, job.tenantId, req.init_adapter);
      if (!a) throw new Error(`adapter ${req.init_adapter} no longer exists`);
      initAdapter = { config: a.config, path: a.path };
    }
    return {
      id: job.id,
      tenantId: job.tenantId,
      request: req,
      train,
      validation,
      base: {
        model: baseModel.name,
        version: bv.version,
        architecture: baseModel.architecture,
        config: baseModel.config,
        path: absPath(this.o.config.repoRoot, bv.path),
        sha256: bv.sha256,
      },
      outputModel: job.outputModel,
      attempt: job.attempts,
      storeDir: this.o.store.weightsDir,
      ...(initAdapter ? { initAdapter } : {}),
    };
  }

  /** Stop: no new claims; running jobs are aborted and released to the queue for another worker. */
  async stop(timeoutMs = 10_000): Promise<void> {
    this.stopping = true;
    if (this.reclaimTimer) clearInterval(this.reclaimTimer);
    this.reclaimTimer = null;
    for (const r of this.running.values()) r.abort.abort(new Error('shutting down'));
    await Promise.race([Promise.all([...this.running.values()].map((r) => r.done)), Bun.sleep(timeoutMs)]);
  }
}

/**
 * The job's request, typed: the row holds the body POST /finetune validated (defaults applied),
 * read back through the same schema at this boundary (jsonb is untyped), so a row that does not
 * match it fails the job with a clear error instead of reaching the runner.
 */
export function storedRequest(job: Job): FinetuneRequestBody {
  const r = FinetuneRequest.safeParse(job.request);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new Error(`the stored request of job ${job.id} does not match the fine-tune request schema (${i.path.join('.') || '(body)'}: ${i.message})`);
  }
  return r.data;
}

/** The `error.type` a failed job reports. */
function errorType(e: unknown): string {
  const name = (e as { name?: string })?.name;
  if (name === 'UserInputError') return 'invalid_request';
  if (name === 'QuotaExceededError') return 'quota_exceeded';
  return 'training_failed';
}

async function getJobModel(db: Db, job: Job) {
  const [m] = await db.select().from(models).where(eq(models.id, job.baseModelId));
  return m ?? null;
}

export { getJobById };

/** Store paths of a knot's tensor objects (guarded when its version row is inserted). */
function tensorObjectPaths(store: Store, tensors: { digest: string }[] | undefined): string[] {
  if (!tensors?.length) return [];
  const objects = store.objects();
  return tensors.map((t) => objects.pathOf(t.digest, 'tensor'));
}
