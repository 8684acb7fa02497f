// Durable dispatch through pg-boss (on PGlite via fromPglite, on a server via its own pool).
// pg-boss carries "job X is ready" messages; the jobs table is the source of truth for state,
// leases and fencing (src/jobs/transitions.ts). A message for a job that is not claimable
// (finished, or leased by a live worker) is a no-op, so duplicates and retries are harmless.
import { PgBoss } from 'pg-boss';
import type { Database } from '../db/index.ts';
import type { JobQueue } from '../services.ts';
import type { JobWorker } from './worker.ts';

export const QUEUE = 'cola-finetune';

export interface BossQueue extends JobQueue {
  boss: PgBoss;
  /** Start consuming messages into a worker. */
  work(worker: JobWorker, concurrency: number): Promise<void>;
  stop(): Promise<void>;
}

export async function openQueue(database: Database, opts: { schema?: string } = {}): Promise<BossQueue> {
  const bo = await database.bossOptions();
  const boss = new PgBoss({
    ...(bo.db ? { db: bo.db as never } : { connectionString: bo.connectionString!, max: 4 }),
    schema: opts.schema ?? 'pgboss',
    supervise: true,
    schedule: false,
  });
  boss.on('error', (e: unknown) => console.error(`pg-boss: ${e instanceof Error ? e.message : e}`));
  await boss.start();
  await boss.createQueue(QUEUE, { retryLimit: 3, expireInSeconds: 24 * 3600 }).catch((e: unknown) => {
    if (!/exist/i.test(String(e))) throw e;
  });
  let working = false;
  return {
    boss,
    async enqueue(jobId: string) {
      await boss.send(QUEUE, { jobId });
    },
    async work(worker: JobWorker, concurrency: number) {
      if (working) return;
      working = true;
      await boss.work<{ jobId: string }>(
        QUEUE,
        { batchSize: 1, localConcurrency: concurrency, pollingIntervalSeconds: 0.5 } as never,
        async (batch: { data: { jobId: string } }[]) => {
          for (const j of batch) await worker.process(j.data.jobId);
        },
      );
    },
    async stop() {
      await boss.stop({ graceful: true, timeout: 5000, close: !bo.db });
    },
  };
}
