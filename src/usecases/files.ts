// POST /files: a JSONL file of examples, streamed into the store line by line (never held whole),
// each line checked against the example schema and re-serialised; the row is written once the
// file is complete. The quota is checked before the body is read (the caller opens it after).
import { createFile, tenantStoredBytes } from '../db/repos/files.ts';
import { newId } from '../db/ids.ts';
import type { FileRow, Tenant } from '../db/schema.ts';
import { ProblemError, zodErrors } from '../domain/errors.ts';
import { AnyExample } from '../domain/schemas.ts';
import type { Example } from '../services.ts';
import { JsonlTooLargeError, readJsonl, type LineCheck } from '../util/jsonl.ts';
import { quotaExceeded, quotasOf, type UseCaseDeps } from './common.ts';

/** Invalid lines reported at most. */
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
  d: UseCaseDeps,
  id: string,
  body: ReadableStream<Uint8Array>,
  budget: number,
): Promise<{ path: string; bytes: number; examples: number }> {
  const file = await d.store.newDataFile(id);
  try {
    let batch: string[] = [];
    let batchBytes = 0;
    let written = 0;
    const flush = async () => {
      if (batch.length === 0) return;
      const bytes = Buffer.from(batch.join(''));
      batch = [];
      batchBytes = 0;
      await file.write(bytes);
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
        if (batchBytes >= WRITE_BATCH) await flush();
      },
    );
    if (r.errors.length) throw new ProblemError(400, `the file has invalid lines (first ${r.errors.length} shown)`, { errors: r.errors });
    if (r.examples === 0) throw new ProblemError(400, 'the file has no examples');
    await flush();
    await file.commit();
    return { path: file.finalPath, bytes: written, examples: r.examples };
  } catch (e) {
    if (e instanceof JsonlTooLargeError) throw new ProblemError(413, `the file exceeds the limit of ${d.config.fileLimitBytes} bytes (COLA_FILE_LIMIT_BYTES)`);
    throw e;
  } finally {
    await file.abort();
  }
}


/**
 * Stores an uploaded JSONL file. `open` gives the body (and the client's file name) once the
 * quota allows an upload; it may throw a 4xx of its own (malformed multipart, declared over-limit).
 */
export async function uploadFile(d: UseCaseDeps, t: Tenant, open: () => Promise<{ body: ReadableStream<Uint8Array>; filename: string | null }>): Promise<FileRow> {
  const q = quotasOf(d, t);
  const budget = q.stored_bytes - (await tenantStoredBytes(d.db, t.id));
  if (budget <= 0) throw quotaExceeded(q.stored_bytes);
  const { body, filename } = await open();
  const id = newId('file');
  let stored: { path: string; bytes: number; examples: number };
  try {
    stored = await storeJsonl(d, id, body, budget);
  } catch (e) {
    if (e instanceof QuotaExceeded) throw quotaExceeded(q.stored_bytes);
    throw e;
  }
  try {
    return await createFile(d.db, { id, tenantId: t.id, filename, path: stored.path, bytes: stored.bytes, examples: stored.examples });
  } catch (e) {
    await d.store.discard(stored.path);
    throw e;
  }
}
