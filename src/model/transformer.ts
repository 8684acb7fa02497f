// Decoder-only transformers on the GPU engine: Llama and the families that share its layout (Qwen2:
// q/k/v biases; Mistral) (RMSNorm, RoPE with HF's scalings, GQA, SwiGLU), OPT (pre-LN,
// learned positions with offset 2, ReLU, biases) and GPT-2 (pre-LN, learned positions, GELU tanh,
// fused c_attn). One training forward (saving what the backward needs), one backward that yields
// only LoRA gradients (every base weight is frozen), and logits for evaluation. Generation lives in
// generate.ts and reuses the uploaded weights.
//
// Shapes: B sequences × T positions, N = B·T rows; D = model width, Hq/Hkv heads of size Dh,
// F = FFN width, V = vocabulary. Activations are row-major (N, features).
import { ShapeError, type Engine, type Tensor } from '../gpu/engine.ts';
import { add } from '../gpu/ops/elementwise.ts';
import { linear, linearBackward, matmul } from '../gpu/ops/matmul.ts';
import { loraLinear, loraLinearBackward } from '../gpu/ops/lora.ts';
import { rmsnorm, rmsnormBackward, layernorm, layernormBackward } from '../gpu/ops/norm.ts';
import { embedding } from '../gpu/ops/embedding.ts';
import { rope } from '../gpu/ops/rope.ts';
import { swiglu, swigluBackward, relu, reluBackward, gelu, geluBackward } from '../gpu/ops/activation.ts';
import { attention, attentionBackward, type AttentionSaved } from '../gpu/ops/attention.ts';
import { crossEntropy } from '../gpu/ops/loss.ts';
import { sliceCols, scatterCols } from '../gpu/ops/layout.ts';
import type { ModelConfig } from './config.ts';
import { modelInvFreq } from './rope.ts';
import { familyOf, plainMlp, hfModulePath, layerPrefixOf, moduleShorts, moduleWeightName } from './names.ts';

export { hfModulePath, layerPrefixOf, moduleShorts, moduleWeightName };
import { type ModelWeights, type WeightTensor, classifierWeight, getTensor, halfBitsOf, linearWeight } from './weights.ts';

/** A linear layer on the GPU: w (out, in), optional bias (out). */
export interface GpuLinear {
  w: Tensor;
  b: Tensor | null;
}

export interface GpuNorm {
  w: Tensor;
  b: Tensor | null;
}

/** Per-layer linear modules keyed by the short names of src/cola/modules.ts. */
export interface GpuLayer {
  attnNorm: GpuNorm;
  ffnNorm: GpuNorm;
  linears: Map<string, GpuLinear>;
}

/** One LoRA adapter on one linear module: ΔW = scale·B·A. */
export interface LoraModule {
  a: Tensor; // (r, in)
  b: Tensor; // (out, r)
  bias?: Tensor; // (out) LoRA bias (OPT in the paper)
}

/** The adapters of a link, keyed `${layer}.${short}` (e.g. "3.q"). */
export interface LoraWeights {
  scale: number;
  modules: Map<string, LoraModule>;
}

export interface LoraGrads {
  dA: Tensor;
  dB: Tensor;
  dBias?: Tensor;
}

/** A training/evaluation batch already on the GPU. */
export interface GpuBatch {
  B: number;
  T: number;
  ids: Tensor; // i32 (B·T)
  /** i32 (B·T): next-token targets, -1 = no loss at this position. */
  targets?: Tensor;
  /** u32 (B,T): 1 = real token, 0 = padding (never attended to). */
  keyMask?: Tensor;
  /** i32 (B·T): position ids for learned position tables (OPT, GPT-2), offset already applied. */
  positions?: Tensor;
}

/**
 * Padded sequence length for a batch of longest sequence T: kernels specialise on some sizes, and
 * on lavapipe each new pipeline costs up to seconds to compile, so lengths are rounded up to a few
 * buckets (multiples of 16 up to 128, then of 64), never past `max`.
 */
export function bucketLen(T: number, max: number): number {
  const b = T <= 128 ? Math.ceil(T / 16) * 16 : Math.ceil(T / 64) * 64;
  return Math.max(T, Math.min(b, max));
}


// What the backward needs from one layer's forward.
interface LayerSaved {
  x: Tensor; // (N,D) layer input
  xn: Tensor; // (N,D) attn-normed
  n1: Tensor[]; // norm stats (rstd | mean, rstd)
  qkvIn: Tensor | null; // gpt2: (N,3D) fused projection output (kept for its LoRA h)
  h: Map<string, Tensor>; // LoRA h = x·Aᵀ per module (N,r)
  q: Tensor; // (B,T,Hq,Dh) after RoPE
  k: Tensor; // (B,T,Hkv,Dh) after RoPE
  v: Tensor; // (B,T,Hkv,Dh)
  att: AttentionSaved;
  x2: Tensor; // (N,D) after attention residual
  xn2: Tensor; // (N,D)
  n2: Tensor[];
  pre: Tensor[]; // llama: [gate, up] (N,F); opt/gpt2: [fc1 pre-activation] (N,F)
  act: Tensor; // (N,F) FFN activation (input of down/fc2)
}

export interface ForwardResult {
  /** (N,D) final-normed hidden states. */
  hidden: Tensor;
  saved: ForwardSaved | null;
}

interface ForwardSaved {
  layers: LayerSaved[];
  xLast: Tensor; // (N,D) input to the final norm
  nf: Tensor[];
}

export class TransformerModel {
  readonly layers: GpuLayer[] = [];
  private embedTable!: Tensor; // (V,D)
  private posTable: Tensor | null = null; // (P,D) learned positions
  private finalNorm!: GpuNorm;
  private classifier!: Tensor; // (V,D) (the embedding itself when tied)
  /** RoPE inverse frequencies (Dh/2) as HF computes them, scaling included (src/model/rope.ts); null without RoPE. */
  readonly invFreq: Float32Array | null;
  private invFreqT: Tensor | null = null; // the same on the GPU, for the generation kernels

  private constructor(
    readonly e: Engine,
    readonly config: ModelConfig,
  ) {
    this.invFreq = modelInvFreq(config);
  }

  /** RoPE for the generation kernels: the inverse frequencies on the GPU and the pairing; null without RoPE. */
  get ropeGpu(): { invFreq: Tensor; interleaved: boolean } | null {
    if (!this.invFreq) return null;
    if (!this.invFreqT) this.invFreqT = this.e.upload(this.invFreq, [this.invFreq.length]);
    return { invFreq: this.invFreqT, interleaved: this.config.ropeInterleaved };
  }

  /**
   * Uploads CPU weights (HF names) to the GPU. GPT-2 Conv1D weights are transposed to (out, in).
   * The matrices the kernels read as 16-bit (linear weights, token embedding, classifier) stay
   * f16/bf16 when the tensor is (weights.ts halfBitsOf); norms, biases and position tables are f32.
   */
  static upload(e: Engine, weights: ModelWeights): TransformerModel {
    const c = weights.config;
    const m = new TransformerModel(e, c);
    const upMatrix = (t: WeightTensor) => {
      const bits = halfBitsOf(t);
      return bits ? e.upload(bits, t.shape, t.dtype) : e.upload(t.data, t.shape);
    };
    const up = (name: string) => {
      const t = getTensor(weights, name);
      return e.upload(t.data, t.shape);
    };
    const upOpt = (name: string) => (weights.tensors.has(name) ? up(name) : null);
    const fam = familyOf(c.arch);
    m.embedTable = upMatrix(getTensor(weights, fam.embedding));
    if (fam.positions) m.posTable = up(fam.positions);
    if (c.tiedEmbeddings) m.classifier = m.embedTable;
    else m.classifier = upMatrix(classifierWeight(weights));
    const fn = fam.finalNorm;
    m.finalNorm = { w: up(`${fn}.weight`), b: upOpt(`${fn}.bias`) };
    for (let i = 0; i < c.nLayers; i++) {
      const p = layerPrefixOf(c.arch, i);
      const [n1, n2] = fam.norms;
      const linears = new Map<string, GpuLinear>();
      for (const short of moduleShorts(c.arch)) {
        const wn = moduleWeightName(c.arch, i, short);
        const lw = linearWeight(weights, wn);
        linears.set(short, { w: upMatrix(lw), b: upOpt(wn.replace(/\.weight$/, '.bias')) });
      }
      m.layers.push({ attnNorm: { w: up(`${p}${n1}.weight`), b: upOpt(`${p}${n1}.bias`) }, ffnNorm: { w: up(`${p}${n2}.weight`), b: upOpt(`${p}${n2}.bias`) }, linears });
    }
    return m;
  }

  /** The frozen linear of a module (what a knot merges into). */
  linearOf(layer: number, short: string): GpuLinear {
    const l = this.layers[layer]?.linears.get(short);
    if (!l) throw new ShapeError(`no module ${layer}.${short}`);
    return l;
  }

  get embedding(): Tensor {
    return this.embedTable;
  }
  get positionTable(): Tensor | null {
    return this.posTable;
  }
  get finalNormWeights(): GpuNorm {
    return this.finalNorm;
  }
  get classifierWeight(): Tensor {
    return this.classifier;
  }

  /** Every weight tensor on the device, each once (a tied classifier is the embedding). */
  weightTensors(): Tensor[] {
    const seen = new Set<Tensor>();
    const f = (t: Tensor | null) => t && seen.add(t);
    f(this.embedTable);
    f(this.posTable);
    f(this.classifier);
    f(this.finalNorm.w);
    f(this.finalNorm.b);
    for (const l of this.layers) {
      for (const n of [l.attnNorm, l.ffnNorm]) f(n.w), f(n.b);
      for (const lin of l.linears.values()) f(lin.w), f(lin.b);
    }
    return [...seen];
  }

  /** Bytes of the weights on the device (16-bit tensors count 2 bytes a value). */
  get weightBytes(): number {
    return this.weightTensors().reduce((n, t) => n + t.byteLength, 0);
  }

  /** Frees every weight tensor. */
  free(): void {
    const seen = new Set<Tensor>();
    const f = (t: Tensor | null) => {
      if (t && !seen.has(t)) {
        seen.add(t);
        t.free();
      }
    };
    f(this.embedTable);
    f(this.posTable);
    f(this.invFreqT);
    this.invFreqT = null;
    f(this.classifier);
    f(this.finalNorm.w);
    f(this.finalNorm.b);
    for (const l of this.layers) {
      f(l.attnNorm.w);
      f(l.attnNorm.b);
      f(l.ffnNorm.w);
      f(l.ffnNorm.b);
      for (const lin of l.linears.values()) {
        f(lin.w);
        f(lin.b);
      }
    }
  }

  // ------------------------------------------------------------------ building blocks

  private norm(x: Tensor, n: GpuNorm): { y: Tensor; stats: Tensor[] } {
    if (this.config.norm === 'rmsnorm') {
      const r = rmsnorm(this.e, x, n.w, this.config.normEps);
      return { y: r.y, stats: [r.rstd] };
    }
    const r = layernorm(this.e, x, n.w, n.b!, this.config.normEps);
    return { y: r.y, stats: [r.mean, r.rstd] };
  }

  /** The model's norm (RMSNorm or LayerNorm) for inference: the statistics are not kept. */
  applyNorm(x: Tensor, n: GpuNorm): Tensor {
    const r = this.norm(x, n);
    for (const t of r.stats) t.free();
    return r.y;
  }

  private normBackward(dy: Tensor, x: Tensor, n: GpuNorm, stats: Tensor[]): Tensor {
    if (this.config.norm === 'rmsnorm') {
      const r = rmsnormBackward(this.e, dy, x, n.w, stats[0]!);
      r.dw.free();
      return r.dx;
    }
    const r = layernormBackward(this.e, dy, x, n.w, stats[0]!, stats[1]!);
    r.dw.free();
    r.db.free();
    return r.dx;
  }

  /** y = x·Wᵀ + b (+ LoRA). Records the LoRA h (N,r) in `h` when saving for backward. */
  private proj(layer: number, short: string, x: Tensor, lora: LoraWeights | null, h: Map<string, Tensor> | null): Tensor {
    const lin = this.layers[layer]!.linears.get(short)!;
    const mod = lora?.modules.get(`${layer}.${short}`);
    if (!mod) return linear(this.e, x, lin.w, lin.b);
    const r = loraLinear(this.e, x, lin.w, lin.b, { a: mod.a, b: mod.b, scale: lora!.scale, bias: mod.bias });
    if (h) h.set(short, r.h);
    else r.h.free();
    return r.y;
  }

  /** dx of a projection; LoRA gradients go to `grads`. */
  private projBackward(layer: number, short: string, dy: Tensor, x: Tensor, lora: LoraWeights | null, h: Map<string, Tensor>, grads: Map<string, LoraGrads> | null, needDx = true): Tensor | undefined {
    const lin = this.layers[layer]!.linears.get(short)!;
    const key = `${layer}.${short}`;
    const mod = lora?.modules.get(key);
    if (!mod) return linearBackward(this.e, dy, x, lin.w, { needDx }).dx;
    const r = loraLinearBackward(this.e, dy, x, lin.w, h.get(short)!, { a: mod.a, b: mod.b, scale: lora!.scale, bias: mod.bias }, { needDx });
    h.get(short)!.free();
    if (grads) grads.set(key, { dA: r.dA, dB: r.dB, dBias: r.dBias });
    else {
      r.dA.free();
      r.dB.free();
      r.dBias?.free();
    }
    return r.dx;
  }

  /** Positions for learned tables: t + offset for each (b, t) (right padding keeps t). */
  positionsFor(B: number, T: number, start = 0): Tensor {
    const p = new Int32Array(B * T);
    for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) p[b * T + t] = start + t + this.config.positionOffset;
    return this.e.upload(p, [B * T], 'i32');
  }

  // ------------------------------------------------------------------ forward / backward

  /**
   * Forward pass to the final-normed hidden states (N,D). With `save`, keeps what backward needs
   * (call `backward` or `freeSaved` afterwards).
   */
  forward(batch: GpuBatch, lora: LoraWeights | null, save: boolean): ForwardResult {
    return drain(this.forwardSteps(batch, lora, save));
  }

  /**
   * The forward as a generator that yields after each layer: a caller that shares the device (the
   * GPU scheduler) can hand it over between layers. Same dispatches, same order as `forward`.
   */
  *forwardSteps(batch: GpuBatch, lora: LoraWeights | null, save: boolean): Generator<void, ForwardResult> {
    const { e, config: c } = this;
    const { B, T } = batch;
    const N = B * T;
    if (batch.ids.numel !== N) throw new ShapeError(`forward: ids ${batch.ids} for B=${B}, T=${T}`);
    if (T > c.maxSeqLen) throw new ShapeError(`sequence length ${T} exceeds the model's ${c.maxSeqLen}`);
    const Dh = c.headDim;
    let x = embedding(e, batch.ids, this.embedTable); // (N,D)
    if (this.posTable) {
      const pos = batch.positions ?? this.positionsFor(B, T);
      const pe = embedding(e, pos, this.posTable);
      const x1 = add(e, x, pe);
      x.free();
      pe.free();
      if (!batch.positions) pos.free();
      x = x1;
    }
    const saved: LayerSaved[] = [];
    for (let i = 0; i < c.nLayers; i++) {
      const L = this.layers[i]!;
      const h = save ? new Map<string, Tensor>() : null;
      const n1 = this.norm(x, L.attnNorm);
      let q: Tensor, k: Tensor, v: Tensor;
      let qkvIn: Tensor | null = null;
      if (familyOf(c.arch).fusedQkv) {
        const qkv = this.proj(i, familyOf(c.arch).fusedQkv!, n1.y, lora, h); // (N,3D)
        q = sliceCols(e, qkv, 0, c.dim).view([B, T, c.nHeads, Dh]);
        k = sliceCols(e, qkv, c.dim, c.dim).view([B, T, c.nKvHeads, Dh]);
        v = sliceCols(e, qkv, 2 * c.dim, c.dim).view([B, T, c.nKvHeads, Dh]);
        qkv.free();
      } else {
        q = this.proj(i, 'q', n1.y, lora, h).view([B, T, c.nHeads, Dh]);
        k = this.proj(i, 'k', n1.y, lora, h).view([B, T, c.nKvHeads, Dh]);
        v = this.proj(i, 'v', n1.y, lora, h).view([B, T, c.nKvHeads, Dh]);
      }
      if (c.positions === 'rope') {
        const ro = { theta: c.ropeTheta, invFreq: this.invFreq!, interleaved: c.ropeInterleaved };
        const qr = rope(e, q, ro);
        const kr = rope(e, k, ro);
        q.free();
        k.free();
        q = qr;
        k = kr;
      }
      const att = attention(e, q, k, v, { keyMask: batch.keyMask });
      const attFlat = att.out.view([N, c.nHeads * Dh]);
      const o = this.proj(i, familyOf(c.arch).attnOut, attFlat, lora, h);
      const x2 = add(e, x, o);
      o.free();
      yield; // mid-layer: attention done, FFN next (finer hand-over points for the GPU scheduler)
      const n2 = this.norm(x2, L.ffnNorm);
      let pre: Tensor[];
      let act: Tensor;
      let f: Tensor;
      if (c.gatedFfn) {
        const g = this.proj(i, 'gate', n2.y, lora, h);
        const u = this.proj(i, 'up', n2.y, lora, h);
        act = swiglu(e, g, u);
        pre = [g, u];
        f = this.proj(i, 'down', act, lora, h);
      } else {
        const [fc1, fc2] = plainMlp(c.arch);
        const a = this.proj(i, fc1!, n2.y, lora, h);
        act = c.activation === 'relu' ? relu(e, a) : gelu(e, a);
        pre = [a];
        f = this.proj(i, fc2!, act, lora, h);
      }
      const x3 = add(e, x2, f);
      f.free();
      if (save) {
        saved.push({ x, xn: n1.y, n1: n1.stats, qkvIn, h: h!, q, k, v, att: att.saved, x2, xn2: n2.y, n2: n2.stats, pre, act });
      } else {
        for (const t of [x, n1.y, ...n1.stats, q, k, v, att.out, att.saved.lse, x2, n2.y, ...n2.stats, ...pre, act]) t.free();
      }
      x = x3;
      yield;
    }
    const nf = this.norm(x, this.finalNorm);
    if (!save) {
      x.free();
      for (const t of nf.stats) t.free();
      return { hidden: nf.y, saved: null };
    }
    return { hidden: nf.y, saved: { layers: saved, xLast: x, nf: nf.stats } };
  }

  /** Rows per chunk so that a (rows, V) f32 block fits one storage binding, 256-byte aligned. */
  private headChunkRows(N: number): number {
    const V = this.config.vocabSize;
    const maxBind = this.e.limits.maxStorageBufferBindingSize;
    let rows = Math.max(1, Math.floor(maxBind / (V * 4)));
    if (rows >= N) return N;
    // Row offsets must be multiples of 256 bytes for both (rows,V) and (rows,D) views.
    const align = 64; // 64 rows × 4 bytes × any width is a multiple of 256
    rows = Math.max(align, Math.floor(rows / align) * align);
    return rows;
  }

  /**
   * Vocabulary rows per chunk of the classifier when it is over the storage-binding limit (a
   * 128k-token vocabulary: 501 MiB in bf16 against lavapipe's 128 MiB), 256-byte aligned; else V.
   */
  private vocabChunk(): number {
    const V = this.config.vocabSize;
    const cls = this.classifier;
    const maxBind = this.e.limits.maxStorageBufferBindingSize;
    if (cls.byteLength <= maxBind) return V;
    const rowBytes = cls.byteLength / V;
    const align = this.e.limits.minStorageBufferOffsetAlignment;
    let g = rowBytes, a = align;
    while (a) [g, a] = [a, g % a];
    const alignRows = align / g;
    return Math.max(alignRows, Math.floor(maxBind / rowBytes / alignRows) * alignRows);
  }

  /** Logits (N,V) of the last hidden states x (N,D): final norm, then the classifier. `x` is not freed. */
  headLogits(x: Tensor): Tensor {
    const h = this.applyNorm(x, this.finalNormWeights);
    const logits = this.logits(h);
    h.free();
    return logits;
  }

  /** Logits (N,V) = hidden·Clsᵀ, computed in row chunks that fit a storage binding. */
  logits(hidden: Tensor): Tensor {
    const N = hidden.shape[0]!;
    const V = this.config.vocabSize;
    const vc = this.vocabChunk();
    if (vc < V) return this.logitsByVocabChunks(hidden, vc);
    const out = this.e.empty([N, V]);
    const step = this.headChunkRows(N);
    for (let r = 0; r < N; r += step) {
      const r1 = Math.min(N, r + step);
      const hv = step === N ? hidden : hidden.rows(r, r1);
      const ov = step === N ? out : out.rows(r, r1);
      matmul(this.e, hv, this.classifier, { transB: true, out: ov });
    }
    return out;
  }

  /**
   * Logits with the classifier bound in vocabulary chunks: each (rows, vc) product goes to a scratch
   * block and its rows are copied into place (one copy per row and chunk; decode has one row).
   */
  private logitsByVocabChunks(hidden: Tensor, vc: number): Tensor {
    const e = this.e;
    const N = hidden.shape[0]!;
    const V = this.config.vocabSize;
    const out = e.empty([N, V]);
    const rows = Math.max(1, Math.min(N, Math.floor(e.limits.maxStorageBufferBindingSize / (vc * 4))));
    for (let r = 0; r < N; r += rows) {
      const r1 = Math.min(N, r + rows);
      // hidden.rows needs 256-byte aligned offsets; a copy of the rows avoids the constraint.
      const hv = rows >= N ? hidden : e.empty([r1 - r, this.config.dim]);
      if (hv !== hidden) e.copyBytes(hidden, r * this.config.dim * 4, hv, 0, (r1 - r) * this.config.dim * 4);
      for (let v0 = 0; v0 < V; v0 += vc) {
        const v1 = Math.min(V, v0 + vc);
        const part = matmul(e, hv, this.classifier.rows(v0, v1), { transB: true }); // (rows, v1 − v0)
        for (let i = 0; i < r1 - r; i++) e.copyBytes(part, i * (v1 - v0) * 4, out, ((r + i) * V + v0) * 4, (v1 - v0) * 4);
        part.free();
      }
      if (hv !== hidden) hv.free();
    }
    return out;
  }

  /**
   * Mean cross-entropy over non-ignored targets and its gradient w.r.t. hidden (N,D).
   * Returns loss (1) and dHidden (N,D).
   */
  lossAndHiddenGrad(hidden: Tensor, targets: Tensor): { loss: Tensor; dHidden: Tensor } {
    if (this.vocabChunk() < this.config.vocabSize) throw new ShapeError(`the classifier (${this.classifier}) is over the storage-binding limit: training through it is not implemented (generation is)`);
    const logits = this.logits(hidden);
    const { loss, dLogits } = crossEntropy(this.e, logits, targets);
    logits.free();
    const N = hidden.shape[0]!;
    const dHidden = this.e.empty([N, this.config.dim]);
    const step = this.headChunkRows(N);
    for (let r = 0; r < N; r += step) {
      const r1 = Math.min(N, r + step);
      const dl = step === N ? dLogits! : dLogits!.rows(r, r1);
      const dh = step === N ? dHidden : dHidden.rows(r, r1);
      matmul(this.e, dl, this.classifier, { out: dh }); // (rows,V)·(V,D)
    }
    dLogits!.free();
    return { loss, dHidden };
  }

  /** Backward from dHidden (N,D) through every layer; returns LoRA gradients. Frees `saved`. */
  backward(batch: GpuBatch, saved: ForwardSaved, dHidden: Tensor, lora: LoraWeights | null): Map<string, LoraGrads> {
    return drain(this.backwardSteps(batch, saved, dHidden, lora));
  }

  /** The backward as a generator that yields after each layer (see forwardSteps). */
  *backwardSteps(batch: GpuBatch, saved: ForwardSaved, dHidden: Tensor, lora: LoraWeights | null): Generator<void, Map<string, LoraGrads>> {
    const { e, config: c } = this;
    const { B, T } = batch;
    const N = B * T;
    const Dh = c.headDim;
    const grads = new Map<string, LoraGrads>();
    let dx = this.normBackward(dHidden, saved.xLast, this.finalNorm, saved.nf);
    saved.xLast.free();
    for (const t of saved.nf) t.free();
    for (let i = c.nLayers - 1; i >= 0; i--) {
      const L = this.layers[i]!;
      const s = saved.layers[i]!;
      // FFN: x3 = x2 + down(act(...)); dx3 = dx
      let dn2: Tensor;
      if (c.gatedFfn) {
        const dAct = this.projBackward(i, 'down', dx, s.act, lora, s.h, grads)!;
        const { dGate, dUp } = swigluBackward(e, dAct, s.pre[0]!, s.pre[1]!);
        dAct.free();
        const dxa = this.projBackward(i, 'gate', dGate, s.xn2, lora, s.h, grads)!;
        const dxb = this.projBackward(i, 'up', dUp, s.xn2, lora, s.h, grads)!;
        dGate.free();
        dUp.free();
        dn2 = add(e, dxa, dxb);
        dxa.free();
        dxb.free();
      } else {
        const [fc1, fc2] = plainMlp(c.arch);
        const dAct = this.projBackward(i, fc2!, dx, s.act, lora, s.h, grads)!;
        const dPre = c.activation === 'relu' ? reluBackward(e, dAct, s.pre[0]!) : geluBackward(e, dAct, s.pre[0]!);
        dAct.free();
        dn2 = this.projBackward(i, fc1!, dPre, s.xn2, lora, s.h, grads)!;
        dPre.free();
      }
      const dx2n = this.normBackward(dn2, s.x2, L.ffnNorm, s.n2);
      dn2.free();
      const dx2 = add(e, dx, dx2n);
      dx.free();
      dx2n.free();
      yield; // mid-layer: FFN backward done, attention backward next
      for (const t of [...s.pre, s.act, s.xn2, ...s.n2, s.x2]) t.free();
      // Attention: x2 = x + o(attn(q, k, v))
      const attFlat = s.att.out.view([N, c.nHeads * Dh]);
      const dAtt = this.projBackward(i, familyOf(c.arch).attnOut, dx2, attFlat, lora, s.h, grads)!;
      const { dq, dk, dv } = attentionBackward(e, dAtt.view([B, T, c.nHeads, Dh]), s.q, s.k, s.v, s.att);
      dAtt.free();
      s.att.out.free();
      s.att.lse.free();
      let dqr = dq;
      let dkr = dk;
      if (c.positions === 'rope') {
        const ro = { theta: c.ropeTheta, invFreq: this.invFreq!, interleaved: c.ropeInterleaved, inverse: true };
        dqr = rope(e, dq, ro);
        dkr = rope(e, dk, ro);
        dq.free();
        dk.free();
      }
      let dn1: Tensor;
      if (familyOf(c.arch).fusedQkv) {
        const dqkv = e.empty([N, 3 * c.dim]);
        scatterCols(e, dqr.view([N, c.dim]), dqkv, 0);
        scatterCols(e, dkr.view([N, c.dim]), dqkv, c.dim);
        scatterCols(e, dv.view([N, c.dim]), dqkv, 2 * c.dim);
        dn1 = this.projBackward(i, familyOf(c.arch).fusedQkv!, dqkv, s.xn, lora, s.h, grads)!;
        dqkv.free();
      } else {
        const a = this.projBackward(i, 'q', dqr.view([N, c.nHeads * Dh]), s.xn, lora, s.h, grads)!;
        const b = this.projBackward(i, 'k', dkr.view([N, c.nKvHeads * Dh]), s.xn, lora, s.h, grads)!;
        const d = this.projBackward(i, 'v', dv.view([N, c.nKvHeads * Dh]), s.xn, lora, s.h, grads)!;
        const ab = add(e, a, b);
        dn1 = add(e, ab, d);
        for (const t of [a, b, d, ab]) t.free();
      }
      for (const t of [dqr, dkr, dv, s.q, s.k, s.v]) t.free();
      const dxn = this.normBackward(dn1, s.x, L.attnNorm, s.n1);
      dn1.free();
      dx = add(e, dx2, dxn);
      dx2.free();
      dxn.free();
      for (const t of [s.x, s.xn, ...s.n1]) t.free();
      for (const t of s.h.values()) if (!t.isFreed) t.free();
      yield;
    }
    dx.free(); // the embedding is frozen
    return grads;
  }

  /** Frees what a `forward(..., save=true)` kept, without running backward. */
  freeSaved(saved: ForwardSaved): void {
    saved.xLast.free();
    for (const t of saved.nf) t.free();
    for (const s of saved.layers) {
      for (const t of [s.x, s.xn, ...s.n1, s.q, s.k, s.v, s.att.out, s.att.lse, s.x2, s.xn2, ...s.n2, ...s.pre, s.act, ...s.h.values()]) t.free();
    }
  }

  /**
   * One training step's forward and backward: mean cross-entropy over the batch's targets and the
   * LoRA gradients. Nothing is read back.
   */
  lossAndGrads(batch: GpuBatch, lora: LoraWeights): { loss: Tensor; grads: Map<string, LoraGrads> } {
    return drain(this.lossAndGradsSteps(batch, lora));
  }

  /** lossAndGrads as a generator that yields between layers of the forward and the backward. */
  *lossAndGradsSteps(batch: GpuBatch, lora: LoraWeights): Generator<void, { loss: Tensor; grads: Map<string, LoraGrads> }> {
    if (!batch.targets) throw new ShapeError('lossAndGrads: batch has no targets');
    const fwd = yield* this.forwardSteps(batch, lora, true);
    const { loss, dHidden } = this.lossAndHiddenGrad(fwd.hidden, batch.targets);
    fwd.hidden.free();
    yield;
    const grads = yield* this.backwardSteps(batch, fwd.saved!, dHidden, lora);
    dHidden.free();
    return { loss, grads };
  }

  /** Forward-only loss (validation). */
  loss(batch: GpuBatch, lora: LoraWeights | null): Tensor {
    if (!batch.targets) throw new ShapeError('loss: batch has no targets');
    const fwd = this.forward(batch, lora, false);
    const logits = this.logits(fwd.hidden);
    fwd.hidden.free();
    const { loss, dLogits } = crossEntropy(this.e, logits, batch.targets, { grad: false });
    dLogits?.free();
    logits.free();
    return loss;
  }
}

/** Runs a step generator to completion (the single-owner path: no hand-over between slices). */
function drain<T>(g: Generator<void, T>): T {
  for (;;) {
    const r = g.next();
    if (r.done) return r.value;
  }
}
