// POST /merge (tie a knot now, or merge an uploaded adapter into a version) and the adapters'
// routes. Route + handler only: the work is in src/usecases (finetune.ts requestKnot, adapters.ts).
import { createRoute, z } from '@hono/zod-openapi';
import type { App, AppDeps } from './deps.ts';
import { problems, ProblemError } from './problem.ts';
import { IdParam, iso, ModelName, tenantOf, VersionNumber } from './common.ts';
import { getAdapter } from '../db/repos/files.ts';
import { MAX_ADAPTER_CONFIG_BYTES, mergeAdapter, uploadAdapter } from '../usecases/adapters.ts';
import { requestKnot } from '../usecases/finetune.ts';

const MergeJob = z.object({ job: IdParam, timeout_s: z.number().int().min(1).max(600).default(120) }).strict();
const MergeAdapter = z
  .object({ model: ModelName, version: VersionNumber, adapter: IdParam, scale: z.number().min(-100).max(100).default(1), output_model: ModelName.optional() })
  .strict();
const MergeBody = z.union([MergeJob, MergeAdapter]).openapi('MergeRequest');

export { checkSafetensors } from '../usecases/adapters.ts';

export function mergeRoutes(app: App, d: AppDeps) {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/merge',
      tags: ['merge'],
      summary: 'Tie a knot in a running job now ({job}), or merge a PEFT adapter into a version ({model, version, adapter, scale})',
      request: { body: { required: true, content: { 'application/json': { schema: MergeBody } } } },
      responses: {
        200: { description: 'the new version', content: { 'application/json': { schema: z.object({ model: z.string(), version: z.number() }) } } },
        ...problems(400, 401, 404, 409, 413, 415, 429, 501, 503, 504),
      },
    }),
    async (c) => {
      const t = tenantOf(c);
      const b = c.req.valid('json');
      return c.json('job' in b ? await requestKnot(d, t, b) : await mergeAdapter(d, t, b), 200);
    },
  );

  const AdapterView = z.object({ id: z.string(), config: z.record(z.string(), z.unknown()), sha256: z.string(), bytes: z.number(), created_at: z.string() }).openapi('Adapter');

  app.openapi(
    createRoute({
      method: 'post',
      path: '/adapters',
      tags: ['merge'],
      summary: 'Upload a PEFT LoRA adapter (multipart: adapter_config.json, adapter_model.safetensors)',
      request: {
        body: {
          required: true,
          content: {
            // Documentation only: the handler parses and validates both parts.
            'multipart/form-data': {
              schema: {
                type: 'object',
                properties: { 'adapter_config.json': { type: 'string', format: 'binary' }, 'adapter_model.safetensors': { type: 'string', format: 'binary' } },
                required: ['adapter_config.json', 'adapter_model.safetensors'],
              },
            },
          },
        },
      },
      responses: { 201: { description: 'stored', content: { 'application/json': { schema: z.object({ id: z.string() }) } } }, ...problems(400, 401, 413, 415, 429) },
    }),
    async (c) => {
      const t = tenantOf(c);
      const form = await c.req.parseBody().catch(() => {
        throw new ProblemError(400, 'malformed multipart body');
      });
      const cfgPart = form['adapter_config.json'];
      const model = form['adapter_model.safetensors'];
      const errors: { path: string; message: string }[] = [];
      if (cfgPart === undefined) errors.push({ path: 'adapter_config.json', message: 'required' });
      if (!(model instanceof File)) errors.push({ path: 'adapter_model.safetensors', message: 'required (a file)' });
      if (errors.length) throw new ProblemError(400, 'missing adapter parts', { errors });
      if (cfgPart instanceof File && cfgPart.size > MAX_ADAPTER_CONFIG_BYTES) throw new ProblemError(400, 'adapter_config.json over 1 MiB');
      const configText = cfgPart instanceof File ? await cfgPart.text() : String(cfgPart);
      return c.json(await uploadAdapter(d, t, { configText, weights: model as File }), 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/adapters/{id}',
      tags: ['merge'],
      summary: 'An uploaded adapter (metadata)',
      request: { params: z.object({ id: IdParam }) },
      responses: { 200: { description: 'adapter', content: { 'application/json': { schema: AdapterView } } }, ...problems(400, 401, 404) },
    }),
    async (c) => {
      const a = await getAdapter(d.db, tenantOf(c).id, c.req.valid('param').id);
      if (!a) throw new ProblemError(404, 'adapter not found');
      return c.json({ id: a.id, config: a.config, sha256: a.sha256, bytes: a.bytes, created_at: iso(a.createdAt)! }, 200);
    },
  );
}
