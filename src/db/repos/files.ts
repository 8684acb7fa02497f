import { and, desc, eq, sql } from 'drizzle-orm';
import type { Db } from '../index.ts';
import { adapters, files, type Adapter, type FileRow } from '../schema.ts';
import { newId } from '../ids.ts';
import { tenantVersionBytes } from './models.ts';
import { readStoredJsonl } from '../../util/jsonl.ts';

/** A file row: its examples either inline (`content`, small or legacy) or in the store at `path`. */
export async function createFile(
  db: Db,
  input: { id?: string; tenantId: string; filename: string | null; examples: number } & ({ content: string } | { path: string; bytes: number }),
): Promise<FileRow> {
  const [f] = await db
    .insert(files)
    .values({
      id: input.id ?? newId('file'),
      tenantId: input.tenantId,
      filename: input.filename,
      examples: input.examples,
      ...('content' in input ? { content: input.content, bytes: Buffer.byteLength(input.content) } : { path: input.path, bytes: input.bytes }),
    })
    .returning();
  return f!;
}

/** The examples of a file (validated when it was uploaded). */
export async function readFileExamples<T>(f: FileRow, maxBytes: number): Promise<T[]> {
  if (f.path) return readStoredJsonl<T>(f.path, maxBytes);
  return (f.content ?? '').split('\n').filter(Boolean).map((l) => JSON.parse(l) as T);
}

export async function getFile(db: Db, tenantId: string, id: string): Promise<FileRow | null> {
  const [f] = await db.select().from(files).where(and(eq(files.id, id), eq(files.tenantId, tenantId)));
  return f ?? null;
}

export async function listFiles(db: Db, tenantId: string): Promise<Omit<FileRow, 'content'>[]> {
  return db
    .select({
      id: files.id,
      tenantId: files.tenantId,
      filename: files.filename,
      path: files.path,
      examples: files.examples,
      bytes: files.bytes,
      createdAt: files.createdAt,
    })
    .from(files)
    .where(eq(files.tenantId, tenantId))
    .orderBy(desc(files.createdAt))
    .limit(1000);
}

export async function createAdapter(
  db: Db,
  input: { tenantId: string; config: Record<string, unknown>; path: string; sha256: string; bytes: number; id?: string },
): Promise<Adapter> {
  const [a] = await db
    .insert(adapters)
    .values({ id: input.id ?? newId('adp'), ...input })
    .returning();
  return a!;
}

export async function getAdapter(db: Db, tenantId: string, id: string): Promise<Adapter | null> {
  const [a] = await db.select().from(adapters).where(and(eq(adapters.id, id), eq(adapters.tenantId, tenantId)));
  return a ?? null;
}

/** Bytes a tenant stores: files, adapters and model versions it owns. */
export async function tenantStoredBytes(db: Db, tenantId: string): Promise<number> {
  const [f] = await db.select({ n: sql<number>`coalesce(sum(${files.bytes}), 0)` }).from(files).where(eq(files.tenantId, tenantId));
  const [a] = await db.select({ n: sql<number>`coalesce(sum(${adapters.bytes}), 0)` }).from(adapters).where(eq(adapters.tenantId, tenantId));
  return Number(f?.n ?? 0) + Number(a?.n ?? 0) + (await tenantVersionBytes(db, tenantId));
}
