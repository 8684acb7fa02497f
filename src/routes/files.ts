import { createRoute, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import type { App, AppDeps, AppEnv } from './deps.ts';
import { problems, ProblemError, notImplemented, zodErrors } from './problem.ts';
import { IdParam, iso, ModelName, quotasOf, resolveVersion, tenantOf, VersionNumber } from './common.ts';
import { AnyExample } from './schemas.ts';
import { createFile, getFile, listFiles, tenantStoredBytes } from '../db/repos/files.ts';
import type { Example } from '../services.ts';

const FileView = z.object({ id: z.string(), examples: z.number(), bytes: z.number(), filename: z.string().nullable(), created_at: z.string() }).openapi('File');
const MAX_LINE = 1_000_000;
const MAX_REPORTED = 20;

/** Parse JSONL line by line: every non-blank line one example. Collects at most 20 errors. */
export function parseJsonl(text: string, maxExamples: number): { examples: Example[]; errors: { path: string; message: string }[] } {
  const examples: Example[] = [];
  const errors: { path: string; message: string }[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length && errors.length < MAX_REPORTED; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    if (line.trim() === '') continue;
    const where = `line ${i + 1}`;
    if (line.length > MAX_LINE) {
      errors.push({ path: where, message: `line longer than ${MAX_LINE} characters` });
      continue;
    }
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      errors.push({ path: where, message: 'not valid JSON' });
      continue;
    }
    const r = AnyExample.safeParse(v);
    if (!r.success) {
      errors.push({ path: where, message: 'not an example: expected {prompt, completion}, {text} or {prompt, candidates, label}' + (r.error.issues[0] ? ` (${zodErrors(r.error.issues)[0]!.path}: ${r.error.issues[0].message})` : '') });
      continue;
    }
    if (examples.length >= maxExamples) {
      errors.push({ path: where, message: `more than ${maxExamples} examples` });
      break;
    }
    examples.push(r.data as Example);
  }
  return { examples, errors };
}

export function fileRoutes(app: App, d: AppDeps) {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/files',
      tags: ['files'],
      summary: 'Upload JSONL examples (raw body application/jsonl, or multipart field "file")',
      request: {
        body: {
          required: true,
          content: {
            // Plain JSON Schema (documentation only): the body is parsed and validated line by line in the handler.
            'application/jsonl': { schema: { type: 'string', description: 'one JSON example per line' } },
            'multipart/form-data': { schema: { type: 'object', properties: { file: { type: 'string', format: 'binary' } }, required: ['file'] } },
          },
        },
      },
      responses: {
        201: { description: 'stored', content: { 'application/json': { schema: FileView } } },
        ...problems(400, 401, 413, 415, 429),
      },
    }),
    (async (c: Context<AppEnv>) => {
      const t = tenantOf(c);
      const ct = (c.req.header('content-type') ?? '').toLowerCase();
      let text: string;
      let filename: string | null = null;
      if (ct.startsWith('multipart/form-data')) {
        const form = await c.req.parseBody().catch(() => {
          throw new ProblemError(400, 'malformed multipart body');
        });
        const f = form['file'];
        if (!(f instanceof File)) throw new ProblemError(400, 'multipart field "file" (the JSONL file) is missing', { errors: [{ path: 'file', message: 'required' }] });
        filename = (f.name || '').slice(0, 255) || null;
        text = await f.text();
      } else {
        text = await c.req.text();
      }
      if (text.includes('\u0000')) throw new ProblemError(400, 'the file contains NUL bytes: not JSONL text');
      const { examples, errors } = parseJsonl(text, d.config.maxFileExamples);
      if (errors.length) throw new ProblemError(400, `the file has invalid lines (first ${errors.length} shown)`, { errors });
      if (examples.length === 0) throw new ProblemError(400, 'the file has no examples');
      const content = examples.map((e) => JSON.stringify(e)).join('\n') + '\n';
      const q = quotasOf(d, t);
      if ((await tenantStoredBytes(d.db, t.id)) + Buffer.byteLength(content) > q.stored_bytes) {
        throw new ProblemError(429, `stored bytes quota of ${q.stored_bytes} would be exceeded`, { headers: { 'retry-after': '3600' }, type: 'quota-exceeded' });
      }
      const f = await createFile(d.db, { tenantId: t.id, filename, content, examples: examples.length });
      return c.json({ id: f.id, examples: f.examples, bytes: f.bytes, filename: f.filename, created_at: iso(f.createdAt)! }, 201);
    }) as never,
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
    async (c) => {
      const t = tenantOf(c);
      const b = c.req.valid('json');
      const r = await resolveVersion(d, t, b.model, b.version ?? null);
      let examples = b.examples as Example[] | undefined;
      if (b.file) {
        const f = await getFile(d.db, t.id, b.file);
        if (!f) throw new ProblemError(404, `file ${b.file} not found`);
        examples = f.content.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Example);
      }
      if (!d.services.evaluation) throw notImplemented('evaluation');
      const out = await d.services.evaluation.evaluate({ tenant: tenantOf(c).id, target: r.resolved, examples: examples!, signal: c.req.raw.signal });
      return c.json(out, 200);
    },
  );
}
