// Continuous batching for one model version (Orca's iteration-level scheduling, vLLM's paged KV).
//
// The batch runs iterations while it has sequences. One iteration is one forward over N rows: one
// row per decoding sequence (its last sampled token) plus up to `prefillChunk` prompt tokens of
// sequences still being prefilled (chunked prefill, so a long prompt never stalls the decoders for
// more than one chunk). Sequences join at the next iteration and leave as soon as they finish.
// Each iteration is one unit on the GPU scheduler. Sampling, stop sequences, logprobs and streaming
// are per sequence (TokenStream), so a sequence's tokens do not depend on its neighbours.
import type { Engine, Tensor } from '../gpu/engine.ts';
import type { GpuScheduler } from '../gpu/scheduler.ts';
import { forwardRows, type BatchRow } from './batch-forward.ts';
import type { FusedLayers } from './generate.ts';
import { fusedDecodeBatch, type DecodeSpec, type PackedLayout } from '../gpu/ops/decode.ts';
import type { TokenStream, GenerateResult } from './generate.ts';
import type { KvPool } from './kvpool.ts';
import type { TransformerModel } from './transformer.ts';

export interface BatchSequence {
  stream: TokenStream;
  /** Cache blocks reserved for prompt + max new tokens (released when the sequence leaves). */
  blocks: number[];
  /** Prompt tokens already in the cache. */
  prefilled: number;
  /** Token to feed at the next iteration (after the prompt is in the cache). */
  next: number | null;
  signal?: AbortSignal;
  resolve(r: GenerateResult): void;
  reject(err: unknown): void;
}

export interface BatchOptions {
  /** Prompt tokens per iteration (chunked prefill). */
  prefillChunk: number;
  /**
   * The one-dispatch batched decoder (small Llama models on CPU drivers, see
   * kernels/decode_llama_batch.ts): decode rows go through it, prompt chunks through the layers.
   */
  fused?: { packed: Tensor; lay: PackedLayout; spec: DecodeSpec } | null;
  /**
   * The fused layer products (Generator.layerDecoder: GPUs by default) for iterations of at most
   * FUSED_GEMV_MAX_ROWS rows; null or absent: the unfused ops.
   */
  layers?: FusedLayers | null;
}

export interface BatchStats {
  iterations: number;
  rows: number;
  /** Largest number of sequences decoded in one iteration. */
  maxDecodeRows: number;
}

export class DecodeBatch {
  private readonly seqs: BatchSequence[] = [];
  private running = false;
  readonly stats: BatchStats = { iterations: 0, rows: 0, maxDecodeRows: 0 };

  constructor(
    readonly e: Engine,
    readonly sched: GpuScheduler,
    readonly model: TransformerModel,
    readonly pool: KvPool,
    /** Scheduler key of this batch's units. */
    readonly key: string,
    readonly opts: BatchOptions,
    /** Called when a sequence leaves (its blocks are back in the pool). */
    readonly onLeave: (s: BatchSequence) => void,
  ) {}

  get size(): number {
    return this.seqs.length;
  }

  add(s: BatchSequence): void {
    this.seqs.push(s);
    if (!this.running) {
      this.running = true;
      void this.loop();
    }
  }

  private async loop(): Promise<void> {
    try {
      while (this.seqs.length) {
        try {
          // The device is held for the forward only: streaming the tokens to clients (network
          // writes) happens after the unit, for all sequences at once.
          const out = await this.sched.run('interactive', this.key, () => this.forward());
          if (out) await this.consume(out.owners, out.logits);
        } catch (err) {
          // A failed iteration fails every sequence in it (the cache state is unknown).
          for (const s of this.seqs.splice(0)) this.leave(s, err);
        }
      }
    } finally {
      this.running = false;
    }
  }

  private leave(s: BatchSequence, err?: unknown): void {
    const i = this.seqs.indexOf(s);
    if (i >= 0) this.seqs.splice(i, 1);
    this.pool.release(s.blocks);
    s.blocks = [];
    this.onLeave(s);
    if (err !== undefined) s.reject(err);
    else {
      // The result is complete now; the caller sees it once its last tokens are delivered.
      const r = s.stream.result();
      s.stream.flushed().then(() => s.resolve(r), (e: unknown) => s.reject(e));
    }
  }

  private async forward(): Promise<{ owners: BatchSequence[]; logits: Float32Array } | null> {
    for (const s of [...this.seqs]) {
      if (s.signal?.aborted) {
        s.stream.abort();
        this.leave(s);
      }
    }
    if (!this.seqs.length) return null;
    const fused = this.opts.fused ?? null;
    const rows: BatchRow[] = [];
    const owners: BatchSequence[] = []; // the sequence of each layered logits row, in row order
    const tables: number[][] = [];
    const decoders: BatchSequence[] = []; // fused path: decode sequences
    let decodeRows = 0;
    let budget = this.opts.prefillChunk;
    for (const s of this.seqs) {
      const prompt = s.stream.promptIds;
      if (s.prefilled === prompt.length) {
        if (s.next === null) continue;
        decodeRows++;
        if (fused) {
          decoders.push(s);
          continue;
        }
        const table = tables.push(s.blocks) - 1;
        rows.push({ table, pos: prompt.length + s.stream.tokenIds.length - 1, token: s.next, logits: true });
        owners.push(s);
      } else if (budget > 0) {
        const table = tables.push(s.blocks) - 1;
        const n = Math.min(budget, prompt.length - s.prefilled);
        for (let t = 0; t < n; t++) {
          const pos = s.prefilled + t;
          const last = pos === prompt.length - 1;
          rows.push({ table, pos, token: prompt[pos]!, logits: last });
          if (last) owners.push(s);
        }
        s.prefilled += n;
        budget -= n;
      }
    }
    if (!rows.length && !decoders.length) return null;
    const outs: Tensor[] = [];
    if (decoders.length && fused) outs.push(this.fusedDecode(fused, decoders));
    // Rows are recorded in order: a prefill chunk's later rows see the keys its earlier rows write
    // because the cache write of every row happens before the attention of any row in each layer.
    const layered = rows.length ? forwardRows(this.e, this.model, this.pool, rows, tables, this.opts.layers ?? null) : null;
    if (layered) outs.push(layered);
    const parts = outs.length ? await this.e.readManyF32(outs) : [];
    for (const t of outs) t.free();
    const all = parts.length === 2 ? concat(parts[0]!, parts[1]!) : (parts[0] ?? new Float32Array(0));
    owners.unshift(...decoders);
    this.stats.iterations++;
    this.stats.rows += rows.length + decoders.length;
    this.stats.maxDecodeRows = Math.max(this.stats.maxDecodeRows, decodeRows);
    return { owners, logits: all };
  }

  /** Decode rows of `seqs` through the batched one-dispatch kernel; returns their logits (M, V). */
  private fusedDecode(f: NonNullable<BatchOptions['fused']>, seqs: BatchSequence[]): Tensor {
    const M = seqs.length;
    const MAXB = Math.ceil(this.model.config.maxSeqLen / this.pool.blockSize);
    const sq = new Uint32Array(4 * M);
    const tb = new Uint32Array(M * MAXB);
    seqs.forEach((s, i) => {
      sq.set([s.next!, s.stream.promptIds.length + s.stream.tokenIds.length - 1, i, 0], 4 * i);
      tb.set(s.blocks.slice(0, MAXB), i * MAXB);
    });
    const seqT = this.e.upload(sq, [M, 4], 'u32');
    const tabT = this.e.upload(tb, [M, MAXB], 'u32');
    const logits = this.e.empty([M, this.model.config.vocabSize]);
    fusedDecodeBatch(this.e, f.spec, f.lay, f.packed, this.pool.tensor, this.pool.blocks, this.pool.blockSize, MAXB, seqT, tabT, logits, M);
    seqT.free();
    tabT.free();
    return logits;
  }

  private async consume(owners: BatchSequence[], all: Float32Array): Promise<void> {
    const V = this.model.config.vocabSize;
    await Promise.all(
      owners.map(async (s, i) => {
        try {
          s.next = await s.stream.push(all.subarray(i * V, (i + 1) * V));
        } catch (err) {
          s.stream.abort();
          this.leave(s, err);
          return;
        }
        if (s.next === null) this.leave(s);
      }),
    );
  }
}

function concat(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
