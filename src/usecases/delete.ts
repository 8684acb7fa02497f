// Deletes: a tenant frees what it stores (files, adapters, versions, models). The rules for what
// may go are in db/repos/deletes.ts (one transaction each); a refusal is 409 with the reason,
// another tenant's id or name is 404, a shared base model is 409. Store files and tensor objects
// are removed through the Store only when no row references them any more, and only inside the
// store root. `freed_bytes` is what stops counting in the tenant's stored bytes (db/repos/models.ts
// chargedBytes): for a manifest version the bytes of the tensor objects it added to its parent.
import { deleteAdapter, deleteFile, deleteModel, deleteVersion, type DeleteResult } from '../db/repos/deletes.ts';
import { findModel } from '../db/repos/models.ts';
import type { Tenant } from '../db/schema.ts';
import { ProblemError } from '../domain/errors.ts';
import type { UseCaseDeps } from './common.ts';

export interface Deleted {
  deleted: string;
  /** Bytes no longer counted against the tenant's stored-bytes quota. */
  freed_bytes: number;
}

function answer(r: DeleteResult | null, what: string): Deleted {
  if (!r) throw new ProblemError(404, `${what} not found`);
  if (!r.ok) throw new ProblemError(409, `${what} cannot be deleted now: ${r.conflict}`);
  return { deleted: what, freed_bytes: r.bytes };
}

const freer = (d: UseCaseDeps) => async (paths: string[], tensors: string[] = []) => {
  await d.store.free(paths);
  await d.store.freeTensors(tensors);
};

/** The tenant's own model of that name; a shared one is refused, an unknown one is 404. */
async function ownModel(d: UseCaseDeps, t: Tenant, name: string) {
  const m = await findModel(d.db, t.id, name);
  if (!m) throw new ProblemError(404, `model "${name}" not found`);
  if (m.tenantId !== t.id) throw new ProblemError(409, `"${name}" is a shared base model: only the operator can remove it`);
  return m;
}

export async function removeFile(d: UseCaseDeps, t: Tenant, id: string): Promise<Deleted> {
  return answer(await deleteFile(d.db, t.id, id, freer(d)), `file ${id}`);
}

export async function removeAdapter(d: UseCaseDeps, t: Tenant, id: string): Promise<Deleted> {
  return answer(await deleteAdapter(d.db, t.id, id, freer(d)), `adapter ${id}`);
}

export async function removeVersion(d: UseCaseDeps, t: Tenant, name: string, version: number): Promise<Deleted> {
  const m = await ownModel(d, t, name);
  return answer(await deleteVersion(d.db, m, version, freer(d)), `version ${version} of model "${name}"`);
}

export async function removeModel(d: UseCaseDeps, t: Tenant, name: string): Promise<Deleted> {
  const m = await ownModel(d, t, name);
  return answer(await deleteModel(d.db, m, freer(d)), `model "${name}"`);
}
