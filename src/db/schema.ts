// The one database schema (Postgres dialect; runs on PGlite and on a Postgres server).
// Changes go through `bunx drizzle-kit generate` into migrations/ (forward-only).
import { sql } from 'drizzle-orm';
import {
  bigint,
  boolean,
  index,
  integer,
  jsonb,
  pgEnum,
  pgTable,
  text,
  timestamp,
  uniqueIndex,
  primaryKey,
  foreignKey,
  bigserial,
  doublePrecision,
} from 'drizzle-orm/pg-core';
import { JOB_STATES } from '../domain/job-states.ts';

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' });

export const jobStatus = pgEnum('job_status', JOB_STATES);
export const versionKind = pgEnum('version_kind', ['base', 'knot', 'merge']);

export const tenants = pgTable('tenants', {
  id: text('id').primaryKey(),
  name: text('name').notNull().unique(),
  /** Overrides of the configured default quotas; null fields use the defaults. */
  quotas: jsonb('quotas').$type<Partial<{
    requests_per_minute: number;
    concurrent_jobs: number;
    stored_bytes: number;
    max_tokens_per_request: number;
  }>>().notNull().default({}),
  createdAt: ts('created_at').notNull().defaultNow(),
});

export const apiKeys = pgTable(
  'api_keys',
  {
    id: text('id').primaryKey(),
    tenantId: text('tenant_id').notNull().references(() => tenants.id, { onDelete: 'cascade' }),
    /** First characters of the key, for lookup; the key itself is never stored. */
    prefix: text('prefix').notNull(),
    /** hex sha256 of the whole key. */
    hash: text('hash').notNull(),
    revokedAt: ts('revoked_at'),
    createdAt: ts('created_at').notNull().defaultNow(),
  },
  (t) => [index('api_keys_prefix_idx').on(t.prefix)],
);

export const models = pgTable(
  'models',
  {
    id: text('id').primaryKey(),
    /** null = a shared base model registered by the operator. */
    tenantId: text('tenant_id').references(() => tenants.id, { onDelete: 'cascade' }),
    name: text('name').notNull(),
    architecture: text('architecture').notNull(),
    params: bigint('params', { mode: 'number' }).notNull().default(0),
    config: jsonb('config').$type<Record<string, unknown>>().notNull().default({}),
    /** Highest version number ever given out: a deleted version's number is never reused. */
    maxVersion: integer('max_version').notNull().default(0),
    createdAt: ts('created_at').notNull().defaultNow(),
  },
  (t) => [
    // name unique per owner; shared models (tenant null) unique among themselves
    uniqueIndex('models_owner_name_uq').on(t.tenantId, t.name).where(sql`${t.tenantId} is not null`),
    uniqueIndex('models_shared_name_uq').on(t.name).where(sql`${t.tenantId} is null`),
  ],
);

export const modelVersions = pgTable(
  'model_versions',
  {
    modelId: text('model_id').notNull().references(() => models.id, { onDelete: 'cascade' }),
    version: integer('version').notNull(),
    parentModelId: text('parent_model_id').references(() => models.id),
    parentVersion: integer('parent_version'),
    kind: versionKind('kind').notNull(),
    jobId: text('job_id'),
    link: integer('link'),
    rank: integer('rank'),
    sha256: text('sha256').notNull(),
    /** Size of the served safetensors file (the download; `sha256` is its digest). */
    bytes: bigint('bytes', { mode: 'number' }).notNull(),
    /**
     * The weights: a manifest of tensor objects in the store (`.manifest`, model/snapshots.ts), or a
     * whole file (versions written before manifests; bundled models, relative to the repository root).
     */
    path: text('path').notNull(),
    /**
     * Bytes of the tensor objects this version references and its parent does not (what counts in
     * the tenant's stored bytes); null for a whole-file version, which counts `bytes`.
     */
    addedBytes: bigint('added_bytes', { mode: 'number' }),
    /** Path of the adapter (PEFT) that made this version from its parent, if any. */
    adapterPath: text('adapter_path'),
    /** Size of the adapter file at adapter_path (counted in the tenant's stored bytes). */
    adapterBytes: bigint('adapter_bytes', { mode: 'number' }).notNull().default(0),
    metrics: jsonb('metrics').$type<Record<string, unknown>>(),
    createdAt: ts('created_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.modelId, t.version] })],
);

/**
 * The tensor objects (by sha256 digest) a manifest version references, each digest once: a tensor
 * object is removed from the store when its last row goes (db/repos/deletes.ts).
 */
export const versionTensors = pgTable(
  'version_tensors',
  {
    modelId: text('model_id').notNull(),
    version: integer('version').notNull(),
    digest: text('digest').notNull(),
    bytes: bigint('bytes', { mode: 'number' }).notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.modelId, t.version, t.digest] }),
    index('version_tensors_digest_idx').on(t.digest),
    foreignKey({ name: 'version_tensors_version_fk', columns: [t.modelId, t.version], foreignColumns: [modelVersions.modelId, modelVersions.version] }).onDelete('cascade'),
  ],
);

export const files = pgTable('files', {
  id: text('id').primaryKey(),
  tenantId: text('tenant_id').notNull().references(() => tenants.id, { onDelete: 'cascade' }),
  filename: text('filename'),
  /** Legacy rows only: the validated examples, one JSON object per line (new files live at `path`). */
  content: text('content'),
  /** The validated examples as JSONL in the store (absolute path); written while the upload streams. */
  path: text('path'),
  examples: integer('examples').notNull(),
  bytes: bigint('bytes', { mode: 'number' }).notNull(),
  createdAt: ts('created_at').notNull().defaultNow(),
});

export const adapters = pgTable('adapters', {
  id: text('id').primaryKey(),
  tenantId: text('tenant_id').notNull().references(() => tenants.id, { onDelete: 'cascade' }),
  config: jsonb('config').$type<Record<string, unknown>>().notNull(),
  path: text('path').notNull(),
  sha256: text('sha256').notNull(),
  bytes: bigint('bytes', { mode: 'number' }).notNull(),
  createdAt: ts('created_at').notNull().defaultNow(),
});

export type JobProgress = { step: number; total_steps: number; link: number; links: number; epoch: number };
export type JobLoss = { step: number; link: number; loss: number };
export type JobKnot = { link: number; step: number; version: number; rank: number; val_loss?: number; flops: number };

export const jobs = pgTable(
  'jobs',
  {
    id: text('id').primaryKey(),
    tenantId: text('tenant_id').notNull().references(() => tenants.id, { onDelete: 'cascade' }),
    status: jobStatus('status').notNull().default('queued'),
    /** The validated POST /finetune body. */
    request: jsonb('request').$type<Record<string, unknown>>().notNull(),
    baseModelId: text('base_model_id').notNull(),
    baseModelName: text('base_model_name').notNull(),
    baseVersion: integer('base_version').notNull(),
    outputModel: text('output_model').notNull(),
    progress: jsonb('progress').$type<JobProgress>(),
    knots: jsonb('knots').$type<JobKnot[]>().notNull().default([]),
    error: jsonb('error').$type<{ type: string; detail: string }>(),
    cancelRequested: boolean('cancel_requested').notNull().default(false),
    /** Count of merge-now requests (POST /merge {job}); the runner compares with what it has honoured. */
    mergeRequests: integer('merge_requests').notNull().default(0),
    /** Worker currently holding the lease (null when none). */
    leaseOwner: text('lease_owner'),
    /** Fencing token: incremented on every claim; every worker write checks it. */
    leaseToken: integer('lease_token').notNull().default(0),
    leaseExpiresAt: ts('lease_expires_at'),
    heartbeatAt: ts('heartbeat_at'),
    attempts: integer('attempts').notNull().default(0),
    /** Next job_events.seq to hand out. */
    eventSeq: integer('event_seq').notNull().default(0),
    createdAt: ts('created_at').notNull().defaultNow(),
    startedAt: ts('started_at'),
    finishedAt: ts('finished_at'),
    updatedAt: ts('updated_at').notNull().defaultNow(),
  },
  (t) => [
    index('jobs_tenant_idx').on(t.tenantId, t.createdAt),
    index('jobs_status_lease_idx').on(t.status, t.leaseExpiresAt),
  ],
);

export const jobEvents = pgTable(
  'job_events',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    jobId: text('job_id').notNull().references(() => jobs.id, { onDelete: 'cascade' }),
    seq: integer('seq').notNull(),
    type: text('type').notNull(),
    data: jsonb('data').$type<Record<string, unknown>>().notNull(),
    createdAt: ts('created_at').notNull().defaultNow(),
  },
  (t) => [uniqueIndex('job_events_job_seq_uq').on(t.jobId, t.seq)],
);

/** One row per training step of a job (the loss curve). Keyed by (job, step): a resumed job overwrites, never duplicates. */
export const jobSteps = pgTable(
  'job_steps',
  {
    jobId: text('job_id').notNull().references(() => jobs.id, { onDelete: 'cascade' }),
    step: integer('step').notNull(),
    link: integer('link').notNull(),
    loss: doublePrecision('loss').notNull(),
    lr: doublePrecision('lr'),
    epoch: integer('epoch'),
    createdAt: ts('created_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.jobId, t.step] })],
);

export type Tenant = typeof tenants.$inferSelect;
export type ApiKey = typeof apiKeys.$inferSelect;
export type Model = typeof models.$inferSelect;
export type ModelVersion = typeof modelVersions.$inferSelect;
export type VersionTensor = typeof versionTensors.$inferSelect;
export type FileRow = typeof files.$inferSelect;
export type Adapter = typeof adapters.$inferSelect;
export type Job = typeof jobs.$inferSelect;
export type JobEvent = typeof jobEvents.$inferSelect;
export type JobStep = typeof jobSteps.$inferSelect;
