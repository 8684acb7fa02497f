import { createRoute, z } from '@hono/zod-openapi';
import { streamSSE } from 'hono/streaming';
import type { App, AppDeps } from './deps.ts';
import { problems, ProblemError } from './problem.ts';
import { IdParam, iso, tenantOf } from './common.ts';
import { FinetuneRequest, JobView, LossPage } from './schemas.ts';
import { getJob, listEvents, listJobs, listSteps, sampledLosses, type LossPoint } from '../db/repos/jobs.ts';
import { cancelFinetune, submitFinetune } from '../usecases/finetune.ts';
import { isTerminal, type JobStatus } from '../domain/job-states.ts';
import type { Job } from '../db/schema.ts';

/** Loss points a job view carries (the full curve is paged by GET /finetune/{id}/losses). */
export const VIEW_LOSS_POINTS = 500;
export const LIST_LOSS_POINTS = 50;

export function jobView(j: Job, losses: { points: LossPoint[]; count: number } = { points: [], count: 0 }): z.infer<typeof JobView> {
  return {
    id: j.id,
    status: j.status,
    model: j.baseModelName,
    base_version: j.baseVersion,
    output_model: j.outputModel,
    progress: j.progress ?? null,
    losses: losses.points,
    losses_count: losses.count,
    knots: j.knots,
    ...(j.error ? { error: j.error } : {}),
    cancel_requested: j.cancelRequested,
    attempts: j.attempts,
    created_at: iso(j.createdAt)!,
    started_at: iso(j.startedAt),
    finished_at: iso(j.finishedAt),
  };
}

const JobId = z.object({ id: IdParam });

/** A job as GET answers it: the row plus its loss curve thinned to `points`. */
async function viewOf(d: AppDeps, j: Job, points = VIEW_LOSS_POINTS): Promise<z.infer<typeof JobView>> {
  return jobView(j, (await sampledLosses(d.db, [j.id], points)).get(j.id));
}

export function finetuneRoutes(app: App, d: AppDeps) {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/finetune',
      tags: ['finetune'],
      summary: 'Start a COLA (or LoRA) fine-tune job',
      request: { body: { required: true, content: { 'application/json': { schema: FinetuneRequest } } } },
      responses: {
        202: {
          description: 'queued',
          content: { 'application/json': { schema: z.object({ id: z.string(), status: z.literal('queued'), output_model: z.string() }) } },
        },
        ...problems(400, 401, 404, 409, 413, 415, 429),
      },
    }),
    async (c) => c.json(await submitFinetune(d, tenantOf(c), c.req.valid('json')), 202),
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/finetune',
      tags: ['finetune'],
      summary: "The tenant's jobs, newest first",
      request: { query: z.object({ limit: z.coerce.number().int().min(1).max(1000).default(100) }) },
      responses: {
        200: { description: 'jobs', content: { 'application/json': { schema: z.object({ data: z.array(JobView) }) } } },
        ...problems(400, 401),
      },
    }),
    async (c) => {
      const { limit } = c.req.valid('query');
      const rows = await listJobs(d.db, tenantOf(c).id, limit);
      const losses = await sampledLosses(d.db, rows.map((r) => r.id), LIST_LOSS_POINTS);
      return c.json({ data: rows.map((j) => jobView(j, losses.get(j.id))) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/finetune/{id}',
      tags: ['finetune'],
      summary: `A job: status, progress, knots, and its loss curve thinned to at most ${VIEW_LOSS_POINTS} points (all of it: GET /finetune/{id}/losses)`,
      request: { params: JobId },
      responses: { 200: { description: 'job', content: { 'application/json': { schema: JobView } } }, ...problems(400, 401, 404) },
    }),
    async (c) => {
      const j = await getJob(d.db, tenantOf(c).id, c.req.valid('param').id);
      if (!j) throw new ProblemError(404, 'job not found');
      return c.json(await viewOf(d, j), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/finetune/{id}/losses',
      tags: ['finetune'],
      summary: 'The full loss curve, one entry per step, paged by step: ?after=<last step seen>&limit=',
      request: {
        params: JobId,
        query: z.object({
          after: z.coerce.number().int().min(0).max(100_000_000).default(0),
          limit: z.coerce.number().int().min(1).max(10_000).default(1000),
        }),
      },
      responses: { 200: { description: 'one page of steps', content: { 'application/json': { schema: LossPage } } }, ...problems(400, 401, 404) },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      const { after, limit } = c.req.valid('query');
      const j = await getJob(d.db, tenantOf(c).id, id);
      if (!j) throw new ProblemError(404, 'job not found');
      // One row more than asked tells whether another page follows.
      const rows = await listSteps(d.db, id, after, limit + 1);
      const data = rows.slice(0, limit);
      return c.json({ data, next_after: rows.length > limit ? data[data.length - 1]!.step : null }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/finetune/{id}/cancel',
      tags: ['finetune'],
      summary: 'Cancel: the job stops at its next step; knots already tied stay',
      request: { params: JobId },
      responses: { 200: { description: 'cancelled or cancelling', content: { 'application/json': { schema: JobView } } }, ...problems(400, 401, 404, 409) },
    }),
    async (c) => {
      return c.json(await viewOf(d, await cancelFinetune(d, tenantOf(c), c.req.valid('param').id)), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/finetune/{id}/events',
      tags: ['finetune'],
      summary: 'Server-Sent Events: status, link_started, step, knot, eval, knot_decision, done; resumable with Last-Event-ID',
      request: {
        params: JobId,
        headers: z.object({ 'last-event-id': z.string().regex(/^\d{1,9}$/, 'must be an event id (a number)').optional() }),
        query: z.object({ last_event_id: z.coerce.number().int().min(0).max(999_999_999).optional() }),
      },
      responses: {
        200: {
          description: 'event stream: each event has an id (resume with Last-Event-ID), a name and JSON data, typed by the JobEvents schema under that name',
          content: { 'text/event-stream': { schema: z.string().openapi({ description: 'SSE; data: JSON of JobEvents[event]' }) } },
        },
        ...problems(400, 401, 404),
      },
    }),
    async (c) => {
      const t = tenantOf(c);
      const { id } = c.req.valid('param');
      const j = await getJob(d.db, t.id, id);
      if (!j) throw new ProblemError(404, 'job not found');
      const hdr = c.req.valid('header')['last-event-id'];
      let after = hdr !== undefined ? Number(hdr) : (c.req.valid('query').last_event_id ?? 0);
      return streamSSE(c, async (s) => {
        let aborted = false;
        s.onAbort(() => {
          aborted = true;
        });
        let idle = 0;
        while (!aborted) {
          const evs = await listEvents(d.db, id, after, 200);
          for (const e of evs) {
            await s.writeSSE({ id: String(e.seq), event: e.type, data: JSON.stringify(e.data) });
            after = e.seq;
            if (e.type === 'done') return;
          }
          if (evs.length === 0) {
            const cur = await getJob(d.db, t.id, id);
            if (!cur) return;
            if (isTerminal(cur.status as JobStatus)) {
              // A terminal job always has its `done` event; re-check once for events written in between.
              const rest = await listEvents(d.db, id, after, 200);
              if (rest.length === 0) return;
              continue;
            }
            if (++idle % 60 === 0) await s.write(': keep-alive\n\n');
            await s.sleep(250);
          }
        }
      });
    },
  );
}
