// Configuration from the environment, parsed and checked once at startup. A bad value stops
// the process with a message naming the variable (see `loadConfig` / `configFromEnvOrExit`).
import { z } from 'zod';
import path from 'node:path';

const int = (min: number, max: number, dflt: number) =>
  z.coerce.number().int().min(min).max(max).default(dflt);

const boolish = (dflt: boolean) =>
  z
    .enum(['0', '1', 'true', 'false', 'yes', 'no', 'on', 'off'])
    .default(dflt ? '1' : '0')
    .transform((v) => v === '1' || v === 'true' || v === 'yes' || v === 'on');

/** Largest COLA_FILE_LIMIT_BYTES; also the bound when a stored file is read back. */
export const MAX_FILE_LIMIT_BYTES = 8 * 1024 * 1024 * 1024;

/**
 * Device memory kept out of every share of the engine budget: generation's activations, logits and
 * small buffers (uniform arena, flags), which neither the KV pools nor the model cache count.
 */
export const GPU_MEMORY_MARGIN_BYTES = 128 * 1024 * 1024;

/** Environment variables understood by the service (all optional). */
export const EnvSchema = z.object({
  PORT: int(0, 65535, 8080),
  HOST: z.string().min(1).max(255).default('127.0.0.1'),
  COLA_DATA_DIR: z.string().min(1).max(4096).default('./data'),
  DATABASE_URL: z
    .string()
    .max(4096)
    .regex(/^postgres(ql)?:\/\//, 'must be a postgres:// or postgresql:// URL')
    .optional()
    .or(z.literal('').transform(() => undefined)),
  COLA_ADMIN_KEY: z.string().min(16, 'must be at least 16 characters').max(512).optional()
    .or(z.literal('').transform(() => undefined)),
  COLA_WORKER: boolish(true),
  COLA_BODY_LIMIT_BYTES: int(1024, 1024 * 1024 * 1024, 16 * 1024 * 1024),
  COLA_UPLOAD_LIMIT_BYTES: int(1024, 8 * 1024 * 1024 * 1024, 512 * 1024 * 1024),
  COLA_FILE_LIMIT_BYTES: int(1024, MAX_FILE_LIMIT_BYTES, 64 * 1024 * 1024),
  COLA_FILE_MAX_LINE_BYTES: int(64, 64 * 1024 * 1024, 1024 * 1024),
  COLA_MAX_FILE_EXAMPLES: int(1, 10_000_000, 100_000),
  COLA_QUOTA_RPM: int(1, 1_000_000, 600),
  COLA_QUOTA_CONCURRENT_JOBS: int(1, 1000, 2),
  COLA_QUOTA_STORED_BYTES: int(1, Number.MAX_SAFE_INTEGER, 10 * 1024 * 1024 * 1024),
  COLA_QUOTA_MAX_TOKENS: int(1, 1_000_000, 4096),
  COLA_GENERATE_CONCURRENCY: int(1, 4096, 32),
  COLA_GENERATE_QUEUE: int(0, 100_000, 256),
  COLA_KV_CACHE_BYTES: int(1 << 20, Number.MAX_SAFE_INTEGER, 64 * 1024 * 1024),
  COLA_PREFILL_CHUNK: z.coerce.number().int().min(1).max(65_536).optional().or(z.literal('').transform(() => undefined)),
  COLA_MODEL_CACHE_BYTES: int(1, Number.MAX_SAFE_INTEGER, 1024 * 1024 * 1024),
  COLA_TRAIN_SHARE: z.coerce.number().min(0).max(1).default(0.3),
  COLA_GPU_MEMORY_BUDGET_BYTES: int(1, Number.MAX_SAFE_INTEGER, 2 * 1024 * 1024 * 1024),
  COLA_WORKER_CONCURRENCY: int(1, 64, 4),
  COLA_TRAIN_MEMORY_BYTES: z.coerce.number().int().min(1).max(Number.MAX_SAFE_INTEGER).optional(),
  COLA_LEASE_MS: int(1000, 3_600_000, 30_000),
  COLA_HEARTBEAT_MS: int(100, 600_000, 5_000),
  COLA_RECLAIM_INTERVAL_MS: int(100, 600_000, 5_000),
  COLA_MAX_JOB_ATTEMPTS: int(1, 100, 5),
  COLA_LOG_REQUESTS: boolish(false),
});

export type Env = z.infer<typeof EnvSchema>;

export interface Quotas {
  /** Requests per minute per tenant (token bucket held in this process). */
  requests_per_minute: number;
  concurrent_jobs: number;
  stored_bytes: number;
  max_tokens_per_request: number;
}

export interface Config {
  port: number;
  host: string;
  dataDir: string;
  databaseUrl?: string;
  adminKey?: string;
  worker: boolean;
  /** JSON request bodies. */
  bodyLimitBytes: number;
  /** Model and adapter uploads (POST /models multipart, POST /adapters). */
  uploadLimitBytes: number;
  /** Training/evaluation files (POST /files): the body, streamed, and one line of it. */
  fileLimitBytes: number;
  fileMaxLineBytes: number;
  maxFileExamples: number;
  defaultQuotas: Quotas;
  /** Sequences decoding at once (continuous batching, all models and tenants). */
  generateConcurrency: number;
  /** Generation requests waiting for a slot (all tenants; each tenant its fair part). */
  generateQueue: number;
  /** Bytes of each paged KV-cache pool (one per model shape). */
  kvCacheBytes: number;
  /** Prompt tokens per batch iteration (chunked prefill); default by device (see model/service.ts). */
  prefillChunk?: number;
  /** Bytes of model weights kept resident on the device when unused. */
  modelCacheBytes: number;
  /** Share of device time guaranteed to training when generation also has work. */
  trainShare: number;
  gpuMemoryBudgetBytes: number;
  /**
   * Device memory that running jobs may reserve together. Default: what the GPU budget leaves after
   * the model cache, one KV pool and GPU_MEMORY_MARGIN_BYTES; the sum never exceeds the budget.
   */
  trainMemoryBytes: number;
  workerConcurrency: number;
  leaseMs: number;
  heartbeatMs: number;
  reclaimIntervalMs: number;
  maxJobAttempts: number;
  logRequests: boolean;
  /** Repository root (bundled models are referenced relative to it). */
  repoRoot: string;
}

export class ConfigError extends Error {
  constructor(public readonly issues: string[]) {
    super(`invalid configuration:\n  ${issues.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

export const REPO_ROOT = path.resolve(import.meta.dir, '..');

/** Parse an environment (default `process.env`); throws ConfigError listing every bad variable. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const known: Record<string, string | undefined> = {};
  for (const k of Object.keys(EnvSchema.shape)) known[k] = env[k];
  const r = EnvSchema.safeParse(known);
  if (!r.success) {
    throw new ConfigError(
      r.error.issues.map((i) => {
        const key = String(i.path[0] ?? '?');
        const shown = key === 'COLA_ADMIN_KEY' || key === 'DATABASE_URL' ? '(hidden)' : JSON.stringify(env[key]);
        return `${key}=${shown}: ${i.message}`;
      }),
    );
  }
  const e = r.data;
  if (e.COLA_HEARTBEAT_MS >= e.COLA_LEASE_MS) {
    throw new ConfigError([`COLA_HEARTBEAT_MS (${e.COLA_HEARTBEAT_MS}) must be smaller than COLA_LEASE_MS (${e.COLA_LEASE_MS})`]);
  }
  const trainMemoryBytes = trainMemoryOf(e, env);
  return {
    port: e.PORT,
    host: e.HOST,
    dataDir: path.resolve(e.COLA_DATA_DIR),
    databaseUrl: e.DATABASE_URL,
    adminKey: e.COLA_ADMIN_KEY,
    worker: e.COLA_WORKER,
    bodyLimitBytes: e.COLA_BODY_LIMIT_BYTES,
    uploadLimitBytes: e.COLA_UPLOAD_LIMIT_BYTES,
    fileLimitBytes: e.COLA_FILE_LIMIT_BYTES,
    fileMaxLineBytes: e.COLA_FILE_MAX_LINE_BYTES,
    maxFileExamples: e.COLA_MAX_FILE_EXAMPLES,
    defaultQuotas: {
      requests_per_minute: e.COLA_QUOTA_RPM,
      concurrent_jobs: e.COLA_QUOTA_CONCURRENT_JOBS,
      stored_bytes: e.COLA_QUOTA_STORED_BYTES,
      max_tokens_per_request: e.COLA_QUOTA_MAX_TOKENS,
    },
    generateConcurrency: e.COLA_GENERATE_CONCURRENCY,
    generateQueue: e.COLA_GENERATE_QUEUE,
    kvCacheBytes: e.COLA_KV_CACHE_BYTES,
    prefillChunk: e.COLA_PREFILL_CHUNK,
    modelCacheBytes: e.COLA_MODEL_CACHE_BYTES,
    trainShare: e.COLA_TRAIN_SHARE,
    gpuMemoryBudgetBytes: e.COLA_GPU_MEMORY_BUDGET_BYTES,
    trainMemoryBytes,
    workerConcurrency: e.COLA_WORKER_CONCURRENCY,
    leaseMs: e.COLA_LEASE_MS,
    heartbeatMs: e.COLA_HEARTBEAT_MS,
    reclaimIntervalMs: e.COLA_RECLAIM_INTERVAL_MS,
    maxJobAttempts: e.COLA_MAX_JOB_ATTEMPTS,
    logRequests: e.COLA_LOG_REQUESTS,
    repoRoot: REPO_ROOT,
  };
}

/**
 * The training share of the GPU budget. The budget holds the resident-model cache, a KV pool (one
 * per model shape served at once; one is counted), the margin and the training memory; the default
 * training memory is what is left, and settings whose sum exceeds the budget are refused.
 */
function trainMemoryOf(e: Env, env: Record<string, string | undefined>): number {
  const budget = e.COLA_GPU_MEMORY_BUDGET_BYTES;
  const others = e.COLA_MODEL_CACHE_BYTES + e.COLA_KV_CACHE_BYTES + GPU_MEMORY_MARGIN_BYTES;
  const left = Math.max(0, budget - others);
  const train = e.COLA_TRAIN_MEMORY_BYTES ?? left;
  if (train >= 1 && train + others <= budget) return train;
  const shown = (k: keyof Env) => `${k} ${mib(e[k] as number)}${env[k] === undefined || env[k] === '' ? ' (default)' : ''}`;
  const parts = [shown('COLA_MODEL_CACHE_BYTES'), shown('COLA_KV_CACHE_BYTES'), `a margin of ${mib(GPU_MEMORY_MARGIN_BYTES)}`];
  if (e.COLA_TRAIN_MEMORY_BYTES !== undefined) parts.push(shown('COLA_TRAIN_MEMORY_BYTES'));
  throw new ConfigError([
    `${shown('COLA_GPU_MEMORY_BUDGET_BYTES')} cannot hold ${parts.join(' + ')}` +
      (e.COLA_TRAIN_MEMORY_BYTES === undefined ? ' and leave memory for training' : '') +
      ': raise COLA_GPU_MEMORY_BUDGET_BYTES or lower the others',
  ]);
}

function mib(b: number): string {
  return `${+(b / 2 ** 20).toFixed(1)} MiB`;
}

/** For entry points: parse, or print the problems and exit(2). */
export function configFromEnvOrExit(env: Record<string, string | undefined> = process.env): Config {
  try {
    return loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      process.exit(2);
    }
    throw err;
  }
}
