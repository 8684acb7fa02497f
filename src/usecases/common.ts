// What every use case needs: its dependencies (injected once at startup) and the lookups that
// several use cases and routes share (a tenant's quotas, a visible model version, shared names).
import path from 'node:path';
import type { Config, Quotas } from '../config.ts';
import type { Db } from '../db/index.ts';
import type { Model, ModelVersion, Tenant } from '../db/schema.ts';
import { findModel, findSharedModel, getVersion, latestVersion } from '../db/repos/models.ts';
import { ProblemError } from '../domain/errors.ts';
import type { JobQueue, ResolvedVersion, Services, StoredWeights } from '../services.ts';
import type { Store } from '../store/store.ts';

/** The dependencies of the use cases (AppDeps has them all). */
export interface UseCaseDeps {
  config: Config;
  db: Db;
  /** The one store every file goes through. */
  store: Store;
  services: Services;
  queue?: JobQueue;
}

export function quotasOf(d: Pick<UseCaseDeps, 'config'>, t: Tenant): Quotas {
  return { ...d.config.defaultQuotas, ...t.quotas };
}

export function absPath(d: Pick<UseCaseDeps, 'config'>, p: string): string {
  return path.isAbsolute(p) ? p : path.join(d.config.repoRoot, p);
}

/** Store paths of the tensor objects written weights reference (guarded when their row is inserted). */
export function tensorPaths(d: Pick<UseCaseDeps, 'store'>, w: StoredWeights): string[] {
  if (!w.tensors?.length) return [];
  const objects = d.store.objects();
  return w.tensors.map((t) => objects.pathOf(t.digest, 'tensor'));
}

/** A model version as the tenant sees it; 404 when the model or version is not visible. */
export async function resolveVersion(
  d: Pick<UseCaseDeps, 'config' | 'db'>,
  tenant: Tenant,
  name: string,
  version?: number | null,
): Promise<{ model: Model; version: ModelVersion; resolved: ResolvedVersion }> {
  const model = await findModel(d.db, tenant.id, name);
  if (!model) throw new ProblemError(404, `model "${name}" not found`);
  const v = version == null ? await latestVersion(d.db, model.id) : await getVersion(d.db, model.id, version);
  if (!v) throw new ProblemError(404, version == null ? `model "${name}" has no versions` : `version ${version} of model "${name}" not found`);
  return {
    model,
    version: v,
    resolved: {
      model: model.name,
      version: v.version,
      architecture: model.architecture,
      config: model.config,
      path: absPath(d, v.path),
      sha256: v.sha256,
    },
  };
}

/**
 * A tenant's own model may not take a shared model's name: the tenant's lookups prefer its own
 * model, so it would shadow the shared one for that tenant (and its jobs and /v1 clients).
 */
export async function refuseSharedName(d: Pick<UseCaseDeps, 'db'>, name: string, field: string): Promise<void> {
  if (await findSharedModel(d.db, name)) {
    throw new ProblemError(409, `"${name}" is the name of a shared model; choose another name for your model`, {
      errors: [{ path: field, message: 'names a shared model' }],
    });
  }
}

/** 429 when the tenant's stored bytes (plus `adding`) would pass its quota. */
export function quotaExceeded(limit: number, retryAfterS = 3600, detail = `stored bytes quota of ${limit} would be exceeded; delete data first`): ProblemError {
  return new ProblemError(429, detail, { headers: { 'retry-after': String(retryAfterS) }, type: 'quota-exceeded' });
}
