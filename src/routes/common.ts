import path from 'node:path';
import { z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import type { AppDeps, AppEnv } from './deps.ts';
import type { Tenant, Model, ModelVersion } from '../db/schema.ts';
import { findModel, getVersion, latestVersion } from '../db/repos/models.ts';
import type { ResolvedVersion } from '../services.ts';
import { ProblemError } from './problem.ts';
import type { Quotas } from '../config.ts';

export const tenantOf = (c: Context<AppEnv>): Tenant => c.get('tenant');

export function quotasOf(d: AppDeps, t: Tenant): Quotas {
  return { ...d.config.defaultQuotas, ...t.quotas };
}

export const ModelName = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, ".", "_", "-"; starting with a letter or digit');
export const VersionNumber = z.number().int().min(0).max(1_000_000);
export const IdParam = z.string().min(1).max(64).regex(/^[A-Za-z0-9_-]+$/, 'malformed id');

export function absPath(d: AppDeps, p: string): string {
  return path.isAbsolute(p) ? p : path.join(d.config.repoRoot, p);
}

/** A model version as the tenant sees it; 404 when the model or version is not visible. */
export async function resolveVersion(
  d: AppDeps,
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

export const iso = (d: Date | null | undefined) => (d ? new Date(d).toISOString() : null);
