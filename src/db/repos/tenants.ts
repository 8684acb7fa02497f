import { and, eq, isNull, sql } from 'drizzle-orm';
import type { Db } from '../index.ts';
import { apiKeys, tenants, type Tenant } from '../schema.ts';
import { hashKey, keyPrefix, newApiKey, newId, sameHash } from '../ids.ts';
import type { Quotas } from '../../config.ts';

export async function createTenant(
  db: Db,
  input: { name: string; quotas?: Partial<Quotas> },
): Promise<{ tenant: Tenant; apiKey: string; keyId: string }> {
  return db.transaction(async (tx) => {
    const [tenant] = await tx
      .insert(tenants)
      .values({ id: newId('ten'), name: input.name, quotas: input.quotas ?? {} })
      .returning();
    const k = await insertKey(tx, tenant!.id);
    return { tenant: tenant!, apiKey: k.apiKey, keyId: k.keyId };
  });
}

async function insertKey(db: Db, tenantId: string): Promise<{ keyId: string; apiKey: string }> {
  const k = newApiKey();
  const keyId = newId('key');
  await db.insert(apiKeys).values({ id: keyId, tenantId, prefix: k.prefix, hash: k.hash });
  return { keyId, apiKey: k.key };
}

export async function createKey(db: Db, tenantId: string): Promise<{ keyId: string; apiKey: string } | null> {
  const t = await getTenant(db, tenantId);
  if (!t) return null;
  return insertKey(db, tenantId);
}

/** Revoke a key; false when there is no such (unrevoked) key. */
export async function revokeKey(db: Db, keyId: string): Promise<boolean> {
  const r = await db
    .update(apiKeys)
    .set({ revokedAt: new Date() })
    .where(and(eq(apiKeys.id, keyId), isNull(apiKeys.revokedAt)))
    .returning({ id: apiKeys.id });
  return r.length > 0;
}

export async function getTenant(db: Db, id: string): Promise<Tenant | null> {
  const [t] = await db.select().from(tenants).where(eq(tenants.id, id));
  return t ?? null;
}

export async function getTenantByName(db: Db, name: string): Promise<Tenant | null> {
  const [t] = await db.select().from(tenants).where(eq(tenants.name, name));
  return t ?? null;
}

export async function countTenants(db: Db): Promise<number> {
  const [r] = await db.select({ n: sql<number>`count(*)::int` }).from(tenants);
  return Number(r?.n ?? 0);
}

/** The tenant owning an unrevoked key, compared by hash in constant time; null otherwise. */
export async function findTenantByKey(db: Db, key: string): Promise<Tenant | null> {
  if (key.length < 16 || key.length > 256) return null;
  const want = hashKey(key);
  const rows = await db
    .select({ hash: apiKeys.hash, tenant: tenants })
    .from(apiKeys)
    .innerJoin(tenants, eq(apiKeys.tenantId, tenants.id))
    .where(and(eq(apiKeys.prefix, keyPrefix(key)), isNull(apiKeys.revokedAt)));
  let found: Tenant | null = null;
  for (const r of rows) if (sameHash(r.hash, want)) found = r.tenant;
  return found;
}

/** Every tenant, oldest first (the admin's list). */
export async function listTenants(db: Db): Promise<Tenant[]> {
  return db.select().from(tenants).orderBy(tenants.createdAt, tenants.id);
}
