// openDatabase(config): embedded PGlite in <data dir>/pgdata by default, a Postgres server when
// DATABASE_URL is set. Both give the same typed drizzle database (Postgres dialect, one schema).
import fs from 'node:fs';
import path from 'node:path';
import { sql } from 'drizzle-orm';
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core';
import * as schema from './schema.ts';

export type Schema = typeof schema;
export type Db = PgDatabase<PgQueryResultHKT, Schema>;

export const MIGRATIONS_DIR = path.resolve(import.meta.dir, '../../migrations');

export interface Database {
  db: Db;
  kind: 'pglite' | 'postgres';
  /** Options for pg-boss: `{db}` adapter on PGlite, a connection string on the server. */
  bossOptions(): Promise<{ db?: unknown; connectionString?: string }>;
  migrate(): Promise<void>;
  ping(): Promise<boolean>;
  close(): Promise<void>;
}

export interface DatabaseOptions {
  dataDir: string;
  databaseUrl?: string;
  /** Pool size for a Postgres server. */
  poolMax?: number;
}

export async function openDatabase(opts: DatabaseOptions): Promise<Database> {
  if (opts.databaseUrl) return openPostgres(opts.databaseUrl, opts.poolMax ?? 10);
  return openPglite(path.join(opts.dataDir, 'pgdata'));
}

async function ping(db: Db): Promise<boolean> {
  try {
    await db.execute(sql`select 1`);
    return true;
  } catch {
    return false;
  }
}

/** A close() that runs `end` once, however often it is called. */
function closeOnce(end: () => Promise<void>): () => Promise<void> {
  let closed = false;
  return async () => {
    if (closed) return;
    closed = true;
    await end();
  };
}

async function openPglite(dir: string): Promise<Database> {
  fs.mkdirSync(dir, { recursive: true });
  const { PGlite } = await import('@electric-sql/pglite');
  const { drizzle } = await import('drizzle-orm/pglite');
  const client = new PGlite(dir);
  await client.waitReady;
  const db = drizzle(client, { schema });
  return {
    db: db as unknown as Db,
    kind: 'pglite',
    async bossOptions() {
      const { fromPglite } = await import('pg-boss');
      return { db: fromPglite(client as never) };
    },
    async migrate() {
      const { migrate } = await import('drizzle-orm/pglite/migrator');
      await migrate(db, { migrationsFolder: MIGRATIONS_DIR });
    },
    ping: () => ping(db as unknown as Db),
    close: closeOnce(() => client.close()),
  };
}

async function openPostgres(url: string, max: number): Promise<Database> {
  const pg = (await import('pg')).default;
  const { drizzle } = await import('drizzle-orm/node-postgres');
  const pool = new pg.Pool({ connectionString: url, max });
  pool.on('error', (err) => console.error(`postgres pool error: ${err.message}`));
  const db = drizzle(pool, { schema });
  return {
    db: db as unknown as Db,
    kind: 'postgres',
    async bossOptions() {
      return { connectionString: url };
    },
    async migrate() {
      const { migrate } = await import('drizzle-orm/node-postgres/migrator');
      // Several processes may start at once on one server: serialise migrations with an
      // advisory lock on one connection.
      const c = await pool.connect();
      try {
        await c.query('select pg_advisory_lock(7428101)');
        await migrate(drizzle(c, { schema }), { migrationsFolder: MIGRATIONS_DIR });
      } finally {
        await c.query('select pg_advisory_unlock(7428101)').catch(() => {});
        c.release();
      }
    },
    ping: () => ping(db as unknown as Db),
    close: closeOnce(() => pool.end()),
  };
}

export { schema };
