import { createRoute, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import type { App, AppDeps, AppEnv } from './deps.ts';
import { problems, ProblemError, zodErrors } from './problem.ts';
import { IdParam, iso, ModelName, quotasOf, tenantOf, VersionNumber } from './common.ts';
import { AnyExample } from './schemas.ts';
import { createFile, getFile, listFiles, tenantStoredBytes } from '../db/repos/files.ts';
import type { Example } from '../services.ts';
import { newId } from '../db/ids.ts';
import { JsonlTooLargeError, readJsonl, type LineCheck } from '../util/jsonl.ts';
import { evaluate } from '../usecases/evaluate.ts';

const FileView = z.object({ id: z.string(), examples: z.number(), bytes: z.number(), filename: z.string().nullable(), created_at: z.string() }).openapi('File');
const MAX_REPORTED = 20;
/** Normalised lines are written to disk in batches of this many bytes. */
const WRITE_BATCH = 1 << 20;

/** One JSONL line → an example, or the reason it is not one. */
export function checkExample(v: unknown): LineCheck<Example> {
  const r = AnyExample.safeParse(v);
  if (r.success) return { ok: true, value: r.data as Example };
  const first = r.error.issues[0];
  return { ok: false, message: 'not an example: expected {prompt, completion}, {text}, {prompt, candidates, label} or {messages}' + (first ? ` (${zodErrors([first])[0]!.path}: ${first.message})` : '') };
}

class QuotaExceeded extends Error {}

/**
 * Streams a JSONL body into `<store>/files/<id>.jsonl`: each valid line is re-serialised and
 * appended to a temporary file in batches (the body is never held whole), which is renamed into
 * place only when every line was valid. Every failure removes the temporary file.
 */
async function storeJsonl(
  d: AppDeps,
  id: string,
  body: ReadableStream<Uint8Array>,
  budget: number,
): Promise<{ path: string; bytes: number; examples: number }> {
  const file = d.store.newDataFile(id);
  try {
    let batch: string[] = [];
    let batchBytes = 0;
    let written = 0;
    const flush = () => {
      if (batch.length === 0) return;
      file.write(Buffer.from(batch.join('')));
      batch = [];
      batchBytes = 0;
    };
    const r = await readJsonl(
      body,
      { maxLineBytes: d.config.fileMaxLineBytes, maxExamples: d.config.maxFileExamples, maxBytes: d.config.fileLimitBytes, maxErrors: MAX_REPORTED },
      checkExample,
      async (e) => {
        const line = JSON.stringify(e) + '\n';
        const n = Buffer.byteLength(line);
        written += n;
        if (written > budget) throw new QuotaExceeded();
        batch.push(line);
        batchBytes += n;
        if (batchBytes >= WRITE_BATCH) flush();
      },
    );
    if (r.errors.length) throw new ProblemError(400, `the file has invalid lines (first ${r.errors.length} shown)`, { errors: r.errors });
    if (r.examples === 0) throw new ProblemError(400, 'the file has no examples');
    flush();
    file.commit();
    return { path: file.finalPath, bytes: written, examples: r.examples };
  } catch (e) {
    if (e instanceof JsonlTooLargeError) throw new ProblemError(413, `the file exceeds the limit of ${d.config.fileLimitBytes} bytes (COLA_FILE_LIMIT_BYTES)`);
    throw e;
  } finally {
    file.abort();
  }
}

const quotaProblem = (q: number) =>
  new ProblemError(429, `stored bytes quota of ${q} would be exceeded; delete data first`, { headers: { 'retry-after': '3600' }, type: 'quota-exceeded' });

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
    (async (c: Context<AppEnv>) => {
      const t = tenantOf(c);
      const ct = (c.req.header('content-type') ?? '').toLowerCase();
      const q = quotasOf(d, t);
      const budget = q.stored_bytes - (await tenantStoredBytes(d.db, t.id));
      if (budget <= 0) throw quotaProblem(q.stored_bytes);
      let body: ReadableStream<Uint8Array>;
      let filename: string | null = null;
      if (ct.startsWith('multipart/form-data')) {
        // Multipart is parsed by the runtime (the body limit middleware bounds it); the file part is then streamed.
        const form = await c.req.parseBody().catch(() => {
          throw new ProblemError(400, 'malformed multipart body');
        });
        const f = form['file'];
        if (!(f instanceof File)) throw new ProblemError(400, 'multipart field "file" (the JSONL file) is missing', { errors: [{ path: 'file', message: 'required' }] });
        filename = (f.name || '').slice(0, 255) || null;
        body = f.stream();
      } else {
        // The raw body is streamed: refuse a declared over-limit length before reading anything.
        const len = Number(c.req.header('content-length') ?? NaN);
        if (len > d.config.fileLimitBytes) throw new ProblemError(413, `the file exceeds the limit of ${d.config.fileLimitBytes} bytes (COLA_FILE_LIMIT_BYTES)`);
        body = c.req.raw.body ?? new Blob([]).stream();
      }
      const id = newId('file');
      let stored: { path: string; bytes: number; examples: number };
      try {
        stored = await storeJsonl(d, id, body, budget);
      } catch (e) {
        if (e instanceof QuotaExceeded) throw quotaProblem(q.stored_bytes);
        throw e;
      }
      try {
        const f = await createFile(d.db, { id, tenantId: t.id, filename, path: stored.path, bytes: stored.bytes, examples: stored.examples });
        return c.json({ id: f.id, examples: f.examples, bytes: f.bytes, filename: f.filename, created_at: iso(f.createdAt)! }, 201);
      } catch (e) {
        await d.store.discard(stored.path);
        throw e;
      }
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
    async (c) => c.json(await evaluate(d, tenantOf(c), c.req.valid('json'), c.req.raw.signal), 200),
  );
}
