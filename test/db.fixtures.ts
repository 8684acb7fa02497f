// Test databases: a fresh PGlite in a temp dir, and (when DATABASE_TEST_URL is set) a fresh
// database `t_<random>` on the Postgres server, dropped afterwards. Runs never collide.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import pg from 'pg';
import { openDatabase, type Database } from '../src/db/index.ts';

export interface TestDb {
  database: Database;
  url?: string;
  dataDir: string;
  cleanup(): Promise<void>;
}

export const SERVER_URL = process.env.DATABASE_TEST_URL;

export const tiers: { name: string; make: () => Promise<TestDb> }[] = [
  { name: 'pglite', make: makePglite },
  ...(SERVER_URL ? [{ name: 'postgres', make: makePostgres }] : []),
];

export function tempDir(prefix = 'cola-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export async function makePglite(): Promise<TestDb> {
  const dataDir = tempDir();
  const database = await openDatabase({ dataDir });
  await database.migrate();
  return {
    database,
    dataDir,
    async cleanup() {
      await database.close();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** A new empty database on the test server; returns its URL. */
export async function createServerDatabase(): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `t_${crypto.randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: SERVER_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const u = new URL(SERVER_URL!);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: SERVER_URL });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
      await c.end();
    },
  };
}

export async function makePostgres(): Promise<TestDb> {
  const { url, drop } = await createServerDatabase();
  const dataDir = tempDir();
  const database = await openDatabase({ dataDir, databaseUrl: url });
  await database.migrate();
  return {
    database,
    url,
    dataDir,
    async cleanup() {
      await database.close();
      await drop();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
