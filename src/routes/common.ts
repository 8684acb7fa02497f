import path from 'node:path';
import { z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import type { AppDeps, AppEnv } from './deps.ts';
import type { Tenant, Model, ModelVersion } from '../db/schema.ts';
import { findModel, findSharedModel, getVersion, latestVersion } from '../db/repos/models.ts';
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
export const MAX_VERSION = 1_000_000;
export const VersionNumber = z.number().int().min(0).max(MAX_VERSION);
/**
 * A version in a path ("/versions/{v}"): canonical decimal only. A plain coercion took " ", "0x0"
 * and "0e0" as version 0, so one version had many URLs.
 */
export const VersionParam = z
  .string()
  .regex(/^(0|[1-9][0-9]{0,6})$/, 'must be a version number: decimal digits, no sign, spaces or leading zeros')
  .transform(Number)
  .pipe(VersionNumber);
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

/**
 * A tenant's own model may not take a shared model's name: the tenant's lookups prefer its own
 * model, so it would shadow the shared one for that tenant (and its jobs and /v1 clients).
 */
export async function refuseSharedName(d: AppDeps, name: string, field: string): Promise<void> {
  if (await findSharedModel(d.db, name)) {
    throw new ProblemError(409, `"${name}" is the name of a shared model; choose another name for your model`, {
      errors: [{ path: field, message: 'names a shared model' }],
    });
  }
}

/**
 * What a stream still owes once generation ends: the final text minus what the token events carried
 * (the decoder holds back an incomplete UTF-8 character until it ends; at the length limit it is
 * flushed into the text). Empty when a stop sequence cut text that was already sent.
 */
export function streamRemainder(sent: string, final: string): string {
  return final.length > sent.length && final.startsWith(sent) ? final.slice(sent.length) : '';
}
