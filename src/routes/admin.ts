import { createRoute, z } from '@hono/zod-openapi';
import type { App, AppDeps } from './deps.ts';
import { problems, ProblemError } from './problem.ts';
import { createKey, createTenant, getTenantByName, listTenants, revokeKey } from '../db/repos/tenants.ts';
import { countActiveJobs, countJobsOfTenant } from '../db/repos/jobs.ts';
import { tenantStoredBytes } from '../db/repos/files.ts';
import { IdParam, iso, quotasOf } from './common.ts';

export const QuotasSchema = z
  .object({
    requests_per_minute: z.number().int().min(1).max(1_000_000),
    concurrent_jobs: z.number().int().min(0).max(1000),
    stored_bytes: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    max_tokens_per_request: z.number().int().min(1).max(1_000_000),
  })
  .partial()
  .strict()
  .openapi('Quotas');

const CreateTenant = z
  .object({
    name: z.string().min(1).max(128).regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, ".", "_", "-"'),
    quotas: QuotasSchema.optional(),
  })
  .strict();

const KeyOut = z.object({ tenant_id: z.string(), key_id: z.string(), api_key: z.string() });

const TenantUsage = z
  .object({
    id: z.string(),
    name: z.string(),
    created_at: z.string(),
    /** The quotas in force: the tenant's overrides over the configured defaults. */
    quotas: z.object({ requests_per_minute: z.number(), concurrent_jobs: z.number(), stored_bytes: z.number(), max_tokens_per_request: z.number() }),
    usage: z.object({ stored_bytes: z.number(), active_jobs: z.number().int(), jobs: z.number().int() }),
  })
  .openapi('TenantUsage');

export function adminRoutes(app: App, d: AppDeps) {
  app.openapi(
    createRoute({
      method: 'get',
      path: '/admin/tenants',
      tags: ['admin'],
      summary: 'Every tenant with its quotas in force and its usage (stored bytes, active and all jobs)',
      responses: {
        200: { description: 'tenants', content: { 'application/json': { schema: z.object({ data: z.array(TenantUsage) }) } } },
        ...problems(401),
      },
    }),
    async (c) => {
      const data = [];
      for (const t of await listTenants(d.db)) {
        const q = quotasOf(d, t);
        data.push({
          id: t.id,
          name: t.name,
          created_at: iso(t.createdAt)!,
          quotas: { requests_per_minute: q.requests_per_minute, concurrent_jobs: q.concurrent_jobs, stored_bytes: q.stored_bytes, max_tokens_per_request: q.max_tokens_per_request },
          usage: { stored_bytes: await tenantStoredBytes(d.db, t.id), active_jobs: await countActiveJobs(d.db, t.id), jobs: await countJobsOfTenant(d.db, t.id) },
        });
      }
      return c.json({ data }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/admin/tenants',
      tags: ['admin'],
      summary: 'Create a tenant and its first API key (shown once)',
      request: { body: { required: true, content: { 'application/json': { schema: CreateTenant } } } },
      responses: {
        201: { description: 'created', content: { 'application/json': { schema: KeyOut } } },
        ...problems(400, 401, 409, 413, 415),
      },
    }),
    async (c) => {
      const body = c.req.valid('json');
      if (await getTenantByName(d.db, body.name)) throw new ProblemError(409, `tenant "${body.name}" already exists`);
      const r = await createTenant(d.db, { name: body.name, quotas: body.quotas });
      return c.json({ tenant_id: r.tenant.id, key_id: r.keyId, api_key: r.apiKey }, 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/admin/tenants/{id}/keys',
      tags: ['admin'],
      summary: 'Create another API key for a tenant (shown once)',
      request: { params: z.object({ id: IdParam }) },
      responses: {
        201: { description: 'created', content: { 'application/json': { schema: KeyOut } } },
        ...problems(400, 401, 404),
      },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      const k = await createKey(d.db, id);
      if (!k) throw new ProblemError(404, `tenant ${id} not found`);
      return c.json({ tenant_id: id, key_id: k.keyId, api_key: k.apiKey }, 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/admin/keys/{key_id}',
      tags: ['admin'],
      summary: 'Revoke an API key',
      request: { params: z.object({ key_id: IdParam }) },
      responses: {
        200: { description: 'revoked', content: { 'application/json': { schema: z.object({ key_id: z.string(), revoked: z.literal(true) }) } } },
        ...problems(400, 401, 404),
      },
    }),
    async (c) => {
      const { key_id } = c.req.valid('param');
      if (!(await revokeKey(d.db, key_id))) throw new ProblemError(404, `key ${key_id} not found or already revoked`);
      return c.json({ key_id, revoked: true as const }, 200);
    },
  );
}
