// Tenant-scoped deletes (DELETE /files/{id}, /adapters/{id}, /models/{name}/versions/{v},
// /models/{name}). Each runs in one transaction: it refuses (a `conflict` reason, → 409) while
// something still needs the data, deletes the rows, and hands the store paths no row references any
// more to `free`, which runs inside the transaction while the paths' advisory locks are held (so a
// writer recording a row for the same content-addressed file waits, then sees it gone and writes it
// again). The rules:
//  - a file or an adapter: not while a queued or running job of the tenant names it
//    (training_file, validation_file, init_adapter): the job reads it again when it resumes;
//  - a version: not while a queued or running job writes into its model or starts from that
//    version, and not while another version names it as its parent (delete the later one first, or
//    the whole model); the lineage of what stays is never broken;
//  - a model: not while a queued or running job writes into it or starts from one of its versions,
//    and not while a version of another model has a parent in it;
//  - never a shared base model (tenant_id null): the caller answers 409 before getting here.
// Version numbers are not reused after a delete (models.max_version).
// Tensor objects (per-tensor snapshots, model/snapshots.ts): the deleted versions' rows of
// version_tensors go with them (on delete cascade); each of their digests that no remaining row of
// any version (any model, any tenant) references is handed to `free` as a tensor to remove, with
// the tensor-object lock held exclusively (lockTensorObjects), so a writer recording a version that
// references the same object either committed first (the object stays) or finds it gone afterwards.
// `bytes` (→ freed_bytes) is what the versions counted in the tenant's stored bytes (chargedBytes).
import { and, eq, inArray, ne, or, sql } from 'drizzle-orm';
import type { Db } from '../index.ts';
import { adapters, files, jobs, models, modelVersions, versionTensors, type Model } from '../schema.ts';
import { ACTIVE_STATES } from '../../domain/job-states.ts';
import { chargedBytes, lockStorePaths, lockTensorObjects } from './models.ts';

export type DeleteResult = { ok: true; bytes: number } | { ok: false; conflict: string };
/**
 * Removes store files and tensor objects (by digest), called with their locks held; must not throw
 * for one already gone.
 */
export type FreeFiles = (paths: string[], tensors?: string[]) => Promise<void>;

/** Digests of the tensor objects the given versions reference (before they are deleted). */
async function digestsOf(tx: Db, modelId: string, version: number | null): Promise<string[]> {
  const cond = version === null ? eq(versionTensors.modelId, modelId) : and(eq(versionTensors.modelId, modelId), eq(versionTensors.version, version));
  const rows = await tx.selectDistinct({ d: versionTensors.digest }).from(versionTensors).where(cond);
  return rows.map((r) => r.d);
}

/** Of `digests`, those no remaining version references (after the delete, in the same transaction). */
async function unreferencedTensors(tx: Db, digests: string[]): Promise<string[]> {
  if (digests.length === 0) return [];
  const still = new Set<string>();
  for (let i = 0; i < digests.length; i += 1000) {
    const rows = await tx.selectDistinct({ d: versionTensors.digest }).from(versionTensors).where(inArray(versionTensors.digest, digests.slice(i, i + 1000)));
    for (const r of rows) still.add(r.d);
  }
  return digests.filter((d) => !still.has(d));
}

const active = inArray(jobs.status, [...ACTIVE_STATES]);

async function activeJobNaming(tx: Db, tenantId: string, field: 'training_file' | 'validation_file' | 'init_adapter', id: string, also?: 'validation_file') {
  const cond = also
    ? or(sql`${jobs.request}->>${field} = ${id}`, sql`${jobs.request}->>${also} = ${id}`)
    : sql`${jobs.request}->>${field} = ${id}`;
  const [j] = await tx.select({ id: jobs.id, status: jobs.status }).from(jobs).where(and(eq(jobs.tenantId, tenantId), active, cond)).limit(1);
  return j ?? null;
}

export async function deleteFile(db: Db, tenantId: string, id: string, free: FreeFiles): Promise<DeleteResult | null> {
  return db.transaction(async (tx) => {
    const t = tx;
    const [f] = await tx.select({ id: files.id, path: files.path, bytes: files.bytes }).from(files).where(and(eq(files.id, id), eq(files.tenantId, tenantId))).for('update');
    if (!f) return null;
    const j = await activeJobNaming(t, tenantId, 'training_file', id, 'validation_file');
    if (j) return { ok: false, conflict: `job ${j.id} (${j.status}) uses this file; cancel it or wait until it finishes` };
    await tx.delete(files).where(eq(files.id, id));
    if (f.path) await free([f.path]);
    return { ok: true, bytes: f.bytes };
  });
}

export async function deleteAdapter(db: Db, tenantId: string, id: string, free: FreeFiles): Promise<DeleteResult | null> {
  return db.transaction(async (tx) => {
    const t = tx;
    const [a] = await tx.select({ id: adapters.id, path: adapters.path, bytes: adapters.bytes }).from(adapters).where(and(eq(adapters.id, id), eq(adapters.tenantId, tenantId))).for('update');
    if (!a) return null;
    const j = await activeJobNaming(t, tenantId, 'init_adapter', id);
    if (j) return { ok: false, conflict: `job ${j.id} (${j.status}) starts from this adapter; cancel it or wait until it finishes` };
    await tx.delete(adapters).where(eq(adapters.id, id));
    await free([a.path]);
    return { ok: true, bytes: a.bytes };
  });
}

/** A queued or running job that writes into `model` or starts from it (one version, or any). */
async function activeJobOn(tx: Db, m: Model, version: number | null) {
  const base = version === null ? eq(jobs.baseModelId, m.id) : and(eq(jobs.baseModelId, m.id), eq(jobs.baseVersion, version));
  const writes = m.tenantId ? and(eq(jobs.tenantId, m.tenantId), eq(jobs.outputModel, m.name)) : sql`false`;
  const [j] = await tx.select({ id: jobs.id, status: jobs.status, out: jobs.outputModel }).from(jobs).where(and(active, or(writes, base))).limit(1);
  return j ? `job ${j.id} (${j.status}) ${j.out === m.name ? 'writes into' : 'starts from'} this model; cancel it or wait until it finishes` : null;
}

/** Store paths of the given versions (weights, adapters) and model configs (tokenizer folders) that no remaining row references. */
async function unreferenced(tx: Db, weights: string[], adapterFiles: string[], tokenizerDirs: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const p of new Set(weights)) {
    const [r] = await tx.select({ n: sql<number>`count(*)::int` }).from(modelVersions).where(or(eq(modelVersions.path, p), eq(modelVersions.adapterPath, p)));
    if (Number(r?.n ?? 0) === 0) out.push(p);
  }
  for (const p of new Set(adapterFiles)) {
    if (out.includes(p)) continue;
    const [r] = await tx.select({ n: sql<number>`count(*)::int` }).from(modelVersions).where(or(eq(modelVersions.path, p), eq(modelVersions.adapterPath, p)));
    if (Number(r?.n ?? 0) === 0) out.push(p);
  }
  for (const d of new Set(tokenizerDirs)) {
    const [r] = await tx
      .select({ n: sql<number>`count(*)::int` })
      .from(models)
      .where(or(sql`starts_with(${models.config}->>'tokenizer', ${d + '/'})`, sql`starts_with(${models.config}->>'tokenizer_model', ${d + '/'})`));
    if (Number(r?.n ?? 0) === 0) out.push(d);
  }
  return out;
}

export async function deleteVersion(db: Db, m: Model, version: number, free: FreeFiles): Promise<DeleteResult | null> {
  return db.transaction(async (tx) => {
    const t = tx;
    await tx.select({ id: models.id }).from(models).where(eq(models.id, m.id)).for('update');
    const [v] = await tx.select().from(modelVersions).where(and(eq(modelVersions.modelId, m.id), eq(modelVersions.version, version)));
    if (!v) return null;
    const busy = await activeJobOn(t, m, version);
    if (busy) return { ok: false, conflict: busy };
    const [child] = await tx
      .select({ model: models.name, version: modelVersions.version })
      .from(modelVersions)
      .innerJoin(models, eq(models.id, modelVersions.modelId))
      .where(and(eq(modelVersions.parentModelId, m.id), eq(modelVersions.parentVersion, version)))
      .limit(1);
    if (child) return { ok: false, conflict: `version ${child.version} of "${child.model}" has this version as its parent: delete it first, or the whole model` };
    await lockStorePaths(t, [v.path, v.adapterPath]);
    await lockTensorObjects(t, 'exclusive');
    const digests = await digestsOf(t, m.id, version);
    await tx.delete(modelVersions).where(and(eq(modelVersions.modelId, m.id), eq(modelVersions.version, version)));
    await free(await unreferenced(t, [v.path], v.adapterPath ? [v.adapterPath] : [], []), await unreferencedTensors(t, digests));
    return { ok: true, bytes: chargedBytes(v) };
  });
}

export async function deleteModel(db: Db, m: Model, free: FreeFiles): Promise<DeleteResult> {
  return db.transaction(async (tx) => {
    const t = tx;
    await tx.select({ id: models.id }).from(models).where(eq(models.id, m.id)).for('update');
    const busy = await activeJobOn(t, m, null);
    if (busy) return { ok: false, conflict: busy };
    const [child] = await tx
      .select({ model: models.name, version: modelVersions.version })
      .from(modelVersions)
      .innerJoin(models, eq(models.id, modelVersions.modelId))
      .where(and(eq(modelVersions.parentModelId, m.id), ne(modelVersions.modelId, m.id)))
      .limit(1);
    if (child) return { ok: false, conflict: `version ${child.version} of "${child.model}" has a version of this model as its parent: delete it first` };
    const vs = await tx.select().from(modelVersions).where(eq(modelVersions.modelId, m.id));
    const tokDirs = [m.config['tokenizer'], m.config['tokenizer_model']]
      .filter((x): x is string => typeof x === 'string' && x.startsWith('/'))
      .map((p) => p.slice(0, p.lastIndexOf('/')));
    await lockStorePaths(t, [...vs.flatMap((v) => [v.path, v.adapterPath]), ...tokDirs]);
    await lockTensorObjects(t, 'exclusive');
    const digests = await digestsOf(t, m.id, null);
    await tx.delete(models).where(eq(models.id, m.id)); // versions (and their tensor rows) go with it (on delete cascade)
    await free(await unreferenced(t, vs.map((v) => v.path), vs.flatMap((v) => (v.adapterPath ? [v.adapterPath] : [])), tokDirs), await unreferencedTensors(t, digests));
    return { ok: true, bytes: vs.reduce((n, v) => n + chargedBytes(v), 0) };
  });
}
