import type { OpenAPIHono } from '@hono/zod-openapi';
import type { Config } from '../config.ts';
import type { Database, Db } from '../db/index.ts';
import type { Tenant } from '../db/schema.ts';
import type { EngineHealth, JobQueue, Services } from '../services.ts';

export type { JobQueue } from '../services.ts';
import type { Store } from '../store/store.ts';
import type { Metrics } from './metrics.ts';
import type { TokenBuckets } from './limits.ts';

export type { Store } from '../store/store.ts';

export interface AppOptions {
  config: Config;
  db: Database;
  engine?: EngineHealth;
  /** The store (or its root folder; default <dataDir>/store). */
  store?: Store | { root: string };
  services?: Services;
  queue?: JobQueue;
}

export interface AppDeps {
  config: Config;
  database: Database;
  db: Db;
  engine?: EngineHealth;
  store: Store;
  services: Services;
  queue?: JobQueue;
  metrics: Metrics;
  rate: TokenBuckets;
}

export type AppEnv = { Variables: { tenant: Tenant; deps: AppDeps } };
export type App = OpenAPIHono<AppEnv>;
