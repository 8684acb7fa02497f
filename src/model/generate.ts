// Text generation with a KV cache: prefill the prompt in one batched pass, then decode one token
// per submit. Sampling (greedy, temperature, top-k, top-p) runs on the CPU over the read-back
// logits with a seeded RNG, so a (prompt, seed) pair always gives the same text on one device.
import { ShapeError, type Engine, type Tensor } from '../gpu/engine.ts';
import { add } from '../gpu/ops/elementwise.ts';
import { embedding } from '../gpu/ops/embedding.ts';
import { linear, matmul } from '../gpu/ops/matmul.ts';
import { swiglu, relu, gelu } from '../gpu/ops/activation.ts';
import { attention, attentionDecode } from '../gpu/ops/attention.ts';
import { ropeAndCache, type Strided } from '../gpu/ops/kvcache.ts';
import { attentionAppend, fusedGemvFits, gateUpRmsGemv, qkvRmsGemv, residGemv } from '../gpu/ops/decode-layer.ts';
import { canFuseDecode, canFuseDecodeBatch, fusedDecodeStep, packedLayout, type DecodeSpec, type PackedLayout } from '../gpu/ops/decode.ts';
import { Rng } from '../util/rng.ts';
import type { TextTokenizer } from './tokenizer.ts';
import { bucketLen, type TransformerModel } from './transformer.ts';
import { familyOf, plainMlp } from './names.ts';

export const MAX_GENERATE_TOKENS = 4096;

/** The fused layer products' per-model inputs (Generator.layerDecoder). */
export interface FusedLayers {
  /** Layer i's q/k/v biases concatenated (NQ+2·NKV), or null without biases. */
  qkvBias(i: number): Tensor | null;
}
export const MAX_STOP_SEQUENCES = 8;

export interface SamplingOptions {
  maxTokens: number;
  /** 0 = greedy (argmax, first maximum on ties). */
  temperature: number;
  /** 0 = off. */
  topK: number;
  /** 1 = off. */
  topP: number;
  seed: number;
  stop: string[];
  /** Stop at the tokenizer's EOS (default true). */
  stopAtEos?: boolean;
  /** More end-of-sequence ids (config.json's eos_token_id list); ignored with stopAtEos false. */
  eosIds?: readonly number[];
}

export interface GenerateResult {
  promptIds: number[];
  tokenIds: number[];
  text: string;
  finishReason: 'stop' | 'length';
  /** log p(token) of each generated token under the (unscaled) model distribution. */
  logprobs: number[];
  /** Top alternatives per generated token when requested. */
  topLogprobs?: { id: number; logprob: number }[][];
  timing: { prefillMs: number; decodeMs: number; tokensPerS: number };
}

export interface GenerateHooks {
  /** Called for each generated token with the text it completes ('' while a character is partial). */
  onToken?(t: { id: number; text: string }): void | Promise<void>;
  /** Number of top alternatives per generated token to return (0–5). */
  topLogprobs?: number;
  /** Checked between tokens (e.g. client went away). */
  isAborted?(): boolean;
}

/** A KV cache for one sequence: per layer (1, maxT, Hkv, Dh). */
interface KvCache {
  k: Tensor[]; // per layer (1, maxT, Hkv, Dh): views into `all` when the fused decoder is used
  v: Tensor[];
  maxT: number;
  all: Tensor | null; // (L·2·maxT, Hkv·Dh): layer l's k rows then its v rows (fused decoder layout)
}

/** Index of the first maximum. */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

/** log-softmax of one row, in f64. */
export function logSoftmax(x: ArrayLike<number>): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) m = Math.max(m, x[i]!);
  let s = 0;
  for (let i = 0; i < x.length; i++) s += Math.exp(x[i]! - m);
  const lse = m + Math.log(s);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i]! - lse;
  return out;
}

/** Samples one id from logits with temperature, top-k and top-p (nucleus), using `rng`. */
export function sample(logits: ArrayLike<number>, o: Pick<SamplingOptions, 'temperature' | 'topK' | 'topP'>, rng: Rng): number {
  if (o.temperature <= 0) return argmax(logits);
  const V = logits.length;
  const idx = Array.from({ length: V }, (_, i) => i);
  idx.sort((a, b) => logits[b]! - logits[a]! || a - b); // descending, stable on ties
  let keep = o.topK > 0 ? Math.min(o.topK, V) : V;
  const m = logits[idx[0]!]!;
  const p = new Float64Array(keep);
  let sum = 0;
  for (let i = 0; i < keep; i++) sum += p[i] = Math.exp((logits[idx[i]!]! - m) / o.temperature);
  if (o.topP < 1) {
    let c = 0;
    for (let i = 0; i < keep; i++) {
      c += p[i]! / sum;
      if (c >= o.topP) {
        keep = i + 1;
        break;
      }
    }
    sum = 0;
    for (let i = 0; i < keep; i++) sum += p[i]!;
  }
  let u = rng.next() * sum;
  for (let i = 0; i < keep; i++) {
    u -= p[i]!;
    if (u < 0) return idx[i]!;
  }
  return idx[keep - 1]!;
}

export class Generator {
  /** Packed weights for the one-dispatch decoder (small Llama models), built on first use. */
  private fused: { packed: Tensor; lay: PackedLayout } | null | undefined;

  constructor(
    readonly e: Engine,
    readonly model: TransformerModel,
    readonly tokenizer: TextTokenizer,
    /** false forces the layer-by-layer decode path (tests compare the two). */
    readonly allowFused = true,
    /**
     * Layer-by-layer decode with the fused layer kernels (ops/decode-layer.ts: five dispatches per
     * Llama-layout layer) or the unfused ops (tests and bench/generate compare the two). 'auto': fused
     * on GPUs only. On lavapipe a decode step is bound by the kernels' loads per lane, not by the
     * ~17 µs a dispatch costs there, and the fused GEMVs (32 lanes per row, laid out for GPU
     * coalescing) measured slower than the register-tiled matmul (bench/generate.ts, docs/BENCHMARKS.md).
     */
    readonly fuseLayers: boolean | 'auto' = 'auto',
  ) {}

  /** The q/k/v biases of each layer concatenated (NQ+2·NKV), for the fused q/k/v product; built on first use. */
  private qkvBiases: (Tensor | null)[] | null = null;

  /**
   * Whether a decode step (one token, batch 1) runs the fused layer kernels: Llama layout (separate
   * q/k/v, RMSNorm, gated FFN without biases, RoPE), every product's K a multiple of 8 and each
   * weight within one storage binding.
   */
  get layerFused(): boolean {
    return (this.layerFusedMemo ??= this.computeLayerFused());
  }
  private layerFusedMemo: boolean | undefined;
  private computeLayerFused(): boolean {
    if (this.fuseLayers === false || (this.fuseLayers === 'auto' && this.e.ctx.info.isSoftware)) return false;
    const c = this.c;
    const fam = familyOf(c.arch);
    if (fam.fusedQkv || fam.mlp || fam.conv1d || !c.gatedFfn || c.mlpBias || c.norm !== 'rmsnorm' || c.positions !== 'rope' || c.headDim % 2 !== 0) return false;
    if (this.e.limits.maxStorageBuffersPerShaderStage < 8) return false;
    return this.model.layers.every((L) => ['q', 'k', 'v', fam.attnOut, 'gate', 'up', 'down'].every((s) => fusedGemvFits(this.e, L.linears.get(s)!.w)));
  }

  /**
   * What the continuous batch's forward (batch-forward.ts) needs to run the fused layer products
   * for decode iterations of ≤ 8 rows, or null where layerFused is false. Valid until free().
   */
  layerDecoder(): FusedLayers | null {
    return this.layerFused ? { qkvBias: (i) => this.qkvBias(i) } : null;
  }

  private qkvBias(i: number): Tensor | null {
    if (!this.c.qkvBias) return null;
    if (!this.qkvBiases) {
      this.qkvBiases = this.model.layers.map((L) => {
        const bs = ['q', 'k', 'v'].map((s) => L.linears.get(s)!.b);
        if (bs.some((b) => !b)) throw new ShapeError('qkvBias set but a q/k/v bias is missing');
        const n = bs.reduce((a, b) => a + b!.numel, 0);
        const t = this.e.empty([n]);
        let at = 0;
        for (const b of bs) {
          this.e.copyBytes(b!, 0, t, at * 4, b!.byteLength);
          at += b!.numel;
        }
        return t;
      });
    }
    return this.qkvBiases[i]!;
  }

  /**
   * One decode token through the fused layer kernels (layerFused): per layer q/k/v (+ RMSNorm,
   * biases), attention (+ RoPE, cache append), o (+ residual), gate/up (+ RMSNorm, SiLU·mul),
   * down (+ residual). Returns the logits (1, V).
   */
  private fusedLayerStep(id: number, pos: number, kv: KvCache): Tensor {
    const { e, c, model } = this;
    const Dh = c.headDim;
    const idT = e.upload(Int32Array.of(id), [1], 'i32');
    const x = embedding(e, idT, model.embedding); // (1, D): the residual stream, updated in place
    idT.free();
    const rope = { invFreq: model.invFreq!, interleaved: c.ropeInterleaved };
    const attnOut = familyOf(c.arch).attnOut;
    for (let i = 0; i < c.nLayers; i++) {
      const L = model.layers[i]!;
      const lin = (s: string) => L.linears.get(s)!;
      const qkv = qkvRmsGemv(e, x, L.attnNorm.w, c.normEps, lin('q').w, lin('k').w, lin('v').w, this.qkvBias(i));
      const att = attentionAppend(e, qkv, kv.k[i]!, kv.v[i]!, pos, { H: c.nHeads, HKV: c.nKvHeads, D: Dh, rope });
      qkv.free();
      residGemv(e, att.view([1, c.nHeads * Dh]), lin(attnOut).w, x, lin(attnOut).b); // x += att·Woᵀ + b
      att.free();
      const act = gateUpRmsGemv(e, x, L.ffnNorm.w, c.normEps, lin('gate').w, lin('up').w);
      residGemv(e, act, lin('down').w, x); // x += act·W_downᵀ
      act.free();
    }
    const logits = model.headLogits(x);
    x.free();
    return logits;
  }

  private specFor(): DecodeSpec {
    const c = this.c;
    return {
      D: c.dim, L: c.nLayers, H: c.nHeads, HKV: c.nKvHeads, DH: c.headDim, F: c.hiddenDim, V: c.vocabSize, MAXT: c.maxSeqLen,
      EPS: c.normEps, INV_FREQ: this.model.invFreq!, INTERLEAVED: c.ropeInterleaved, WG: 32, // one workgroup: 32 lanes measured best on lavapipe (8: 516, 32: 564, 64: 486, 128: 498 tokens/s, loaded machine)
    };
  }

  /** The fused decoder's packed weights when this model and cache length qualify, else null. */
  private fusedFor(batch = false): { packed: Tensor; lay: PackedLayout; spec: DecodeSpec } | null {
    const c = this.c;
    // CPU drivers only: there one workgroup is one thread doing the whole step without dispatch
    // overhead; on a GPU one workgroup would leave all but one multiprocessor idle.
    if (!this.allowFused || !this.e.ctx.info.isSoftware) return null;
    // The fused kernels read separate q/k/v and a gated FFN in Linear layout, RoPE, no biases.
    const fam = familyOf(c.arch);
    if (fam.fusedQkv || fam.mlp || fam.conv1d || c.qkvBias || c.oBias || c.mlpBias || !c.gatedFfn || c.positions !== 'rope') return null;
    const spec = this.specFor();
    // The packed matrices share one precision: all f16/bf16 when the model's are, else f32 (a model
    // with some modules merged to f32 after a knot and the rest 16-bit is packed widened to f32:
    // these models are small, ≤ FUSED_DECODE_MAX_PARAMS).
    const m = this.model;
    const mats = [m.embedding, m.classifierWeight, ...m.layers.flatMap((L) => ['q', 'k', 'v', 'o', 'gate', 'up', 'down'].map((s) => L.linears.get(s)!.w))];
    const kinds = new Set(mats.map((t) => t.dtype));
    const kind = kinds.size === 1 ? mats[0]!.dtype : 'f32';
    const lay = packedLayout(spec, c.tiedEmbeddings, kind === 'f16' || kind === 'bf16' ? kind : undefined);
    if (!canFuseDecode(this.e, spec, lay)) return null;
    if (batch && !canFuseDecodeBatch(this.e, spec, lay)) return null;
    if (this.fused === undefined) this.fused = this.packWeights(lay);
    return { ...this.fused!, spec };
  }

  /**
   * The batched one-dispatch decoder's inputs (packed weights, spec) for the continuous batcher, or
   * null where it does not apply (GPUs, other architectures, larger models). Valid until free().
   */
  batchDecoder(): { packed: Tensor; lay: PackedLayout; spec: DecodeSpec } | null {
    return this.fusedFor(true);
  }

  /** Copies every weight into one buffer (the fused kernel binds it once). */
  private packWeights(lay: PackedLayout): { packed: Tensor; lay: PackedLayout } {
    const { e, model } = this;
    const packed = e.empty([lay.total]);
    const put = (t: Tensor, at: number) => {
      if (lay.half || t.dtype === 'f32') return e.copyBytes(t, 0, packed, at * 4, t.byteLength);
      // A 16-bit matrix into an f32 layout: widened by gathering all its rows (the embedding kernel).
      const R = t.shape[0]!;
      const ids = e.upload(Int32Array.from({ length: R }, (_, i) => i), [R], 'i32');
      const f = embedding(e, ids, t);
      e.copyBytes(f, 0, packed, at * 4, f.byteLength);
      f.free(); // pooled: reuse is ordered after the copy
      ids.free();
    };
    put(model.embedding, lay.emb);
    model.layers.forEach((L, i) => {
      const o = lay.layers[i]!;
      put(L.attnNorm.w, o.attnNorm);
      put(L.linears.get('q')!.w, o.wq);
      put(L.linears.get('k')!.w, o.wk);
      put(L.linears.get('v')!.w, o.wv);
      put(L.linears.get('o')!.w, o.wo);
      put(L.ffnNorm.w, o.ffnNorm);
      put(L.linears.get('gate')!.w, o.wg);
      put(L.linears.get('up')!.w, o.wu);
      put(L.linears.get('down')!.w, o.wd);
    });
    put(model.finalNormWeights.w, lay.finalNorm);
    if (lay.cls !== lay.emb) put(model.classifierWeight, lay.cls);
    return { packed, lay };
  }

  /** Frees the fused decoder's packed weights (the model's own weights are not touched). */
  free(): void {
    this.fused?.packed.free();
    this.fused = undefined;
    for (const t of this.qkvBiases ?? []) t?.free();
    this.qkvBiases = null;
  }

  private get c() {
    return this.model.config;
  }

  private newCache(maxT: number, fused: boolean): KvCache {
    const c = this.c;
    const k: Tensor[] = [];
    const v: Tensor[] = [];
    const rowW = c.nKvHeads * c.headDim;
    const all = fused ? this.e.empty([c.nLayers * 2 * maxT, rowW]) : null;
    for (let i = 0; i < c.nLayers; i++) {
      if (all) {
        k.push(all.rows(2 * i * maxT, (2 * i + 1) * maxT).view([1, maxT, c.nKvHeads, c.headDim]));
        v.push(all.rows((2 * i + 1) * maxT, (2 * i + 2) * maxT).view([1, maxT, c.nKvHeads, c.headDim]));
      } else {
        k.push(this.e.empty([1, maxT, c.nKvHeads, c.headDim]));
        v.push(this.e.empty([1, maxT, c.nKvHeads, c.headDim]));
      }
    }
    return { k, v, maxT, all };
  }

  private freeCache(kv: KvCache): void {
    if (kv.all) kv.all.free();
    else for (const t of [...kv.k, ...kv.v]) t.free();
  }

  /**
   * Runs T new tokens (positions start..start+T-1) through the model, filling the cache, and
   * returns the logits of the last position (1, V). Nothing is read back.
   */
  private step(realIds: number[], start: number, kv: KvCache, allLogits = false): Tensor {
    const { e, c, model } = this;
    // Prefill pads the prompt to a length bucket (bounded pipeline variants); causal attention keeps
    // the real rows exact, and the padded cache rows are overwritten by decode before they are read.
    const T = realIds.length === 1 ? 1 : Math.min(bucketLen(realIds.length, c.maxSeqLen), kv.maxT - start);
    const ids = T === realIds.length ? realIds : [...realIds, ...new Array<number>(T - realIds.length).fill(0)];
    const Dh = c.headDim;
    const idT = e.upload(Int32Array.from(ids), [T], 'i32');
    let x = embedding(e, idT, model.embedding);
    idT.free();
    if (model.positionTable) {
      const pos = e.upload(Int32Array.from(ids, (_, t) => start + t + c.positionOffset), [T], 'i32');
      const pe = embedding(e, pos, model.positionTable);
      const x1 = add(e, x, pe);
      for (const t of [pos, pe, x]) t.free();
      x = x1;
    }
    const rope = model.ropeGpu;
    for (let i = 0; i < c.nLayers; i++) {
      const L = model.layers[i]!;
      const n1 = model.applyNorm(x, L.attnNorm);
      let q: Strided, k: Strided, v: Strided;
      const owned: Tensor[] = [];
      if (familyOf(c.arch).fusedQkv) {
        const lin = L.linears.get(familyOf(c.arch).fusedQkv!)!;
        const qkv = linear(e, n1, lin.w, lin.b);
        owned.push(qkv);
        q = { t: qkv, stride: 3 * c.dim, off: 0 };
        k = { t: qkv, stride: 3 * c.dim, off: c.dim };
        v = { t: qkv, stride: 3 * c.dim, off: 2 * c.dim };
      } else {
        const mk = (s: string) => {
          const lin = L.linears.get(s)!;
          const t = linear(e, n1, lin.w, lin.b);
          owned.push(t);
          return { t, stride: t.shape.at(-1)!, off: 0 };
        };
        q = mk('q');
        k = mk('k');
        v = mk('v');
      }
      n1.free();
      const qr = ropeAndCache(e, q, k, v, kv.k[i]!, kv.v[i]!, start, { B: 1, T, H: c.nHeads, HKV: c.nKvHeads, D: Dh, rope });
      for (const t of owned) t.free();
      let att: Tensor;
      if (T === 1) {
        att = attentionDecode(e, qr, kv.k[i]!, kv.v[i]!, start + 1);
      } else {
        if (start !== 0) throw new ShapeError('prefill must start at position 0');
        // The cache's first T rows are exactly this prompt's roped k and v (B = 1).
        const rowsOf = (cache: Tensor) => cache.view([kv.maxT, c.nKvHeads * Dh]).rows(0, T).view([1, T, c.nKvHeads, Dh]);
        const r = attention(e, qr, rowsOf(kv.k[i]!), rowsOf(kv.v[i]!));
        r.saved.lse.free();
        att = r.out;
      }
      qr.free();
      const o = L.linears.get(familyOf(c.arch).attnOut)!;
      matmul(e, att.view([T, c.nHeads * Dh]), o.w, { transB: true, accumulate: x, bias: o.b ?? undefined }); // x += att·Woᵀ + b
      att.free();
      const n2 = model.applyNorm(x, L.ffnNorm);
      let act: Tensor;
      let down;
      if (c.gatedFfn) {
        const g = L.linears.get('gate')!;
        const u = L.linears.get('up')!;
        const gt = linear(e, n2, g.w, g.b);
        const ut = linear(e, n2, u.w, u.b);
        act = swiglu(e, gt, ut);
        gt.free();
        ut.free();
        down = L.linears.get('down')!;
      } else {
        const [fc1, fc2] = plainMlp(c.arch);
        const l1 = L.linears.get(fc1!)!;
        const pre = linear(e, n2, l1.w, l1.b);
        act = c.activation === 'relu' ? relu(e, pre) : gelu(e, pre);
        pre.free();
        down = L.linears.get(fc2!)!;
      }
      n2.free();
      matmul(e, act, down.w, { transB: true, accumulate: x, bias: down.b ?? undefined }); // x += act·W_downᵀ + b
      act.free();
    }
    let last = x;
    const Treal = realIds.length;
    if (!allLogits && T > 1) {
      last = e.empty([1, c.dim]);
      e.copyBytes(x, (Treal - 1) * c.dim * 4, last, 0, c.dim * 4);
      x.free();
    }
    const logits = model.headLogits(last);
    last.free();
    return logits;
  }

  /** Logits (T, V) of every position of `ids` (no cache kept): for scoring and echo logprobs. */
  async promptLogits(ids: number[]): Promise<Float32Array> {
    if (ids.length === 0 || ids.length > this.c.maxSeqLen) throw new ShapeError(`prompt of ${ids.length} tokens (limit ${this.c.maxSeqLen})`);
    const kv = this.newCache(bucketLen(ids.length, this.c.maxSeqLen), false);
    try {
      const logits = this.step(ids, 0, kv, true);
      const out = (await this.e.readF32(logits)).slice(0, ids.length * this.c.vocabSize);
      logits.free();
      return out;
    } finally {
      this.freeCache(kv);
    }
  }

  /** Generates a completion of `promptIds` alone (batch 1, contiguous cache). */
  async generate(promptIds: number[], o: SamplingOptions, hooks: GenerateHooks = {}): Promise<GenerateResult> {
    const c = this.c;
    const stream = new TokenStream(this.tokenizer, promptIds, o, hooks, c.maxSeqLen);
    const cacheT = bucketLen(promptIds.length + stream.maxNew, c.maxSeqLen);
    const fused = this.fusedFor();
    const kv = this.newCache(cacheT, !!fused);
    // Cache rows must be 256-byte aligned for the per-layer views; otherwise use separate tensors.
    const fusedLogits = fused ? this.e.empty([1, c.vocabSize]) : null;
    try {
      let logitsT = this.step(promptIds, 0, kv);
      for (;;) {
        const logits = await this.e.readF32(logitsT);
        logitsT.free();
        const id = await stream.push(logits);
        if (id === null) break;
        const pos = promptIds.length + stream.tokenIds.length - 1;
        if (fused) {
          fusedDecodeStep(this.e, fused.spec, fused.lay, fused.packed, kv.all!, fusedLogits!, id, pos, kv.maxT);
          logitsT = fusedLogits!.rows(0, 1); // a non-owning view: freeing it after the read keeps the buffer
        } else logitsT = this.layerFused ? this.fusedLayerStep(id, pos, kv) : this.step([id], pos, kv);
      }
    } finally {
      this.freeCache(kv);
      fusedLogits?.free();
    }
    const r = stream.result();
    await stream.flushed();
    return r;
  }
}

/**
 * One sequence's side of generation: sampling from each position's logits (seeded RNG), EOS and
 * stop sequences, streaming text, logprobs and timing. Shared by the batch-1 path above and the
 * continuous batcher (batcher.ts), so both give the same tokens for the same logits.
 */
/** Tokens a stream may have sampled but not yet delivered to its reader (see TokenStream.deliver). */
const MAX_UNSENT = 32;

export class TokenStream {
  readonly maxNew: number;
  readonly tokenIds: number[] = [];
  private readonly logprobs: number[] = [];
  private readonly top: { id: number; logprob: number }[][] = [];
  private text = '';
  private finish: 'stop' | 'length' = 'length';
  private readonly rng: Rng;
  private readonly dec: ReturnType<TextTokenizer['createStreamDecoder']>;
  private readonly eos: ReadonlySet<number>;
  private readonly t0 = performance.now();
  private tFirst = 0;
  private done = false;
  /** Deliveries (`onToken`, a network write each) run in order behind the sampling, not inside it. */
  private sink: Promise<void> = Promise.resolve();
  private unsent = 0;
  private sinkError: { err: unknown } | null = null;

  constructor(
    readonly tokenizer: TextTokenizer,
    readonly promptIds: number[],
    readonly o: SamplingOptions,
    readonly hooks: GenerateHooks,
    maxSeqLen: number,
  ) {
    if (promptIds.length === 0) throw new ShapeError('empty prompt');
    if (promptIds.length >= maxSeqLen) throw new ShapeError(`prompt of ${promptIds.length} tokens leaves no room in the model's context of ${maxSeqLen}`);
    this.maxNew = Math.min(o.maxTokens, maxSeqLen - promptIds.length);
    this.rng = new Rng(o.seed >>> 0);
    this.dec = tokenizer.createStreamDecoder({ context: promptIds });
    this.eos = new Set(o.stopAtEos === false ? [] : [...(tokenizer.eos !== null ? [tokenizer.eos] : []), ...(o.eosIds ?? [])]);
  }

  get finished(): boolean {
    return this.done;
  }

  /**
   * Consumes the logits (V) of the next position: samples, streams the token, checks EOS, stop
   * sequences and the length. Returns the token to feed next, or null when the sequence is done.
   */
  async push(logits: Float32Array): Promise<number | null> {
    if (this.done) return null;
    if (this.tokenIds.length === 0) this.tFirst = performance.now();
    if (this.maxNew <= 0) return this.end('length');
    const id = sample(logits, this.o, this.rng);
    const lsm = logSoftmax(logits);
    if (this.eos.has(id)) return this.end('stop');
    this.tokenIds.push(id);
    this.logprobs.push(lsm[id]!);
    if (this.hooks.topLogprobs) this.top.push(topK(lsm, this.hooks.topLogprobs));
    const piece = this.dec.decodeToken(id);
    this.text += piece;
    const hit = firstStop(this.text, this.o.stop);
    if (hit >= 0) {
      this.text = this.text.slice(0, hit);
      return this.end('stop');
    }
    this.deliver({ id, text: piece });
    // A slow reader holds its sequence (and so its batch) back only once MAX_UNSENT tokens wait.
    if (this.unsent > MAX_UNSENT) await this.sink;
    if (this.sinkError) throw this.sinkError.err;
    if (this.hooks.isAborted?.()) return this.end('length');
    if (this.tokenIds.length >= this.maxNew) return this.end('length');
    return id;
  }

  /**
   * Queues a token for `onToken` without waiting for it: the caller (a batch's decode loop) goes on
   * to its next iteration at once instead of after a network write, so it never leaves the device
   * to another class between two iterations just because a socket was slow to drain.
   */
  private deliver(t: { id: number; text: string }): void {
    const on = this.hooks.onToken;
    if (!on) return;
    this.unsent++;
    this.sink = this.sink
      .then(() => (this.sinkError ? undefined : on(t)))
      .catch((err: unknown) => {
        this.sinkError ??= { err };
      })
      .finally(() => {
        this.unsent--;
      });
  }

  /** Resolves when every token has been delivered; rejects with the first delivery error. */
  async flushed(): Promise<void> {
    await this.sink;
    if (this.sinkError) throw this.sinkError.err;
  }

  /** Ends the sequence early (e.g. the client went away). */
  abort(): void {
    if (!this.done) this.end('length');
  }

  private end(reason: 'stop' | 'length'): null {
    this.done = true;
    this.finish = reason;
    if (reason === 'length') this.text += this.dec.flush();
    return null;
  }

  result(): GenerateResult {
    const t1 = performance.now();
    const decodeMs = t1 - (this.tFirst || t1);
    const n = this.tokenIds.length;
    return {
      promptIds: this.promptIds,
      tokenIds: this.tokenIds,
      text: this.text,
      finishReason: this.finish,
      logprobs: this.logprobs,
      topLogprobs: this.hooks.topLogprobs ? this.top : undefined,
      timing: { prefillMs: (this.tFirst || t1) - this.t0, decodeMs, tokensPerS: n > 1 && decodeMs > 0 ? ((n - 1) * 1000) / decodeMs : 0 },
    };
  }
}

function firstStop(text: string, stops: string[]): number {
  let best = -1;
  for (const s of stops) {
    if (!s) continue;
    const i = text.indexOf(s);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

function topK(lsm: Float64Array, k: number): { id: number; logprob: number }[] {
  const out: { id: number; logprob: number }[] = [];
  for (let i = 0; i < lsm.length; i++) {
    if (out.length < k || lsm[i]! > out[out.length - 1]!.logprob) {
      out.push({ id: i, logprob: lsm[i]! });
      out.sort((a, b) => b.logprob - a.logprob || a.id - b.id);
      if (out.length > k) out.pop();
    }
  }
  return out;
}
