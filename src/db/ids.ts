import crypto from 'node:crypto';

/** Opaque random id with a type prefix, e.g. `job_3kF9...`. */
export function newId(prefix: string): string {
  return `${prefix}_${crypto.randomBytes(12).toString('base64url')}`;
}

/** A new API key (shown once) and what is stored for it. */
export function newApiKey(): { key: string; prefix: string; hash: string } {
  const key = `cola_${crypto.randomBytes(32).toString('base64url')}`;
  return { key, prefix: keyPrefix(key), hash: hashKey(key) };
}

export function keyPrefix(key: string): string {
  return key.slice(0, 13);
}

export function hashKey(key: string): string {
  return crypto.createHash('sha256').update(key).digest('hex');
}

/** Constant-time comparison of two hex sha256 digests. */
export function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && crypto.timingSafeEqual(x, y);
}
