// /files (upload, list, read) and POST /evaluate: route + handler; the work is in
// src/usecases/files.ts and src/usecases/evaluate.ts.
import { createRoute, z } from '@hono/zod-openapi';
import type { App, AppDeps } from './deps.ts';
import { problems, ProblemError } from './problem.ts';
import { IdParam, iso, ModelName, tenantOf, VersionNumber } from './common.ts';
import { AnyExample } from './schemas.ts';
import { getFile, listFiles } from '../db/repos/files.ts';
import { evaluate } from '../usecases/evaluate.ts';
import { uploadFile } from '../usecases/files.ts';

export { checkExample } from '../usecases/files.ts';

const FileView = z.object({ id: z.string(), examples: z.number(), bytes: z.number(), filename: z.string().nullable(), created_at: z.string() }).openapi('File');

export function fileRoutes(app: App, d: AppDeps) {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/files',
      tags: ['files'],
      summary: 'Upload JSONL examples (raw body application/jsonl, streamed; or multipart field "file")',
      request: {
        body: {
          required: true,
          content: {
            // Plain JSON Schema (documentation only): the body is parsed and validated line by line in the handler.
            'application/jsonl': { schema: { type: 'string', description: 'one JSON example per line' } },
            'application/x-ndjson': { schema: { type: 'string', description: 'the same as application/jsonl' } },
            'application/json': { schema: { type: 'string', description: 'the same as application/jsonl (one JSON example per line)' } },
            'text/plain': { schema: { type: 'string', description: 'the same as application/jsonl' } },
            'multipart/form-data': { schema: { type: 'object', properties: { file: { type: 'string', format: 'binary' } }, required: ['file'] } },
          },
        },
      },
      responses: {
        201: { description: 'stored', content: { 'application/json': { schema: FileView } } },
        ...problems(400, 401, 413, 415, 429),
      },
    }),
    async (c) => {
      const t = tenantOf(c);
      const ct = (c.req.header('content-type') ?? '').toLowerCase();
      const f = await uploadFile(d, t, async () => {
        if (ct.startsWith('multipart/form-data')) {
          // Multipart is parsed by the runtime (the body limit middleware bounds it); the file part is then streamed.
          const form = await c.req.parseBody().catch(() => {
            throw new ProblemError(400, 'malformed multipart body');
          });
          const f = form['file'];
          if (!(f instanceof File)) throw new ProblemError(400, 'multipart field "file" (the JSONL file) is missing', { errors: [{ path: 'file', message: 'required' }] });
          return { body: f.stream(), filename: (f.name || '').slice(0, 255) || null };
        }
        // The raw body is streamed: refuse a declared over-limit length before reading anything.
        const len = Number(c.req.header('content-length') ?? NaN);
        if (len > d.config.fileLimitBytes) throw new ProblemError(413, `the file exceeds the limit of ${d.config.fileLimitBytes} bytes (COLA_FILE_LIMIT_BYTES)`);
        return { body: c.req.raw.body ?? new Blob([]).stream(), filename: null };
      });
      return c.json({ id: f.id, examples: f.examples, bytes: f.bytes, filename: f.filename, created_at: iso(f.createdAt)! }, 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/files',
      tags: ['files'],
      summary: "The tenant's files",
      responses: { 200: { description: 'files', content: { 'application/json': { schema: z.object({ data: z.array(FileView) }) } } }, ...problems(401) },
    }),
    async (c) => {
      const rows = await listFiles(d.db, tenantOf(c).id);
      return c.json({ data: rows.map((f) => ({ id: f.id, examples: f.examples, bytes: f.bytes, filename: f.filename, created_at: iso(f.createdAt)! })) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/files/{id}',
      tags: ['files'],
      summary: 'A file (metadata)',
      request: { params: z.object({ id: IdParam }) },
      responses: { 200: { description: 'file', content: { 'application/json': { schema: FileView } } }, ...problems(400, 401, 404) },
    }),
    async (c) => {
      const f = await getFile(d.db, tenantOf(c).id, c.req.valid('param').id);
      if (!f) throw new ProblemError(404, 'file not found');
      return c.json({ id: f.id, examples: f.examples, bytes: f.bytes, filename: f.filename, created_at: iso(f.createdAt)! }, 200);
    },
  );

  const EvaluateBody = z
    .object({
      model: ModelName,
      version: VersionNumber.optional(),
      file: IdParam.optional(),
      examples: z.array(AnyExample).min(1).max(100_000).optional(),
    })
    .strict()
    .refine((b) => !b.file !== !b.examples, { message: 'give exactly one of "file" or "examples"', path: ['file'] })
    .openapi('EvaluateRequest');

  app.openapi(
    createRoute({
      method: 'post',
      path: '/evaluate',
      tags: ['evaluate'],
      summary: 'Evaluate a version: loss, and accuracy (candidates by summed log-likelihood) or F1',
      request: { body: { required: true, content: { 'application/json': { schema: EvaluateBody } } } },
      responses: {
        200: {
          description: 'scores',
          content: { 'application/json': { schema: z.object({ accuracy: z.number().optional(), f1: z.number().optional(), loss: z.number(), examples: z.number() }) } },
        },
        ...problems(400, 401, 404, 413, 415, 501, 503),
      },
    }),
    async (c) => c.json(await evaluate(d, tenantOf(c), c.req.valid('json'), c.req.raw.signal), 200),
  );
}
