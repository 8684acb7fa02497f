// DELETE routes: a tenant frees what it stores (files, adapters, versions, models). The rules for
// what may go are in src/db/repos/deletes.ts; a refusal is 409 with the reason, another tenant's id
// or name is 404, a shared base model is 409. Store files are removed only when no row references
// them any more (content-addressed files may be shared), and only inside the store root.
import { createRoute, z } from '@hono/zod-openapi';
import type { App, AppDeps } from './deps.ts';
import { problems, ProblemError } from './problem.ts';
import { IdParam, ModelName, tenantOf, VersionParam } from './common.ts';
import { findModel } from '../db/repos/models.ts';
import { deleteAdapter, deleteFile, deleteModel, deleteVersion, type DeleteResult } from '../db/repos/deletes.ts';

const Deleted = z
  .object({
    deleted: z.string(),
    /** Bytes no longer counted against the tenant's stored-bytes quota. */
    freed_bytes: z.number().int(),
  })
  .openapi('Deleted');

function answer(r: DeleteResult | null, what: string) {
  if (!r) throw new ProblemError(404, `${what} not found`);
  if (!r.ok) throw new ProblemError(409, `${what} cannot be deleted now: ${r.conflict}`);
  return { deleted: what, freed_bytes: r.bytes };
}

export function deleteRoutes(app: App, d: AppDeps) {
  const free = (paths: string[]) => d.store.free(paths);

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
      return c.json(answer(await deleteFile(d.db, tenantOf(c).id, id, free), `file ${id}`), 200);
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
      return c.json(answer(await deleteAdapter(d.db, tenantOf(c).id, id, free), `adapter ${id}`), 200);
    },
  );

  /** The tenant's own model of that name; a shared one is refused, an unknown one is 404. */
  const ownModel = async (tenantId: string, name: string) => {
    const m = await findModel(d.db, tenantId, name);
    if (!m) throw new ProblemError(404, `model "${name}" not found`);
    if (m.tenantId !== tenantId) throw new ProblemError(409, `"${name}" is a shared base model: only the operator can remove it`);
    return m;
  };

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
      const m = await ownModel(tenantOf(c).id, name);
      return c.json(answer(await deleteVersion(d.db, m, v, free), `version ${v} of model "${name}"`), 200);
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
      const m = await ownModel(tenantOf(c).id, name);
      return c.json(answer(await deleteModel(d.db, m, free), `model "${name}"`), 200);
    },
  );
}
