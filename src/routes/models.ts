import { createRoute, z } from '@hono/zod-openapi';
import type { App, AppDeps } from './deps.ts';
import { problems, ProblemError } from './problem.ts';
import { absPath, iso, ModelName, tenantOf, VersionParam } from './common.ts';
import { chargedBytes, findModel, listModels, listVersions } from '../db/repos/models.ts';
import { exportAdapter, exportWeights, importModel, type ExportedFile } from '../usecases/models.ts';

const ModelSummary = z.object({
  name: z.string(),
  owner: z.enum(['shared', 'tenant']),
  architecture: z.string(),
  params: z.number(),
  latest_version: z.number().nullable(),
});

const VersionView = z.object({
  version: z.number(),
  parent: z.object({ model: z.string(), version: z.number() }).nullable(),
  kind: z.enum(['base', 'knot', 'merge']),
  job_id: z.string().optional(),
  link: z.number().optional(),
  rank: z.number().optional(),
  /** sha256 and length of the safetensors file GET …/weights serves. */
  sha256: z.string(),
  bytes: z.number(),
  /** What the version counts in the tenant's stored bytes: the tensor objects it adds to its parent's, plus its adapter file (its freed_bytes when deleted). */
  stored_bytes: z.number(),
  created_at: z.string(),
  metrics: z.record(z.string(), z.unknown()).optional(),
});

/** Weight precision on import: the checkpoint's own ("auto") or converted (f16/bf16 round to nearest even). */
const WeightsDtype = z.enum(['auto', 'f32', 'f16', 'bf16']);
const ImportJson = z.object({ name: ModelName, source: z.object({ path: z.string().min(1).max(4096) }).strict(), dtype: WeightsDtype.optional() }).strict();

const MAX_IMPORT_FILES = 16;
const UPLOAD_NAME = /^[A-Za-z0-9._-]{1,128}$/;

/** Problems with the names of uploaded model files: each must be a plain file name (no folder, not "." or ".."), once. */
export function uploadNameErrors(names: string[]): { path: string; message: string }[] {
  const errors: { path: string; message: string }[] = [];
  const seen = new Set<string>();
  names.forEach((n, i) => {
    const where = `files[${i}]`;
    if (!UPLOAD_NAME.test(n)) errors.push({ path: where, message: `"${n.slice(0, 140)}" is not a plain file name (1-128 of A-Z a-z 0-9 . _ -, no folders)` });
    else if (/^\.+$/.test(n)) errors.push({ path: where, message: `"${n}" is not a file name` });
    else if (seen.has(n)) errors.push({ path: where, message: `"${n}" appears twice` });
    seen.add(n);
  });
  return errors;
}

/** Streams a file on disk, or one produced as a stream (a manifest version's weights), with its exact length. */
function fileResponse(x: ExportedFile): Response {
  const f = 'path' in x ? Bun.file(x.path) : null;
  return new Response(f ? f.stream() : 'stream' in x ? x.stream() : null, {
    status: 200,
    headers: {
      'content-type': x.contentType,
      'content-length': String(f ? f.size : 'size' in x ? x.size : 0),
      'content-disposition': `attachment; filename="${x.filename.replace(/[^A-Za-z0-9._-]/g, '_')}"`,
    },
  });
}

export function modelRoutes(app: App, d: AppDeps) {
  app.openapi(
    createRoute({
      method: 'get',
      path: '/models',
      tags: ['models'],
      summary: 'Models the tenant can use: its own and the shared base models',
      responses: { 200: { description: 'models', content: { 'application/json': { schema: z.object({ data: z.array(ModelSummary) }) } } }, ...problems(401) },
    }),
    async (c) => {
      const rows = await listModels(d.db, tenantOf(c).id);
      return c.json(
        {
          data: rows.map((m) => ({
            name: m.name,
            owner: m.tenantId ? ('tenant' as const) : ('shared' as const),
            architecture: m.architecture,
            params: m.params,
            latest_version: m.latestVersion,
          })),
        },
        200,
      );
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/models',
      tags: ['models'],
      summary: 'Import a model (HF folder or llama2.c checkpoint) from a server path or a multipart upload',
      request: {
        body: {
          required: true,
          content: {
            // Documentation only (the handler parses either form and validates with ImportJson / ModelName).
            'application/json': {
              schema: { type: 'object', properties: { name: { type: 'string' }, source: { type: 'object', properties: { path: { type: 'string' } }, required: ['path'] }, dtype: { type: 'string', enum: ['auto', 'f32', 'f16', 'bf16'] } }, required: ['name', 'source'] },
            },
            'multipart/form-data': {
              schema: { type: 'object', properties: { name: { type: 'string' }, dtype: { type: 'string', enum: ['auto', 'f32', 'f16', 'bf16'] }, files: { type: 'array', items: { type: 'string', format: 'binary' } } }, required: ['name', 'files'] },
            },
          },
        },
      },
      responses: {
        201: { description: 'imported', content: { 'application/json': { schema: z.object({ name: z.string(), version: z.literal(0) }) } } },
        ...problems(400, 401, 409, 413, 415, 429, 501),
      },
    }),
    async (c) => {
      const t = tenantOf(c);
      const ct = (c.req.header('content-type') ?? '').toLowerCase();
      if (ct.startsWith('multipart/form-data')) {
        const form = await c.req.parseBody({ all: true }).catch(() => {
          throw new ProblemError(400, 'malformed multipart body');
        });
        const n = ModelName.safeParse(form['name']);
        if (!n.success) throw new ProblemError(400, 'field "name" is missing or invalid', { errors: [{ path: 'name', message: n.error.issues[0]!.message }] });
        let dtype: z.infer<typeof WeightsDtype> = 'auto';
        if (form['dtype'] !== undefined) {
          const dt = WeightsDtype.safeParse(form['dtype']);
          if (!dt.success) throw new ProblemError(400, 'field "dtype" must be auto, f32, f16 or bf16', { errors: [{ path: 'dtype', message: dt.error.issues[0]!.message }] });
          dtype = dt.data;
        }
        const uploads = Object.values(form).flat().filter((v): v is File => v instanceof File);
        if (uploads.length === 0 || uploads.length > MAX_IMPORT_FILES) throw new ProblemError(400, `upload 1 to ${MAX_IMPORT_FILES} model files`);
        const errors = uploadNameErrors(uploads.map((f) => f.name ?? ''));
        if (errors.length) throw new ProblemError(400, 'bad file names in the upload', { errors });
        return c.json(await importModel(d, t, { name: n.data, uploads, dtype }), 201);
      }
      const r = ImportJson.safeParse(await c.req.json().catch(() => {
        throw new ProblemError(400, 'Malformed JSON in request body');
      }));
      if (!r.success) throw new ProblemError(400, 'the request body is invalid', { errors: r.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })) });
      return c.json(await importModel(d, t, { name: r.data.name, sourcePath: absPath(d, r.data.source.path), dtype: r.data.dtype ?? 'auto' }), 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/models/{name}',
      tags: ['models'],
      summary: 'A model and its versions',
      request: { params: z.object({ name: ModelName }) },
      responses: {
        200: {
          description: 'model',
          content: { 'application/json': { schema: ModelSummary.extend({ config: z.record(z.string(), z.unknown()), versions: z.array(VersionView) }) } },
        },
        ...problems(400, 401, 404),
      },
    }),
    async (c) => {
      const { name } = c.req.valid('param');
      const m = await findModel(d.db, tenantOf(c).id, name);
      if (!m) throw new ProblemError(404, `model "${name}" not found`);
      const vs = await listVersions(d.db, m.id);
      return c.json(
        {
          name: m.name,
          owner: m.tenantId ? ('tenant' as const) : ('shared' as const),
          architecture: m.architecture,
          params: m.params,
          latest_version: vs.length ? vs[vs.length - 1]!.version : null,
          config: m.config,
          versions: vs.map((v) => ({
            version: v.version,
            parent: v.parentModelName != null && v.parentVersion != null ? { model: v.parentModelName, version: v.parentVersion } : null,
            kind: v.kind,
            ...(v.jobId ? { job_id: v.jobId } : {}),
            ...(v.link != null ? { link: v.link } : {}),
            ...(v.rank != null ? { rank: v.rank } : {}),
            sha256: v.sha256,
            bytes: v.bytes,
            stored_bytes: chargedBytes(v),
            created_at: iso(v.createdAt)!,
            ...(v.metrics ? { metrics: v.metrics } : {}),
          })),
        },
        200,
      );
    },
  );

  const VersionParams = z.object({ name: ModelName, v: VersionParam });

  app.openapi(
    createRoute({
      method: 'get',
      path: '/models/{name}/versions/{v}/weights',
      tags: ['models'],
      summary: 'Merged weights of a version as one safetensors file (HF tensor names)',
      request: { params: VersionParams },
      responses: {
        200: { description: 'safetensors file', content: { 'application/octet-stream': { schema: z.string().openapi({ format: 'binary' }) } } },
        ...problems(400, 401, 404, 501),
      },
    }),
    (async (c: any) => {
      const { name, v } = c.req.valid('param');
      const f = await exportWeights(d, tenantOf(c), name, v);
      return fileResponse(f);
    }) as never,
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/models/{name}/versions/{v}/adapter',
      tags: ['models'],
      summary: 'PEFT adapter (zip of adapter_config.json + adapter_model.safetensors) that made a knot or merge version from its parent',
      request: { params: VersionParams },
      responses: {
        200: { description: 'PEFT adapter archive (zip)', content: { 'application/zip': { schema: z.string().openapi({ format: 'binary' }) } } },
        ...problems(400, 401, 404, 501),
      },
    }),
    (async (c: any) => {
      const { name, v } = c.req.valid('param');
      const f = await exportAdapter(d, tenantOf(c), name, v);
      return fileResponse(f);
    }) as never,
  );
}
