import { and, asc, desc, eq, isNull, or, sql } from 'drizzle-orm';
import type { Db } from '../index.ts';
import { models, modelVersions, versionTensors, type Model, type ModelVersion } from '../schema.ts';
import { newId } from '../ids.ts';

export type ModelWithLatest = Model & { latestVersion: number | null };

/** Models a tenant can see: its own and the shared ones. */
export async function listModels(db: Db, tenantId: string): Promise<ModelWithLatest[]> {
  const rows = await db
    .select({
      m: models,
      latest: sql<number | null>`(select max(${modelVersions.version}) from ${modelVersions} where ${modelVersions.modelId} = ${models.id})`,
    })
    .from(models)
    .where(or(isNull(models.tenantId), eq(models.tenantId, tenantId)))
    .orderBy(asc(models.name));
  return rows.map((r) => ({ ...r.m, latestVersion: r.latest == null ? null : Number(r.latest) }));
}

/** A model by name as a tenant sees it: its own first, else a shared one. */
export async function findModel(db: Db, tenantId: string, name: string): Promise<Model | null> {
  const rows = await db
    .select()
    .from(models)
    .where(and(eq(models.name, name), or(isNull(models.tenantId), eq(models.tenantId, tenantId))));
  return rows.find((m) => m.tenantId === tenantId) ?? rows[0] ?? null;
}

export async function findSharedModel(db: Db, name: string): Promise<Model | null> {
  const [m] = await db.select().from(models).where(and(eq(models.name, name), isNull(models.tenantId)));
  return m ?? null;
}

type NewModel = { tenantId: string | null; name: string; architecture: string; params?: number; config?: Record<string, unknown> };

function modelRow(input: NewModel) {
  return { id: newId('mdl'), tenantId: input.tenantId, name: input.name, architecture: input.architecture, params: input.params ?? 0, config: input.config ?? {} };
}

export async function createModel(
  db: Db,
  input: { tenantId: string | null; name: string; architecture: string; params?: number; config?: Record<string, unknown> },
): Promise<Model> {
  const [m] = await db
    .insert(models)
    .values(modelRow(input))
    .returning();
  return m!;
}

/** The tenant's model of that name, created when missing (for job outputs). */
export async function ensureTenantModel(
  db: Db,
  input: { tenantId: string; name: string; architecture: string; params?: number; config?: Record<string, unknown> },
): Promise<Model> {
  await db
    .insert(models)
    .values(modelRow(input))
    .onConflictDoNothing();
  const [m] = await db
    .select()
    .from(models)
    .where(and(eq(models.tenantId, input.tenantId), eq(models.name, input.name)));
  return m!;
}

export async function listVersions(db: Db, modelId: string): Promise<(ModelVersion & { parentModelName: string | null })[]> {
  const rows = await db
    .select({ v: modelVersions, parentName: models.name })
    .from(modelVersions)
    .leftJoin(models, eq(models.id, modelVersions.parentModelId))
    .where(eq(modelVersions.modelId, modelId))
    .orderBy(asc(modelVersions.version));
  return rows.map((r) => ({ ...r.v, parentModelName: r.parentName ?? null }));
}

export async function getVersion(db: Db, modelId: string, version: number): Promise<ModelVersion | null> {
  const [v] = await db
    .select()
    .from(modelVersions)
    .where(and(eq(modelVersions.modelId, modelId), eq(modelVersions.version, version)));
  return v ?? null;
}

export async function latestVersion(db: Db, modelId: string): Promise<ModelVersion | null> {
  const [v] = await db
    .select()
    .from(modelVersions)
    .where(eq(modelVersions.modelId, modelId))
    .orderBy(desc(modelVersions.version))
    .limit(1);
  return v ?? null;
}

/** A tensor object a version references (model/snapshots.ts TensorRef). */
export type TensorRefRow = { digest: string; bytes: number };

export type NewVersion = Omit<ModelVersion, 'createdAt' | 'version' | 'adapterBytes' | 'addedBytes'> & {
  version?: number;
  adapterBytes?: number;
  /** A manifest version: the bytes its tensor objects add to its parent's (null or absent: a whole file). */
  addedBytes?: number | null;
  /** A manifest version: the distinct tensor objects it references (rows of version_tensors). */
  tensors?: readonly TensorRefRow[];
};

/**
 * Insert an immutable version; without `version`, takes the next number. Numbers come from
 * models.max_version (bumped in the same statement, which also serialises concurrent inserts into
 * one model), so a deleted version's number is never handed out again. Versions are never updated.
 */
/** Version 0 of a base model (the bundled one, or an import): its weights file, no lineage. */
export function insertBaseVersion(db: Db, modelId: string, file: { sha256: string; bytes: number; path: string; addedBytes?: number | null; tensors?: readonly TensorRefRow[] }): Promise<ModelVersion> {
  return insertVersion(db, { modelId, version: 0, parentModelId: null, parentVersion: null, kind: 'base', jobId: null, link: null, rank: null, ...file, adapterPath: null, metrics: null });
}

export async function insertVersion(db: Db, v: NewVersion): Promise<ModelVersion> {
  const next = v.version === undefined ? sql`${models.maxVersion} + 1` : sql`greatest(${models.maxVersion}, ${v.version})`;
  const [m] = await db.update(models).set({ maxVersion: next }).where(eq(models.id, v.modelId)).returning({ max: models.maxVersion });
  if (!m) throw new Error(`no model ${v.modelId}`);
  const version = v.version ?? m.max;
  const { tensors, ...row } = v;
  const [r] = await db.insert(modelVersions).values({ ...row, version }).returning();
  if (tensors && tensors.length > 0) {
    const distinct = new Map(tensors.map((t) => [t.digest, t.bytes]));
    await db.insert(versionTensors).values([...distinct].map(([digest, bytes]) => ({ modelId: v.modelId, version, digest, bytes })));
  }
  return r!;
}

/**
 * Bytes a version counts in its tenant's stored bytes: a manifest version the tensor objects it adds
 * to its parent (`added_bytes`), a whole-file version its file; plus the adapter file kept with it.
 */
export const chargedBytes = (v: Pick<ModelVersion, 'bytes' | 'addedBytes' | 'adapterBytes'>) => (v.addedBytes ?? v.bytes) + v.adapterBytes;

/** Total bytes of the versions a tenant owns (chargedBytes of each), for the stored-bytes quota. */
export async function tenantVersionBytes(db: Db, tenantId: string): Promise<number> {
  const [r] = await db
    .select({ n: sql<number>`coalesce(sum(coalesce(${modelVersions.addedBytes}, ${modelVersions.bytes}) + ${modelVersions.adapterBytes}), 0)` })
    .from(modelVersions)
    .innerJoin(models, eq(models.id, modelVersions.modelId))
    .where(eq(models.tenantId, tenantId));
  return Number(r?.n ?? 0);
}

/**
 * Serialises writers and deleters of store files shared by content (weights, adapter archives,
 * tokenizer folders): a transaction-scoped advisory lock per path, taken in a fixed order. A delete
 * holds them while it checks references and unlinks; a writer holds them while it checks that its
 * files still exist and inserts the row that references them.
 */
export async function lockStorePaths(tx: Db, paths: (string | null | undefined)[]): Promise<void> {
  for (const p of [...new Set(paths.filter((x): x is string => !!x))].sort()) {
    await tx.execute(sql`select pg_advisory_xact_lock(hashtext(${p}))`);
  }
}

/** A store file a new row would reference was removed meanwhile (by a delete): write it again. */
export class StoreObjectGoneError extends Error {
  constructor(path: string) {
    super(`a stored file was removed while it was being recorded (${path}); the work that wrote it must write it again`);
    this.name = 'StoreObjectGoneError';
  }
}

/**
 * The one lock between recording versions that reference tensor objects (shared: many at once) and
 * collecting tensor objects no version references (exclusive, db/repos/deletes.ts). Taken after
 * the path locks, in both. Its own key space (two int4 keys), apart from lockStorePaths' locks.
 */
export async function lockTensorObjects(tx: Db, mode: 'shared' | 'exclusive'): Promise<void> {
  if (mode === 'shared') await tx.execute(sql`select pg_advisory_xact_lock_shared(7301, 1)`);
  else await tx.execute(sql`select pg_advisory_xact_lock(7301, 1)`);
}

/**
 * Inside a transaction that records a manifest version: with the tensor-object lock held (shared),
 * check that its tensor objects (`paths`) exist; a collection that removed one meanwhile makes this
 * a StoreObjectGoneError (the writer writes them again), never a row naming a missing object.
 */
export async function guardTensorObjects(tx: Db, paths: readonly string[], exists: (p: string) => boolean): Promise<void> {
  if (paths.length === 0) return;
  await lockTensorObjects(tx, 'shared');
  for (const p of paths) if (!exists(p)) throw new StoreObjectGoneError(p);
}

/** Inside a transaction: lock `paths` and check they exist (with `exists`, e.g. fs.existsSync). */
export async function guardStorePaths(tx: Db, paths: (string | null | undefined)[], exists: (p: string) => boolean): Promise<void> {
  await lockStorePaths(tx, paths);
  for (const p of paths) if (p && !exists(p)) throw new StoreObjectGoneError(p);
}
