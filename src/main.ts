// `bun run start`: parse config, open + migrate the database, first-start setup (local tenant,
// shared base model), HTTP server, job worker (unless COLA_WORKER=0), graceful shutdown.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { configFromEnvOrExit, type Config } from './config.ts';
import { openDatabase, type Database, type Db } from './db/index.ts';
import { countTenants, createTenant } from './db/repos/tenants.ts';
import { createModel, findSharedModel, insertBaseVersion } from './db/repos/models.ts';
import { createApp } from './app.ts';
import { Store } from './store/store.ts';
import { openQueue, type BossQueue } from './jobs/queue.ts';
import { JobWorker } from './jobs/worker.ts';
import { createServices } from './wiring.ts';

export const BASE_MODEL = {
  name: 'stories260K',
  /** Relative to the repository root. */
  weights: 'models/stories260K/stories260K.bin',
  tokenizer: 'models/stories260K/tok512.bin',
  tokenizerModel: 'models/stories260K/tok512.model',
};

/** With an empty database and no admin key: create tenant `local`, print its key once, write <data dir>/local.key (0600). */
export async function ensureLocalTenant(db: Db, config: Config, log: (m: string) => void): Promise<string | null> {
  if (config.adminKey) return null;
  if ((await countTenants(db)) > 0) return null;
  const { apiKey } = await createTenant(db, { name: 'local' });
  const keyFile = path.join(config.dataDir, 'local.key');
  fs.writeFileSync(keyFile, apiKey + '\n', { mode: 0o600 });
  fs.chmodSync(keyFile, 0o600);
  log(`created tenant "local"; its API key (shown once, also in ${keyFile}):\n  ${apiKey}`);
  return apiKey;
}

/** Register the bundled llama2.c checkpoint as the shared base model (metadata row + version 0). */
export async function registerBaseModel(db: Db, config: Config, log: (m: string) => void): Promise<boolean> {
  if (await findSharedModel(db, BASE_MODEL.name)) return true;
  const file = path.join(config.repoRoot, BASE_MODEL.weights);
  if (!fs.existsSync(file)) {
    log(`bundled model ${BASE_MODEL.weights} is missing; shared model "${BASE_MODEL.name}" not registered`);
    return false;
  }
  const bytes = fs.statSync(file).size;
  const buf = new Uint8Array(await Bun.file(file).arrayBuffer());
  const h = new Int32Array(buf.buffer, 0, 7);
  const [dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocabSigned, seq_len] = Array.from(h) as number[];
  const sha256 = crypto.createHash('sha256').update(buf).digest('hex');
  try {
    const m = await createModel(db, {
      tenantId: null,
      name: BASE_MODEL.name,
      architecture: 'llama',
      params: Math.floor((bytes - 28) / 4),
      config: {
        format: 'llama2c',
        dim,
        hidden_dim,
        n_layers,
        n_heads,
        n_kv_heads,
        vocab_size: Math.abs(vocabSigned!),
        shared_classifier: vocabSigned! > 0,
        seq_len,
        tokenizer: BASE_MODEL.tokenizer,
        tokenizer_model: BASE_MODEL.tokenizerModel,
      },
    });
    await insertBaseVersion(db, m.id, { sha256, bytes, path: BASE_MODEL.weights });
    log(`registered shared base model "${BASE_MODEL.name}"`);
  } catch (e) {
    // Another process on the same server registered it first.
    if (!(await findSharedModel(db, BASE_MODEL.name))) throw e;
  }
  return true;
}

export interface Running {
  config: Config;
  database: Database;
  server: ReturnType<typeof Bun.serve>;
  queue: BossQueue;
  worker: JobWorker | null;
  stop(): Promise<void>;
}

export async function start(config: Config, log: (m: string) => void = (m) => console.log(m)): Promise<Running> {
  fs.mkdirSync(config.dataDir, { recursive: true });
  const database = await openDatabase({ dataDir: config.dataDir, databaseUrl: config.databaseUrl });
  await database.migrate();
  await ensureLocalTenant(database.db, config, log);
  await registerBaseModel(database.db, config, log);
  const { services, engine } = createServices(config);
  const queue = await openQueue(database);
  const store = new Store(path.join(config.dataDir, 'store'));
  let worker: JobWorker | null = null;
  if (config.worker) {
    worker = new JobWorker({ db: database.db, config, store, runner: services.runner });
    await queue.work(worker, config.workerConcurrency);
    worker.startReclaimer();
  }
  const app = createApp({ config, db: database, engine, store, services, queue });
  const server = Bun.serve({
    port: config.port,
    hostname: config.host,
    fetch: app.fetch,
    idleTimeout: 120,
    // No limit in Bun itself: its own 413 is a bare response. The app limits every body per route
    // (COLA_BODY_LIMIT_BYTES, COLA_UPLOAD_LIMIT_BYTES, COLA_FILE_LIMIT_BYTES) and answers problem+json.
    maxRequestBodySize: Number.MAX_SAFE_INTEGER,
  });
  log(`listening on http://${server.hostname}:${server.port} (database: ${database.kind}, worker: ${config.worker ? 'on' : 'off'})`);
  let stopped: Promise<void> | null = null;
  const stop = () =>
    (stopped ??= (async () => {
      // Let in-flight requests finish (up to 5 s), then close what is left (e.g. SSE streams).
      await Promise.race([server.stop(), Bun.sleep(5000)]);
      await server.stop(true);
      if (worker) await worker.stop();
      await queue.stop().catch(() => {});
      await database.close();
    })());
  return { config, database, server, queue, worker, stop };
}

if (import.meta.main) {
  const config = configFromEnvOrExit();
  const running = await start(config).catch((e) => {
    console.error(`startup failed: ${e instanceof Error ? e.message : e}`);
    process.exit(1);
  });
  const shutdown = async (sig: string) => {
    console.log(`${sig}: shutting down`);
    const t = setTimeout(() => process.exit(1), 20_000);
    await running.stop();
    clearTimeout(t);
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}
