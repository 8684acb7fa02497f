import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { createRoute, z } from '@hono/zod-openapi';
import { eq, sql } from 'drizzle-orm';
import type { Context } from 'hono';
import type { App, AppDeps, AppEnv } from './deps.ts';
import { problems, ProblemError, notImplemented } from './problem.ts';
import { IdParam, iso, ModelName, quotasOf, refuseSharedName, resolveVersion, tenantOf, VersionNumber } from './common.ts';
import { getJob } from '../db/repos/jobs.ts';
import { createAdapter, getAdapter, tenantStoredBytes } from '../db/repos/files.ts';
import { ensureTenantModel, insertVersion } from '../db/repos/models.ts';
import { jobs } from '../db/schema.ts';
import { newId } from '../db/ids.ts';
import { UserInputError } from '../services.ts';
import { parsePeftConfig, PeftError, storedPeftConfig, type ParsedPeftConfig } from '../cola/peft.ts';
import { readSafetensorsHeader, SafetensorsError, type SafetensorsHeader } from '../model/safetensors.ts';

/** Size of a file the merge wrote (0 when it is gone): counted in the tenant's stored bytes. */
function fileSize(p: string): number {
  try {
    return fs.statSync(p).size;
  } catch {
    return 0;
  }
}

const MergeJob = z.object({ job: IdParam, timeout_s: z.number().int().min(1).max(600).default(120) }).strict();
const MergeAdapter = z
  .object({ model: ModelName, version: VersionNumber, adapter: IdParam, scale: z.number().min(-100).max(100).default(1), output_model: ModelName.optional() })
  .strict();
const MergeBody = z.union([MergeJob, MergeAdapter]).openapi('MergeRequest');

/** Structural check of an uploaded adapter's safetensors file (the one header parser, model/safetensors.ts). */
export async function checkSafetensors(p: string): Promise<{ tensors: Record<string, { dtype: string; shape: number[] }> }> {
  let h: SafetensorsHeader;
  try {
    h = await readSafetensorsHeader(p);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new UserInputError(`adapter_model.safetensors: ${e.message}`);
    throw e;
  }
  if (h.entries.length === 0) throw new UserInputError('adapter_model.safetensors: no tensors');
  return { tensors: Object.fromEntries(h.entries.map((t) => [t.name, { dtype: t.dtype, shape: t.shape }])) };
}

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
    (async (c: Context<AppEnv>) => {
      const t = tenantOf(c);
      const b = (c.req as any).valid('json') as z.infer<typeof MergeBody>;
      if ('job' in b) {
        const j = await getJob(d.db, t.id, b.job);
        if (!j) throw new ProblemError(404, 'job not found');
        if (j.status !== 'running') throw new ProblemError(409, `job is ${j.status}, not running: a knot can only be tied in a running job`);
        const knotsBefore = j.knots.length;
        const [r] = await d.db
          .update(jobs)
          .set({ mergeRequests: sql`${jobs.mergeRequests} + 1` })
          .where(sql`${jobs.id} = ${j.id} and ${jobs.status} = 'running'`)
          .returning({ id: jobs.id });
        if (!r) throw new ProblemError(409, 'job is no longer running');
        const deadline = Date.now() + b.timeout_s * 1000;
        while (Date.now() < deadline) {
          await Bun.sleep(200);
          const cur = await getJob(d.db, t.id, j.id);
          if (!cur) throw new ProblemError(404, 'job not found');
          if (cur.knots.length > knotsBefore) {
            const k = cur.knots[cur.knots.length - 1]!;
            return c.json({ model: cur.outputModel, version: k.version }, 200);
          }
          if (cur.status !== 'running') throw new ProblemError(409, `job became ${cur.status} before the knot was tied`);
        }
        throw new ProblemError(504, `the job did not tie the knot within ${b.timeout_s} s; the request stays pending and the job ties it at its next step`);
      }
      const target = await resolveVersion(d, t, b.model, b.version);
      const adapter = await getAdapter(d.db, t.id, b.adapter);
      if (!adapter) throw new ProblemError(404, `adapter ${b.adapter} not found`);
      const outName = b.output_model ?? (target.model.tenantId === t.id ? target.model.name : null);
      if (!outName) throw new ProblemError(409, `"${b.model}" is a shared model: name your own model in "output_model" for the merged version`);
      if (b.output_model) await refuseSharedName(d, b.output_model, 'output_model');
      if (!d.services.merge) throw notImplemented('adapter merge');
      const q = quotasOf(d, t);
      if ((await tenantStoredBytes(d.db, t.id)) >= q.stored_bytes) {
        throw new ProblemError(429, `stored bytes quota of ${q.stored_bytes} reached`, { headers: { 'retry-after': '3600' }, type: 'quota-exceeded' });
      }
      const res = await d.services.merge.mergeAdapter({
        target: target.resolved,
        adapter: { config: adapter.config, path: adapter.path },
        scale: b.scale,
        storeDir: d.store.weightsDir,
      });
      const out = await ensureTenantModel(d.db, { tenantId: t.id, name: outName, architecture: target.model.architecture, params: target.model.params, config: target.model.config });
      const v = await insertVersion(d.db, {
        modelId: out.id,
        parentModelId: target.model.id,
        parentVersion: target.version.version,
        kind: 'merge',
        jobId: null,
        link: null,
        rank: typeof adapter.config['r'] === 'number' ? (adapter.config['r'] as number) : null,
        sha256: res.weights.sha256,
        bytes: res.weights.bytes,
        path: res.weights.path,
        adapterPath: res.adapterPath ?? null,
        adapterBytes: res.adapterPath ? fileSize(res.adapterPath) : 0,
        metrics: { adapter: adapter.id, scale: b.scale },
      });
      return c.json({ model: out.name, version: v.version }, 200);
    }) as never,
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
    (async (c: Context<AppEnv>) => {
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
      const cfgText = cfgPart instanceof File ? (cfgPart.size > 1024 * 1024 ? null : await cfgPart.text()) : String(cfgPart);
      if (cfgText === null || cfgText.length > 1024 * 1024) throw new ProblemError(400, 'adapter_config.json over 1 MiB');
      let cfgJson: unknown;
      try {
        cfgJson = JSON.parse(cfgText);
      } catch {
        throw new ProblemError(400, 'adapter_config.json is not JSON', { errors: [{ path: 'adapter_config.json', message: 'not JSON' }] });
      }
      let cfg: ParsedPeftConfig;
      try {
        cfg = parsePeftConfig(cfgJson);
      } catch (e) {
        if (!(e instanceof PeftError)) throw e;
        throw new ProblemError(400, `adapter_config.json is not a usable PEFT LoRA config: ${e.message}`, { errors: [{ path: e.path, message: e.message }] });
      }
      const m = model as File;
      const q = quotasOf(d, t);
      if ((await tenantStoredBytes(d.db, t.id)) + m.size > q.stored_bytes) {
        throw new ProblemError(429, `stored bytes quota of ${q.stored_bytes} would be exceeded`, { headers: { 'retry-after': '3600' }, type: 'quota-exceeded' });
      }
      const id = newId('adp');
      const staged = await d.store.stageAdapter(id, m);
      try {
        await checkSafetensors(staged.weightsPath);
        let config: Record<string, unknown> = { ...storedPeftConfig(cfg) };
        if (d.services.adapterValidator) config = (await d.services.adapterValidator.validate({ config: cfgJson, safetensorsPath: staged.weightsPath })).config;
        await staged.install(config);
        const bytes = fs.statSync(staged.weightsPath).size;
        const sha256 = crypto.createHash('sha256').update(new Uint8Array(await Bun.file(staged.weightsPath).arrayBuffer())).digest('hex');
        await createAdapter(d.db, { id, tenantId: t.id, config, path: staged.dir, sha256, bytes });
        return c.json({ id }, 201);
      } catch (e) {
        await staged.discard();
        throw e;
      }
    }) as never,
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
