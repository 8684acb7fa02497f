import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { createRoute, z } from '@hono/zod-openapi';
import type { App, AppDeps } from './deps.ts';
import { problems, ProblemError, notImplemented } from './problem.ts';
import { absPath, iso, ModelName, refuseSharedName, resolveVersion, tenantOf, VersionParam } from './common.ts';
import { createModel, findModel, insertVersion, listModels, listVersions } from '../db/repos/models.ts';
import { tenantStoredBytes } from '../db/repos/files.ts';
import { quotasOf } from './common.ts';

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
  sha256: z.string(),
  bytes: z.number(),
  created_at: z.string(),
  metrics: z.record(z.string(), z.unknown()).optional(),
});

const ImportJson = z.object({ name: ModelName, source: z.object({ path: z.string().min(1).max(4096) }).strict() }).strict();

const MAX_IMPORT_FILES = 16;

/** Server paths a tenant may import from: the repository's models/ and <data dir>/imports/. */
function importRoots(d: AppDeps): string[] {
  return [path.join(d.config.repoRoot, 'models'), path.join(d.config.dataDir, 'imports')];
}

function fileResponse(p: string, contentType: string, filename: string): Response {
  const f = Bun.file(p);
  return new Response(f.stream(), {
    status: 200,
    headers: {
      'content-type': contentType,
      'content-length': String(f.size),
      'content-disposition': `attachment; filename="${filename.replace(/[^A-Za-z0-9._-]/g, '_')}"`,
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
              schema: { type: 'object', properties: { name: { type: 'string' }, source: { type: 'object', properties: { path: { type: 'string' } }, required: ['path'] } }, required: ['name', 'source'] },
            },
            'multipart/form-data': {
              schema: { type: 'object', properties: { name: { type: 'string' }, files: { type: 'array', items: { type: 'string', format: 'binary' } } }, required: ['name', 'files'] },
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
      let name: string;
      let source: string;
      let cleanup: string | null = null;
      const uploadDir = path.join(d.store.root, 'uploads', crypto.randomBytes(8).toString('hex'));
      if (ct.startsWith('multipart/form-data')) {
        const form = await c.req.parseBody({ all: true }).catch(() => {
          throw new ProblemError(400, 'malformed multipart body');
        });
        const n = ModelName.safeParse(form['name']);
        if (!n.success) throw new ProblemError(400, 'field "name" is missing or invalid', { errors: [{ path: 'name', message: n.error.issues[0]!.message }] });
        name = n.data;
        const all = Object.values(form).flat().filter((v): v is File => v instanceof File);
        if (all.length === 0 || all.length > MAX_IMPORT_FILES) throw new ProblemError(400, `upload 1 to ${MAX_IMPORT_FILES} model files`);
        if (!d.services.importer) throw notImplemented('model import');
        fs.mkdirSync(uploadDir, { recursive: true });
        cleanup = uploadDir;
        for (const f of all) {
          const base = path.basename(f.name || '');
          if (!/^[A-Za-z0-9._-]{1,128}$/.test(base)) throw new ProblemError(400, `bad file name "${base}"`);
          await Bun.write(path.join(uploadDir, base), f);
        }
        source = uploadDir;
      } else {
        const r = ImportJson.safeParse(await c.req.json().catch(() => {
          throw new ProblemError(400, 'Malformed JSON in request body');
        }));
        if (!r.success) throw new ProblemError(400, 'the request body is invalid', { errors: r.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })) });
        name = r.data.name;
        const p = path.resolve(absPath(d, r.data.source.path));
        if (!importRoots(d).some((root) => p === root || p.startsWith(root + path.sep))) {
          throw new ProblemError(400, `source.path must lie under ${importRoots(d).join(' or ')}`);
        }
        source = p;
      }
      try {
        if (!d.services.importer) throw notImplemented('model import');
        if (await findModel(d.db, t.id, name).then((m) => m?.tenantId === t.id)) throw new ProblemError(409, `model "${name}" already exists`);
        await refuseSharedName(d, name, 'name');
        const q = quotasOf(d, t);
        if ((await tenantStoredBytes(d.db, t.id)) >= q.stored_bytes) {
          throw new ProblemError(429, `stored bytes quota of ${q.stored_bytes} reached`, { headers: { 'retry-after': '3600' }, type: 'quota-exceeded' });
        }
        const imp = await d.services.importer.import({ source, storeDir: path.join(d.store.root, 'weights') });
        const m = await createModel(d.db, { tenantId: t.id, name, architecture: imp.architecture, params: imp.params, config: imp.config });
        await insertVersion(d.db, {
          modelId: m.id,
          version: 0,
          parentModelId: null,
          parentVersion: null,
          kind: 'base',
          jobId: null,
          link: null,
          rank: null,
          sha256: imp.weights.sha256,
          bytes: imp.weights.bytes,
          path: imp.weights.path,
          adapterPath: null,
          metrics: null,
        });
        return c.json({ name, version: 0 as const }, 201);
      } finally {
        if (cleanup) fs.rmSync(cleanup, { recursive: true, force: true });
      }
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
      const r = await resolveVersion(d, tenantOf(c), name, v);
      if (d.services.exporter) {
        const f = await d.services.exporter.weightsFile(r.resolved);
        return fileResponse(f.path, f.contentType, f.filename);
      }
      if (r.resolved.path.endsWith('.safetensors') && fs.existsSync(r.resolved.path)) {
        return fileResponse(r.resolved.path, 'application/octet-stream', `${name}-v${v}.safetensors`);
      }
      throw notImplemented('safetensors export of this version (stored in another format)');
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
      const r = await resolveVersion(d, tenantOf(c), name, v);
      if (r.version.kind === 'base') throw new ProblemError(404, `version ${v} of "${name}" is a base version: it has no adapter`);
      if (d.services.exporter) {
        const f = await d.services.exporter.adapterFile({ ...r.resolved, adapterPath: r.version.adapterPath ? absPath(d, r.version.adapterPath) : null });
        if (!f) throw new ProblemError(404, `no adapter was kept for version ${v} of "${name}"`);
        return fileResponse(f.path, f.contentType, f.filename);
      }
      const p = r.version.adapterPath ? absPath(d, r.version.adapterPath) : null;
      if (p && p.endsWith('.zip') && fs.existsSync(p)) return fileResponse(p, 'application/zip', `${name}-v${v}-adapter.zip`);
      throw notImplemented('adapter export');
    }) as never,
  );
}
