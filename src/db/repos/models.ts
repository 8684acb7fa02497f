import { and, asc, desc, eq, isNull, or, sql } from 'drizzle-orm';
import type { Db } from '../index.ts';
import { models, modelVersions, type Model, type ModelVersion } from '../schema.ts';
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

export type NewVersion = Omit<ModelVersion, 'createdAt' | 'version'> & { version?: number };

/**
 * Insert an immutable version; without `version`, takes the next number (max + 1, at least 1).
 * Versions are never updated.
 */
export async function insertVersion(db: Db, v: NewVersion): Promise<ModelVersion> {
  const version =
    v.version ??
    Number(
      (
        await db
          .select({ n: sql<number>`coalesce(max(${modelVersions.version}), 0) + 1` })
          .from(modelVersions)
          .where(eq(modelVersions.modelId, v.modelId))
      )[0]!.n,
    );
  const [row] = await db.insert(modelVersions).values({ ...v, version }).returning();
  return row!;
}

/** Total bytes of the versions a tenant owns (for the stored-bytes quota). */
export async function tenantVersionBytes(db: Db, tenantId: string): Promise<number> {
  const [r] = await db
    .select({ n: sql<number>`coalesce(sum(${modelVersions.bytes}), 0)` })
    .from(modelVersions)
    .innerJoin(models, eq(models.id, modelVersions.modelId))
    .where(eq(models.tenantId, tenantId));
  return Number(r?.n ?? 0);
}
