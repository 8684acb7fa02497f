import { createRoute, z } from '@hono/zod-openapi';
import type { App, AppDeps } from './deps.ts';
import { countJobsByStatus } from '../db/repos/jobs.ts';
import { JOB_STATES } from '../domain/job-states.ts';

const Ready = z.object({
  status: z.enum(['ok', 'unavailable']),
  database: z.object({ ok: z.boolean(), kind: z.string() }),
  gpu: z.object({ ok: z.boolean(), detail: z.string().optional() }),
});

export function opsRoutes(app: App, d: AppDeps) {
  app.openapi(
    createRoute({
      method: 'get',
      path: '/healthz',
      tags: ['ops'],
      security: [],
      summary: 'Process alive',
      responses: { 200: { description: 'alive', content: { 'application/json': { schema: z.object({ status: z.literal('ok') }) } } } },
    }),
    (c) => c.json({ status: 'ok' as const }, 200),
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/readyz',
      tags: ['ops'],
      security: [],
      summary: 'Database and GPU device usable',
      responses: {
        200: { description: 'ready', content: { 'application/json': { schema: Ready } } },
        503: { description: 'not ready', content: { 'application/json': { schema: Ready } } },
      },
    }),
    async (c) => {
      const dbOk = await d.database.ping();
      let gpu: { ok: boolean; detail?: string };
      if (!d.engine) gpu = { ok: false, detail: 'no GPU engine is wired into this server' };
      else {
        try {
          gpu = await d.engine.health();
        } catch (e) {
          gpu = { ok: false, detail: e instanceof Error ? e.message : String(e) };
        }
      }
      const ok = dbOk && gpu.ok;
      const body = { status: ok ? ('ok' as const) : ('unavailable' as const), database: { ok: dbOk, kind: d.database.kind }, gpu };
      return ok ? c.json(body, 200) : c.json(body, 503);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/metrics',
      tags: ['ops'],
      security: [],
      summary: 'Prometheus metrics',
      responses: { 200: { description: 'Prometheus text format', content: { 'text/plain': { schema: z.string() } } } },
    }),
    async (c) => {
      let jobsByStatus: Record<string, number> = {};
      try {
        const counts = await countJobsByStatus(d.db);
        jobsByStatus = Object.fromEntries(JOB_STATES.map((s) => [s, counts[s] ?? 0]));
      } catch {
        jobsByStatus = {};
      }
      let gpu: number | null = null;
      try {
        gpu = d.engine?.memoryInUse ? d.engine.memoryInUse() : null;
      } catch {
        gpu = null;
      }
      const text = d.metrics.render({ jobsByStatus, gpuMemoryBytes: gpu, load: d.engine?.load?.() ?? null });
      return c.text(text, 200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
    },
  );
}
