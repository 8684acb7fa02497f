// Interfaces the HTTP service calls into. The ML side (src/model, src/cola) implements them;
// src/main.ts wires whatever exists. An endpoint whose service is absent answers 501 with a
// problem+json saying which part is missing — never fake data.
//
// All types are plain data; no class from this file is required.

import type { FinetuneRequestBody } from './domain/schemas.ts';

/** A resolved model version, as the service hands it to the ML side. */
export interface ResolvedVersion {
  /** Model name as the tenant sees it. */
  model: string;
  version: number;
  architecture: string;
  /** Model config json stored at registration (dims, vocab, tokenizer path...). */
  config: Record<string, unknown>;
  /** Absolute path of the merged weights file of that version. */
  path: string;
  sha256: string;
}

// ---------------------------------------------------------------- generation
export interface GenerateRequest {
  /** Tenant id: admission slots and device time are shared per tenant. */
  tenant: string;
  target: ResolvedVersion;
  /** The prompt text (encoded with BOS); ignored when prompt_ids or messages is given. */
  prompt: string;
  /** The prompt as token ids, used as they are (no BOS added); each must be in the vocabulary (400). */
  prompt_ids?: number[];
  /** A chat, rendered by the model's chat template with the assistant's turn opened (400 without a template). */
  messages?: ChatMessage[];
  max_tokens: number;
  temperature: number;
  top_k: number;
  top_p: number;
  seed: number;
  stop: string[];
  /** 0 = none; n = also return the top-n alternatives per token (OpenAI `logprobs`). */
  logprobs: number;
  /** Return each generated token's log-probability even when logprobs is 0 (chat `logprobs: true`). */
  token_logprobs?: boolean;
  /** Return the prompt tokens' log-probabilities too (OpenAI `echo`). */
  echo: boolean;
  /** Aborted when the client goes away. */
  signal?: AbortSignal;
}

export interface TokenLogprob {
  id: number;
  text: string;
  /** log-probability of this token; null for the first prompt token. */
  logprob: number | null;
  /** top alternatives, text → logprob. */
  top?: Record<string, number>;
  /** the same alternatives as a list, most likely first (texts may repeat: chat logprobs). */
  topList?: { id: number; text: string; logprob: number }[];
  /** character offset of this token in the returned text. */
  offset: number;
}

export interface GenerateResult {
  text: string;
  token_ids: number[];
  finish_reason: 'stop' | 'length';
  usage: { prompt_tokens: number; completion_tokens: number };
  timing: { prefill_ms: number; decode_ms: number; tokens_per_s: number };
  /** Present when logprobs > 0 or echo: prompt tokens (echo) then completion tokens. */
  logprobs?: TokenLogprob[];
  /** With echo, the prompt text that precedes `text`. */
  prompt_text?: string;
}

export interface GenerationService {
  /** Whether a new request of this tenant would be queued now (checked before a stream opens). */
  admissible?(tenant: string): { ok: true } | { ok: false; retryAfterS: number; detail: string };
  /** Generate; `onToken` is called for every new token (streaming) in order. */
  generate(req: GenerateRequest, onToken?: (t: { text: string; id: number }) => void | Promise<void>): Promise<GenerateResult>;
}

// ---------------------------------------------------------------- evaluation
export type Example =
  | { prompt: string; completion: string }
  | { text: string }
  | { prompt: string; candidates: string[]; label: number }
  /** A chat rendered by the model's chat template; the loss is on the assistant turns. */
  | { messages: ChatMessage[] };

export interface ChatMessage {
  role: string;
  content: string;
}

export interface EvaluationService {
  evaluate(req: { tenant: string; target: ResolvedVersion; examples: Example[]; signal?: AbortSignal }): Promise<{
    accuracy?: number;
    f1?: number;
    loss: number;
    examples: number;
  }>;
}

// ---------------------------------------------------------------- models: import, merge, adapters
/**
 * A version's weights written into the store: `path` its manifest (model/snapshots.ts), `sha256` and
 * `bytes` those of the one safetensors file it serves; `tensors` the distinct tensor objects it
 * references and `addedBytes` those its parent does not (what counts in the quota). A writer of a
 * whole file (none left in this build) leaves both out.
 */
export interface StoredWeights {
  path: string;
  sha256: string;
  bytes: number;
  addedBytes?: number;
  tensors?: { digest: string; bytes: number }[];
}

export interface ImportedModel {
  architecture: string;
  params: number;
  config: Record<string, unknown>;
  /** The weights written into the store. */
  weights: StoredWeights;
}

export interface ModelImporter {
  /**
   * Import an HF folder or a llama2.c checkpoint from a server path (or an upload directory)
   * into the store. Throws `UserInputError` for unusable input (→ 400).
   */
  import(req: {
    source: string;
    storeDir: string;
    /** Weight precision: the checkpoint's own ("auto", default), or every tensor converted (model/weights.ts setWeightsDtype). */
    dtype?: 'auto' | 'f32' | 'f16' | 'bf16';
  }): Promise<ImportedModel>;
}

export interface AdapterValidator {
  /**
   * Check a PEFT adapter (adapter_config.json parsed + adapter_model.safetensors bytes on disk).
   * Throws `UserInputError` (→ 400) when malformed. Returns the normalised config to store.
   */
  validate(req: { config: unknown; safetensorsPath: string }): Promise<{ config: Record<string, unknown> }>;
}

export interface MergeService {
  /** Merge a PEFT adapter into a version; writes the new merged weights (and the adapter) into the store. */
  mergeAdapter(req: {
    target: ResolvedVersion;
    adapter: { config: Record<string, unknown>; path: string };
    scale: number;
    storeDir: string;
  }): Promise<{ weights: StoredWeights; adapterPath?: string }>;
}

/** A file to send: one on disk (`path`), or one produced as a stream of exactly `size` bytes. */
export type ExportedFile = { contentType: string; filename: string } & ({ path: string } | { size: number; stream: () => ReadableStream<Uint8Array> });

export interface ExportService {
  /** Merged weights as one safetensors file with HF tensor names (a manifest version's is streamed from its objects). */
  weightsFile(v: ResolvedVersion): Promise<ExportedFile>;
  /** PEFT adapter archive of a knot/merge version; returns its path. */
  adapterFile(v: ResolvedVersion & { adapterPath: string | null }): Promise<{ path: string; contentType: string; filename: string } | null>;
}

// ---------------------------------------------------------------- training
export interface FinetuneJobSpec {
  id: string;
  tenantId: string;
  /** The validated POST /finetune body (defaults applied); train examples resolved from training_file are in `train`. */
  request: FinetuneRequestBody;
  train: Example[];
  validation: Example[];
  base: ResolvedVersion;
  outputModel: string;
  attempt: number;
  /** Directory where the runner writes snapshot files (content-addressed names advised). */
  storeDir: string;
  /** init_adapter resolved: its config and path, when requested. */
  initAdapter?: { config: Record<string, unknown>; path: string };
}

export interface KnotInput {
  link: number;
  step: number;
  rank: number;
  val_loss?: number;
  flops: number;
  /** The merged weights after tying this knot, already written to disk. */
  snapshot: StoredWeights;
  /** Optional PEFT adapter of this link (the update from the previous version). */
  adapterPath?: string;
  /** Size of the adapter file (counted in the tenant's stored bytes). */
  adapterBytes?: number;
  metrics?: Record<string, unknown>;
}

export interface ResumePoint {
  link: number;
  step: number;
  /** Steps of all the job's persisted knots, in order (requested knots included; the last is `step`). */
  knotSteps: number[];
  /** Output model version of that knot. */
  version: number;
  path: string;
  sha256: string;
  /** The knot's adapter ZIP (with a partial optimizer reset it carries the kept optimizer state). */
  adapterPath?: string | null;
}

export interface JobContext {
  /** Last persisted knot, null on a fresh start: the runner continues from there. */
  resumeFrom: ResumePoint | null;
  /** Report a step. Fenced: throws StaleLeaseError if this worker lost the job. */
  onStep(s: { step: number; total_steps: number; link: number; links: number; epoch: number; loss?: number; lr?: number; tokens?: number }): Promise<void>;
  onLinkStarted(e: { link: number; rank: number }): Promise<void>;
  /**
   * Call before writing a knot's files: throws QuotaExceededError when `bytes` more would take the
   * tenant over its stored-bytes quota (the job then fails; the versions already written stay).
   */
  reserveBytes(bytes: number): Promise<void>;
  /** Persist a tied knot as the next version of the output model. Fenced. Resolves with that version. */
  onKnot(k: KnotInput): Promise<{ model: string; version: number }>;
  onEval(e: Record<string, unknown>): Promise<void>;
  /** Automatic knots: each decision with its signal values (event `knot_decision`). */
  onKnotDecision?(d: Record<string, unknown>): Promise<void>;
  /** True once the user asked to cancel (refreshed by heartbeats and every onStep). */
  isCancelled(): boolean;
  /** True once a merge-now was requested (`POST /merge {job}`); the runner ties a knot at the next step. */
  takeMergeRequest(): boolean;
  /** Aborted when the lease is lost or the process shuts down. */
  signal: AbortSignal;
}

export interface JobRunner {
  /** Run (or resume) a fine-tune job. Resolve on completion or after honouring a cancel; throw on failure. */
  run(job: FinetuneJobSpec, ctx: JobContext): Promise<{ cancelled?: boolean } | void>;
}

// ---------------------------------------------------------------- engine health and gauges
/** What the routes enqueue jobs through (src/jobs/queue.ts implements it). */
export interface JobQueue {
  enqueue(jobId: string): Promise<void>;
}

export interface EngineHealth {
  /** Whether the GPU device is usable; with a reason when it is not. */
  health(): Promise<{ ok: boolean; detail?: string }>;
  /** Bytes of GPU memory in use (for /metrics). */
  memoryInUse?(): number;
  /** Serving and scheduler gauges (for /metrics); null before the device is up. */
  load?(): { serving: { live: number; queued: number; rejected: number; iterations: number; weightBytes?: number; models?: number }; scheduler: { busyMs: Record<string, number>; units: Record<string, number>; waiting: Record<string, number>; maxWaitMs: Record<string, number>; maxTurnMs: Record<string, number> }; bindGroups?: { hits: number; misses: number; evicted: number; collections: number }; trainMemory?: { capacity: number; reserved: number; waiting: number } } | null;
}

/** Thrown by the ML side for bad user input; the service answers 400 with the message. */
export class UserInputError extends Error {
  constructor(message: string, public readonly errors?: { path: string; message: string }[]) {
    super(message);
    this.name = 'UserInputError';
  }
}

/** Thrown when the server has no room for the request now (→ 429 with Retry-After). */
export class ServiceBusyError extends Error {
  constructor(
    message: string,
    public readonly retryAfterS: number,
  ) {
    super(message);
    this.name = 'ServiceBusyError';
  }
}

/** A tenant's stored-bytes quota would be exceeded (→ 429 in a request; a failed job of type quota_exceeded). */
export class QuotaExceededError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'QuotaExceededError';
  }
}

/** Thrown when no GPU device is usable (→ 503). */
export class DeviceUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DeviceUnavailableError';
  }
}

export interface Services {
  generation?: GenerationService;
  evaluation?: EvaluationService;
  importer?: ModelImporter;
  adapterValidator?: AdapterValidator;
  merge?: MergeService;
  exporter?: ExportService;
  runner?: JobRunner;
}
