// DELETE routes: a tenant frees what it stores (files, adapters, versions, models). The rules for
// what may go are in src/db/repos/deletes.ts; a refusal is 409 with the reason, another tenant's id
// or name is 404, a shared base model is 409. Store files are removed only when no row references
// them any more (content-addressed files may be shared), and only inside the store root.
import { createRoute, z } from '@hono/zod-openapi';
import type { App, AppDeps } from './deps.ts';
import { problems } from './problem.ts';
import { IdParam, ModelName, tenantOf, VersionParam } from './common.ts';
import { removeAdapter, removeFile, removeModel, removeVersion } from '../usecases/delete.ts';

const Deleted = z
  .object({
    deleted: z.string(),
    /** Bytes no longer counted against the tenant's stored-bytes quota. */
    freed_bytes: z.number().int(),
  })
  .openapi('Deleted');

export function deleteRoutes(app: App, d: AppDeps) {

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/files/{id}',
      tags: ['files'],
      summary: 'Delete a file (409 while a queued or running job uses it)',
      request: { params: z.object({ id: IdParam }) },
      responses: { 200: { description: 'deleted', content: { 'application/json': { schema: Deleted } } }, ...problems(400, 401, 404, 409) },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      return c.json(await removeFile(d, tenantOf(c), id), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/adapters/{id}',
      tags: ['merge'],
      summary: 'Delete an uploaded adapter (409 while a queued or running job starts from it)',
      request: { params: z.object({ id: IdParam }) },
      responses: { 200: { description: 'deleted', content: { 'application/json': { schema: Deleted } } }, ...problems(400, 401, 404, 409) },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      return c.json(await removeAdapter(d, tenantOf(c), id), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/models/{name}/versions/{v}',
      tags: ['models'],
      summary: 'Delete one version of a model of the tenant (409 while a job writes into the model or starts from it, or a later version has it as parent)',
      request: { params: z.object({ name: ModelName, v: VersionParam }) },
      responses: { 200: { description: 'deleted', content: { 'application/json': { schema: Deleted } } }, ...problems(400, 401, 404, 409) },
    }),
    async (c) => {
      const { name, v } = c.req.valid('param');
      return c.json(await removeVersion(d, tenantOf(c), name, v), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/models/{name}',
      tags: ['models'],
      summary: 'Delete a model of the tenant with all its versions (409 while a job writes into it or starts from it, or another model descends from it)',
      request: { params: z.object({ name: ModelName }) },
      responses: { 200: { description: 'deleted', content: { 'application/json': { schema: Deleted } } }, ...problems(400, 401, 404, 409) },
    }),
    async (c) => {
      const { name } = c.req.valid('param');
      return c.json(await removeModel(d, tenantOf(c), name), 200);
    },
  );
}
