import type { Context } from 'hono';
import type { AppEnv } from './deps.ts';
import type { Tenant } from '../db/schema.ts';

export { absPath, quotasOf, refuseSharedName, resolveVersion } from '../usecases/common.ts';

export const tenantOf = (c: Context<AppEnv>): Tenant => c.get('tenant');

export { IdParam, MAX_VERSION, ModelName, VersionNumber, VersionParam } from '../domain/schemas.ts';

export const iso = (d: Date | null | undefined) => (d ? new Date(d).toISOString() : null);

/**
 * What a stream still owes once generation ends: the final text minus what the token events carried
 * (the decoder holds back an incomplete UTF-8 character until it ends; at the length limit it is
 * flushed into the text). Empty when a stop sequence cut text that was already sent.
 */
export function streamRemainder(sent: string, final: string): string {
  return final.length > sent.length && final.startsWith(sent) ? final.slice(sent.length) : '';
}
