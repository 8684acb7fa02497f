// Generation serving: admission of requests per tenant, resident models, KV pools, and one
// continuous batch per model version, all of whose device work goes through the GPU scheduler.
//
// Admission. At most `maxLive` sequences decode at once (all models). A request that does not get
// a slot waits in its tenant's queue; the queue of all tenants holds at most `maxQueued` requests
// and one tenant at most its fair part of it, beyond which the request is refused at once (429
// with Retry-After). Slots go round-robin over the tenants that are waiting, and no tenant holds
// more than ⌈maxLive / tenants with work⌉ slots while another waits, so one tenant cannot take all
// of them. A sequence reserves the KV blocks for its prompt plus max_tokens when it is admitted;
// when the pool has too few free blocks the request waits for blocks (never an out-of-memory
// failure), and a request that could never fit the pool is a 400.
import type { Engine } from '../gpu/engine.ts';
import type { GpuScheduler } from '../gpu/scheduler.ts';
import type { ResolvedVersion } from '../services.ts';
import { TokenStream, type GenerateHooks, type GenerateResult, type SamplingOptions } from './generate.ts';
import { DecodeBatch, type BatchSequence } from './batcher.ts';
import { KvPool, type KvShape } from './kvpool.ts';
import { ModelCache, type LiveModel } from './versions.ts';

export interface ServingOptions {
  /** Sequences decoding at once, over all models and tenants. */
  maxLive: number;
  /** Requests waiting for a slot, over all tenants. */
  maxQueued: number;
  /** Bytes of each KV pool (one pool per model shape: a base model and its knots share one). */
  kvBytes: number;
  /** Prompt tokens per batch iteration (chunked prefill). */
  prefillChunk: number;
  /** Bytes of model weights kept resident when unused. */
  modelCacheBytes: number;
}

/** No slot and no room in the queue: the caller answers 429 with Retry-After. */
export class BusyError extends Error {
  override name = 'BusyError';
  constructor(
    message: string,
    readonly retryAfterS: number,
  ) {
    super(message);
  }
}

/** A request that can never be served as asked (→ 400). */
export class ServingInputError extends Error {
  override name = 'ServingInputError';
}

interface Pending {
  tenant: string;
  target: ResolvedVersion;
  promptIds: number[];
  sampling: SamplingOptions;
  hooks: GenerateHooks;
  signal?: AbortSignal;
  resolve(r: { result: GenerateResult; live: LiveModel }): void;
  reject(err: unknown): void;
}

interface Resident {
  live: LiveModel;
  batch: DecodeBatch;
  pool: KvPool;
}

export interface ServingStats {
  live: number;
  queued: number;
  rejected: number;
  iterations: number;
  /** Live sequences per tenant (for tests and /metrics). */
  liveByTenant: Record<string, number>;
  /** Device bytes of the resident models' weights (16-bit weights at 2 bytes a value). */
  weightBytes: number;
  /** Resident models. */
  models: number;
}

export class ServingEngine {
  readonly cache: ModelCache;
  private readonly residents = new Map<string, Resident>();
  private readonly pools = new Map<string, { pool: KvPool; users: number }>();
  private readonly queues = new Map<string, Pending[]>();
  private readonly liveBy = new Map<string, number>();
  private queued = 0;
  private live = 0;
  private rejected = 0;
  private iterations = 0;
  private rr: string[] = []; // tenants in round-robin order
  private pumping = false;
  private again = false;

  constructor(
    readonly e: Engine,
    readonly sched: GpuScheduler,
    repoRoot: string,
    readonly opts: ServingOptions,
  ) {
    this.cache = new ModelCache(e, repoRoot, opts.modelCacheBytes);
    this.cache.onEvict = (m) => this.dropResident(m.key);
  }

  stats(): ServingStats {
    return { live: this.live, queued: this.queued, rejected: this.rejected, iterations: this.iterations, liveByTenant: Object.fromEntries(this.liveBy), weightBytes: this.cache.residentBytes, models: this.cache.size };
  }

  /**
   * Runs `fn` with the version's model resident and pinned, as one interactive unit of `tenant`
   * (scoring, echo logprobs). The upload of a model not yet resident is part of the unit.
   */
  async withModel<T>(tenant: string, target: ResolvedVersion, fn: (m: LiveModel) => Promise<T>): Promise<T> {
    return this.sched.run('interactive', `t:${tenant}`, async () => {
      const m = this.cache.pin(target);
      try {
        return await fn(m);
      } finally {
        this.cache.unpin(m);
      }
    });
  }

  /** Tokenizer of a version (a resident model's at once; otherwise the model is loaded in a unit). */
  async tokenizerOf(tenant: string, target: ResolvedVersion): Promise<LiveModel['loaded']['tokenizer']> {
    return (await this.modelInfo(tenant, target)).tokenizer;
  }

  /** Tokenizer, config and chat template of a version (as tokenizerOf: a resident model's at once). */
  async modelInfo(tenant: string, target: ResolvedVersion): Promise<{ tokenizer: LiveModel['loaded']['tokenizer']; config: LiveModel['model']['config']; chat: LiveModel['loaded']['chat'] }> {
    const of = (m: LiveModel) => ({ tokenizer: m.loaded.tokenizer, config: m.model.config, chat: m.loaded.chat });
    const hit = this.cache.peek(target);
    if (hit) return of(hit);
    return this.withModel(tenant, target, async (m) => of(m));
  }

  /** Whether a new request of `tenant` would get a place in the queue now. */
  admissible(tenant: string): { ok: true } | { ok: false; retryAfterS: number; detail: string } {
    const q = this.queues.get(tenant);
    const tenantsWaiting = this.queues.size + (q ? 0 : 1);
    const fair = Math.max(1, Math.ceil(this.opts.maxQueued / tenantsWaiting));
    if (this.queued >= this.opts.maxQueued || (q?.length ?? 0) >= fair) {
      return { ok: false, retryAfterS: 1, detail: `generation queue is full (${this.live} decoding, ${this.queued} waiting; this tenant may queue ${fair}); retry shortly` };
    }
    return { ok: true };
  }

  /** Generates a completion; resolves with the result and the (still pinned) model, which the caller unpins. */
  generate(tenant: string, target: ResolvedVersion, promptIds: number[], sampling: SamplingOptions, hooks: GenerateHooks, signal?: AbortSignal): Promise<{ result: GenerateResult; live: LiveModel }> {
    const room = this.admissible(tenant);
    if (!room.ok) {
      this.rejected++;
      return Promise.reject(new BusyError(room.detail, room.retryAfterS));
    }
    const q = this.queues.get(tenant) ?? [];
    return new Promise((resolve, reject) => {
      const p: Pending = { tenant, target, promptIds, sampling, hooks, signal, resolve, reject };
      q.push(p);
      if (!this.queues.has(tenant)) {
        this.queues.set(tenant, q);
        this.rr.push(tenant);
      }
      this.queued++;
      signal?.addEventListener('abort', () => this.dequeue(p, new DOMException('client went away', 'AbortError')), { once: true });
      void this.pump();
    });
  }

  private dequeue(p: Pending, err: unknown): boolean {
    const q = this.queues.get(p.tenant);
    const i = q ? q.indexOf(p) : -1;
    if (!q || i < 0) return false;
    q.splice(i, 1);
    this.queued--;
    if (!q.length) {
      this.queues.delete(p.tenant);
      this.rr = this.rr.filter((t) => t !== p.tenant);
    }
    p.reject(err);
    return true;
  }

  /** Admits waiting requests while slots and blocks allow (one pump at a time). */
  private async pump(): Promise<void> {
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.again = false;
        while (this.live < this.opts.maxLive && this.queued > 0) {
          const tenantsWithWork = new Set([...this.queues.keys(), ...[...this.liveBy].filter(([, n]) => n > 0).map(([t]) => t)]).size;
          const cap = Math.max(1, Math.ceil(this.opts.maxLive / tenantsWithWork));
          let admitted = false;
          for (let k = 0; k < this.rr.length && !admitted; k++) {
            const tenant = this.rr[0]!;
            this.rr.push(this.rr.shift()!); // next round starts after this tenant
            if ((this.liveBy.get(tenant) ?? 0) >= cap) continue;
            const p = this.queues.get(tenant)![0]!;
            admitted = await this.admit(p);
          }
          if (!admitted) break; // every head waits for blocks or its tenant is at its cap
        }
      } while (this.again);
    } finally {
      this.pumping = false;
    }
  }

  /** Starts `p` in its model's batch if its blocks are free. Returns whether it left the queue. */
  private async admit(p: Pending): Promise<boolean> {
    let r: Resident;
    let stream: TokenStream;
    try {
      r = await this.residentFor(p.tenant, p.target);
      stream = new TokenStream(r.live.loaded.tokenizer, p.promptIds, p.sampling, p.hooks, r.live.model.config.maxSeqLen);
    } catch (err) {
      return this.dequeue(p, err);
    }
    const need = r.pool.blocksFor(p.promptIds.length + stream.maxNew);
    if (need > r.pool.blocks) {
      return this.dequeue(p, new ServingInputError(`prompt + max_tokens need ${need * r.pool.blockSize} cache positions; this server's KV cache holds ${r.pool.blocks * r.pool.blockSize} (lower max_tokens or raise COLA_KV_CACHE_BYTES)`));
    }
    const blocks = r.pool.alloc(need);
    if (!blocks) return false;
    // Leave the queue without rejecting, then join the batch.
    const q = this.queues.get(p.tenant)!;
    q.splice(q.indexOf(p), 1);
    this.queued--;
    if (!q.length) {
      this.queues.delete(p.tenant);
      this.rr = this.rr.filter((t) => t !== p.tenant);
    }
    this.live++;
    this.liveBy.set(p.tenant, (this.liveBy.get(p.tenant) ?? 0) + 1);
    const live = this.cache.pin(p.target);
    const seq: BatchSequence & { tenant: string } = {
      tenant: p.tenant,
      stream,
      blocks,
      prefilled: 0,
      next: null,
      signal: p.signal,
      resolve: (result) => p.resolve({ result, live }),
      reject: (err) => {
        this.cache.unpin(live);
        p.reject(err);
      },
    };
    r.batch.add(seq);
    return true;
  }

  private onLeave(s: BatchSequence & { tenant?: string }): void {
    this.live--;
    this.iterations = [...this.residents.values()].reduce((a, r) => a + r.batch.stats.iterations, 0);
    if (s.tenant) {
      const n = (this.liveBy.get(s.tenant) ?? 1) - 1;
      if (n <= 0) this.liveBy.delete(s.tenant);
      else this.liveBy.set(s.tenant, n);
    }
    void this.pump();
  }

  private async residentFor(tenant: string, target: ResolvedVersion): Promise<Resident> {
    const hit = this.residents.get(target.sha256);
    if (hit) {
      this.cache.get(target); // most recently used
      return hit;
    }
    // Upload and weight packing are device work: one unit of the tenant that asked.
    const { live, fused, layers } = await this.sched.run('interactive', `t:${tenant}`, async () => {
      const m = this.cache.get(target);
      return { live: m, fused: m.generator.batchDecoder(), layers: m.generator.layerDecoder() };
    });
    const again = this.residents.get(target.sha256);
    if (again) return again;
    const c = live.model.config;
    const shape: KvShape = { L: c.nLayers, HKV: c.nKvHeads, D: c.headDim };
    const sk = `${shape.L}.${shape.HKV}.${shape.D}`;
    let pe = this.pools.get(sk);
    if (!pe) {
      pe = { pool: new KvPool(this.e, shape, this.opts.kvBytes), users: 0 };
      this.pools.set(sk, pe);
    }
    pe.users++;
    const batch = new DecodeBatch(this.e, this.sched, live.model, pe.pool, `gen:${live.key}`, { prefillChunk: this.opts.prefillChunk, fused, layers }, (s) => this.onLeave(s));
    const r: Resident = { live, batch, pool: pe.pool };
    this.residents.set(target.sha256, r);
    return r;
  }

  /** The model was evicted (unpinned, so its batch is empty): drop the batch and maybe its pool. */
  private dropResident(key: string): void {
    const r = this.residents.get(key);
    if (!r) return;
    this.residents.delete(key);
    for (const [sk, pe] of this.pools) {
      if (pe.pool !== r.pool) continue;
      if (--pe.users === 0) {
        pe.pool.dispose();
        this.pools.delete(sk);
      }
    }
  }

  /** Device loss: everything on the device is gone. Waiting and running requests fail. */
  clear(): void {
    for (const q of [...this.queues.values()]) for (const p of [...q]) this.dequeue(p, new Error('GPU device lost'));
    this.cache.clear();
    for (const pe of this.pools.values()) pe.pool.dispose();
    this.pools.clear();
    this.residents.clear();
  }
}
