// Engine: tensors, a buffer pool under a memory budget, a pipeline cache and command batching.
//
// Work is recorded into one command encoder (one compute pass per batch of dispatches) and only
// submitted at flush() or read-back: on lavapipe a submit + onSubmittedWorkDone costs ~80 µs and
// an awaited promise makes dawn.node poll with setImmediate, so we submit rarely and await only
// when the CPU needs the data.
import { checkDevice, getGpu, type GpuContext } from './context.ts';
import type { MatmulVariant, SizeMode } from './kernels/matmul.ts';
import { bf16ToF32, f16ToF32 } from '../util/f16.ts';

// f16 and bf16 tensors hold 16-bit values packed two per u32 word (frozen weights: kernels/half.ts).
export type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u32';
export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u32: 4 };

export class MemoryBudgetError extends Error {
  override name = 'MemoryBudgetError';
}

export class ShapeError extends Error {
  override name = 'ShapeError';
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

let nextTensorId = 1;

/** A dense row-major tensor living in one GPU storage buffer. */
export class Tensor {
  readonly id = nextTensorId++;
  private freed = false;
  constructor(
    readonly engine: Engine,
    readonly shape: readonly number[],
    readonly dtype: DType,
    readonly buffer: GPUBuffer,
    /** Bytes actually used (numel × dtype bytes); buffer.size may be larger (pool rounding). */
    readonly byteLength: number,
    /** Start of this tensor inside `buffer` (non-zero only for row-slice views). */
    readonly byteOffset = 0,
  ) {}
  get numel(): number {
    return numel(this.shape);
  }
  get isFreed(): boolean {
    return this.freed;
  }
  /** Returns the buffer to the engine's pool. Using the tensor afterwards is a bug. */
  free(): void {
    if (this.freed) return;
    this.freed = true;
    this.engine.releaseBuffer(this.buffer);
  }
  /**
   * Same buffer, new shape of equal element count (no copy). The view shares ownership: freeing
   * either the view or the original returns the buffer once (so `op(...).view(s)` can be freed).
   */
  view(shape: readonly number[]): Tensor {
    if (numel(shape) !== this.numel) throw new ShapeError(`view ${JSON.stringify(shape)} of tensor ${JSON.stringify(this.shape)}`);
    return new TensorView(this, shape, this.byteOffset, this.byteLength, true);
  }
  /**
   * Rows [start, end) of the first dimension, as a view sharing the buffer (no copy). The byte
   * offset must be a multiple of the device's minStorageBufferOffsetAlignment (256) so the view
   * can be bound; used to process tensors over the storage-binding limit in chunks.
   */
  rows(start: number, end: number): Tensor {
    const n0 = this.shape[0]!;
    if (!(0 <= start && start < end && end <= n0)) throw new ShapeError(`rows(${start}, ${end}) of ${this}`);
    const rowBytes = this.byteLength / n0;
    const off = this.byteOffset + start * rowBytes;
    const align = this.engine.limits.minStorageBufferOffsetAlignment;
    if (off % align !== 0) throw new ShapeError(`rows(${start}, ${end}) of ${this}: byte offset ${off} is not a multiple of ${align}`);
    return new TensorView(this, [end - start, ...this.shape.slice(1)], off, (end - start) * rowBytes, false);
  }
  toString(): string {
    return `Tensor(${this.dtype}[${this.shape.join(',')}])`;
  }
}

/**
 * An alias of another tensor's buffer. A reshape view (`owns`) frees its base when freed; a row
 * slice does not (the base owns the buffer).
 */
class TensorView extends Tensor {
  constructor(readonly base: Tensor, shape: readonly number[], byteOffset: number, byteLength: number, private readonly owns: boolean) {
    super(base.engine, shape, base.dtype, base.buffer, byteLength, byteOffset);
  }
  override get isFreed(): boolean {
    return this.base.isFreed;
  }
  override free(): void {
    if (this.owns) this.base.free();
  }
}

/**
 * How row kernels map rows: 'workgroup' (a workgroup per row, lanes across the row: coalesced,
 * for real GPUs) or 'lane' (a lane per row, no barriers: ~10× faster on CPU drivers, where loads
 * are per-lane scalar anyway and barriers are costly). 'auto' picks by the adapter.
 */
export type RowMode = 'auto' | 'lane' | 'workgroup';

/**
 * Kernel choices of one engine (not process-global: two engines may differ). The defaults are the
 * production choices; tests force each path (so every kernel is verified on any machine) and
 * benchmarks compare them, through EngineOptions.tuning or Engine.tune.
 */
export interface EngineTuning {
  /** Force one matmul kernel family (linear and LoRA included); null: chosen from the device. */
  matmulVariant: MatmulVariant | null;
  /** How matmuls pass problem sizes: override constants or a uniform block (see kernels/matmul.ts). */
  matmulSizes: SizeMode;
  /**
   * Caps the register tile of the 'sg'/'uni' kernels (null: no cap). Tests use it: the same generated
   * code paths with less unrolling compile in ~1 s instead of 10–40 s on lavapipe.
   */
  matmulTileCap: { R: number; CN: number } | null;
  /** Register-tile parameters for lavapipe-class devices (chosen with bench/matmul.ts). */
  matmulTiles: { sgR: number; sgCN: number; uniR: number; uniCN: number; nVec: boolean; transposeB: boolean };
  /** Row kernels' mapping (norm, loss); see RowMode. */
  rowMode: RowMode;
  /** Largest row workgroup (default: 64 on CPU drivers, 256 on GPUs); tests set 256 anywhere. */
  rowMaxLanes: number | undefined;
}

export const DEFAULT_TUNING: Readonly<EngineTuning> = Object.freeze({
  matmulVariant: null,
  matmulSizes: 'uniform',
  matmulTileCap: null,
  matmulTiles: Object.freeze({ sgR: 32, sgCN: 4, uniR: 16, uniCN: 4, nVec: true, transposeB: true }),
  rowMode: 'auto',
  rowMaxLanes: undefined,
});

export interface EngineOptions {
  /** Bytes of GPU buffers this engine may hold at once (live + pooled). */
  memoryBudget?: number;
  /** Kernel choices other than DEFAULT_TUNING (tests, benchmarks). */
  tuning?: Partial<EngineTuning>;
}

export interface Binding {
  buffer: GPUBuffer;
  offset?: number;
  size?: number;
}

/** Parameter bytes for one dispatch, placed in the uniform arena when the dispatch is recorded. */
export class UniformBlock {
  constructor(readonly data: Uint8Array) {}
}

type PipelineKey = string;

/** Round a byte size up to the pool's size class: multiples of 256 B, then 1/8-octave steps. */
export function sizeClass(bytes: number): number {
  const b = Math.max(256, Math.ceil(bytes / 256) * 256);
  if (b <= 64 * 1024) return b;
  const step = 2 ** (Math.floor(Math.log2(b)) - 3);
  return Math.ceil(b / step) * step;
}

export class Engine {
  readonly ctx: GpuContext;
  readonly device: GPUDevice;
  readonly budget: number;
  private allocated = 0; // bytes in live + pooled buffers
  private peak = 0;
  // Free buffers per size class, each list sorted by creation order (newest first, so pop() hands
  // out the oldest). Handing out buffers in a canonical order makes a repeated step (training, decode)
  // bind the same buffers every time, so its bind groups hit the cache: with a LIFO list the same
  // step drew permuted buffers and created ~130 new bind groups per training step (issue 8).
  private pool = new Map<number, GPUBuffer[]>();
  private bufferSerial = new WeakMap<GPUBuffer, number>();
  private nextBufferSerial = 1;
  private pipelines = new Map<PipelineKey, GPUComputePipeline>();
  private modules = new Map<string, GPUShaderModule>();
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private dispatchesInBatch = 0;
  // Submits so far, and the last submit known complete (a read-back or sync issued after it returned).
  private submitSerial = 0;
  private doneSerial = 0;
  /** Counters for benchmarks and tests. */
  readonly stats = { dispatches: 0, submits: 0, readbacks: 0, pipelinesCreated: 0 };
  // Uniform arena: small per-dispatch parameter blocks written once per submit.
  private uniformBuf: GPUBuffer | null = null;
  private uniformData = new ArrayBuffer(0);
  private uniformUsed = 0;
  private readonly uniformAlign: number;
  private static readonly UNIFORM_CAPACITY = 1 << 20;

  private constructor(ctx: GpuContext, opts: EngineOptions) {
    this.ctx = ctx;
    this.device = ctx.device;
    this.budget = opts.memoryBudget ?? defaultBudget();
    this.uniformAlign = ctx.limits.minUniformBufferOffsetAlignment;
    this.tuningNow = { ...DEFAULT_TUNING, ...opts.tuning };
  }

  private tuningNow: EngineTuning;
  /** This engine's kernel choices (read by the ops when they plan a dispatch). */
  get tuning(): Readonly<EngineTuning> {
    return this.tuningNow;
  }
  /**
   * Changes some kernel choices of this engine for later dispatches (tests and benchmarks that
   * compare paths on one engine; pipelines already compiled stay cached under their own keys).
   */
  tune(patch: Partial<EngineTuning>): void {
    this.tuningNow = { ...this.tuningNow, ...patch };
  }

  static async create(opts: EngineOptions = {}): Promise<Engine> {
    return new Engine(await getGpu(), opts);
  }

  get f16(): boolean {
    return this.ctx.features.f16;
  }
  get subgroups(): boolean {
    return this.ctx.features.subgroups;
  }
  get limits(): GPUSupportedLimits {
    return this.ctx.limits;
  }
  /** Bytes currently held (live tensors + pool). */
  get allocatedBytes(): number {
    return this.allocated;
  }
  get peakBytes(): number {
    return this.peak;
  }
  resetPeak(): void {
    this.peak = this.allocated;
  }

  // ---------------------------------------------------------------- memory

  private acquireBuffer(bytes: number): GPUBuffer {
    checkDevice(this.ctx);
    const cls = sizeClass(bytes);
    if (cls > this.ctx.limits.maxBufferSize) {
      throw new MemoryBudgetError(`a single buffer of ${cls} bytes exceeds the device's maxBufferSize ${this.ctx.limits.maxBufferSize}`);
    }
    const free = this.pool.get(cls);
    if (free && free.length) return free.pop()!;
    if (this.allocated + cls > this.budget) this.trimPool();
    if (this.allocated + cls > this.budget) {
      throw new MemoryBudgetError(
        `GPU memory budget exceeded: allocating ${cls} bytes with ${this.allocated} of ${this.budget} bytes in use ` +
          `(raise COLA_GPU_MEMORY_BUDGET_BYTES or use smaller batches/sequences)`,
      );
    }
    const buf = this.device.createBuffer({
      size: cls,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    this.bufferSerial.set(buf, this.nextBufferSerial++);
    this.allocated += cls;
    if (this.allocated > this.peak) this.peak = this.allocated;
    return buf;
  }

  /** @internal Returns a buffer to the pool (called by Tensor.free). */
  releaseBuffer(buf: GPUBuffer): void {
    const cls = buf.size;
    let list = this.pool.get(cls);
    if (!list) this.pool.set(cls, (list = []));
    const serial = this.bufferSerial.get(buf) ?? 0;
    // Binary search for the first entry older than `buf` (lists are sorted newest first).
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((this.bufferSerial.get(list[mid]!) ?? 0) > serial) lo = mid + 1;
      else hi = mid;
    }
    list.splice(lo, 0, buf);
  }

  /** Destroys every pooled (unused) buffer. */
  trimPool(): void {
    this.dropBindGroups(this.bindGroups.size); // cached bind groups may reference the buffers destroyed here
    // Pending commands may still reference pooled buffers; destroy is deferred by Dawn until done.
    for (const [cls, list] of this.pool) {
      for (const b of list) {
        b.destroy();
        this.allocated -= cls;
      }
    }
    this.pool.clear();
  }

  /** A new uninitialised tensor (contents are whatever the pooled buffer held). */
  empty(shape: readonly number[], dtype: DType = 'f32'): Tensor {
    for (const d of shape) if (!Number.isInteger(d) || d < 0) throw new ShapeError(`bad shape ${JSON.stringify(shape)}`);
    const bytes = numel(shape) * DTYPE_BYTES[dtype];
    return new Tensor(this, shape, dtype, this.acquireBuffer(bytes), bytes);
  }

  zeros(shape: readonly number[], dtype: DType = 'f32'): Tensor {
    const t = this.empty(shape, dtype);
    this.clear(t);
    return t;
  }

  /** Clears a tensor to zero in the command stream (ordered with dispatches). */
  clear(t: Tensor): void {
    this.endPass();
    this.enc().clearBuffer(t.buffer, t.byteOffset, Math.ceil(t.byteLength / 4) * 4);
  }

  /** Uploads host data. Ordered before any later dispatch: pending work is flushed first. */
  upload(data: Float32Array | Int32Array | Uint32Array | Uint16Array, shape: readonly number[], dtype?: DType): Tensor {
    const dt: DType = dtype ?? (data instanceof Float32Array ? 'f32' : data instanceof Int32Array ? 'i32' : data instanceof Uint16Array ? 'f16' : 'u32');
    if (data.length !== numel(shape)) throw new ShapeError(`upload: ${data.length} values for shape ${JSON.stringify(shape)}`);
    const t = this.empty(shape, dt);
    this.write(t, data);
    return t;
  }

  /** Overwrites a tensor's contents from the host, ordered after all work recorded so far. */
  write(t: Tensor, data: ArrayBufferView): void {
    if (data.byteLength !== t.byteLength) throw new ShapeError(`write: ${data.byteLength} bytes into ${t}`);
    // queue.writeBuffer is ordered against submits, not against commands still being recorded.
    this.flush();
    const padded = data.byteLength % 4 === 0 ? data : padTo4(data);
    this.device.queue.writeBuffer(t.buffer, t.byteOffset, padded.buffer, padded.byteOffset, padded.byteLength);
  }

  /** Copies src into dst (same byte length), recorded in order with dispatches. */
  copy(src: Tensor, dst: Tensor): void {
    if (src.byteLength !== dst.byteLength) throw new ShapeError(`copy ${src} -> ${dst}`);
    this.endPass();
    this.enc().copyBufferToBuffer(src.buffer, src.byteOffset, dst.buffer, dst.byteOffset, Math.ceil(src.byteLength / 4) * 4);
  }

  /** Copies `bytes` (multiple of 4) from src at srcByte to dst at dstByte, recorded in order with dispatches. */
  copyBytes(src: Tensor, srcByte: number, dst: Tensor, dstByte: number, bytes: number): void {
    if (bytes % 4 || srcByte % 4 || dstByte % 4) throw new ShapeError('copyBytes: offsets and size must be multiples of 4');
    if (srcByte + bytes > src.byteLength || dstByte + bytes > dst.byteLength) throw new ShapeError(`copyBytes: ${bytes} bytes out of range of ${src} / ${dst}`);
    this.endPass();
    this.enc().copyBufferToBuffer(src.buffer, src.byteOffset + srcByte, dst.buffer, dst.byteOffset + dstByte, bytes);
  }

  // ---------------------------------------------------------------- pipelines

  /**
   * A compute pipeline cached by (name, constants). `code` is only called on a cache miss.
   * Pipeline-overridable constants are substituted by Dawn at compile time, so kernels see them as
   * true constants (on lavapipe, constant-only offsets are what make loads vectorise).
   */
  pipeline(name: string, code: () => string, constants: Record<string, number> = {}, entryPoint = 'main'): GPUComputePipeline {
    const key = `${name}|${entryPoint}|${Object.entries(constants)
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([k, v]) => `${k}=${v}`)
      .join(',')}`;
    let p = this.pipelines.get(key);
    if (p) return p;
    let mod = this.modules.get(name);
    if (!mod) {
      mod = this.device.createShaderModule({ code: code(), label: name });
      this.modules.set(name, mod);
    }
    p = this.device.createComputePipeline({
      label: key,
      layout: 'auto',
      compute: { module: mod, entryPoint, constants },
    });
    this.pipelines.set(key, p);
    this.stats.pipelinesCreated++;
    return p;
  }

  // ---------------------------------------------------------------- dispatch

  private enc(): GPUCommandEncoder {
    checkDevice(this.ctx);
    return (this.encoder ??= this.device.createCommandEncoder());
  }

  private endPass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  /**
   * A small parameter block (≤ 256 B) for one dispatch: values that change between dispatches of
   * the same pipeline. Its slot in the per-submit uniform arena is taken when the dispatch is
   * recorded, not here, so a flush between this call and the dispatch (e.g. a lazy upload while
   * the bindings are built) cannot hand the slot to another dispatch.
   */
  uniform(values: ArrayBufferView): UniformBlock {
    if (values.byteLength > 256) throw new Error('uniform block over 256 bytes');
    return new UniformBlock(new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength)));
  }

  /** Places a uniform block in the current submit's arena. */
  private placeUniform(u: UniformBlock): Binding {
    const size = Math.ceil(u.data.byteLength / 16) * 16;
    if (this.uniformUsed + size > Engine.UNIFORM_CAPACITY) this.flush();
    if (!this.uniformBuf) {
      this.uniformBuf = this.device.createBuffer({ size: Engine.UNIFORM_CAPACITY, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
      this.uniformData = new ArrayBuffer(Engine.UNIFORM_CAPACITY);
    }
    const offset = this.uniformUsed;
    new Uint8Array(this.uniformData, offset, u.data.byteLength).set(u.data);
    this.uniformUsed = Math.ceil((offset + size) / this.uniformAlign) * this.uniformAlign;
    return { buffer: this.uniformBuf, offset, size };
  }

  /**
   * Records one dispatch. `bindings[i]` is bound at @group(0) @binding(i); a Tensor binds its used
   * byte range. Workgroup counts over the device limit throw instead of silently dropping the submit.
   */
  dispatch(pipeline: GPUComputePipeline, bindings: (Tensor | Binding | UniformBlock)[], workgroups: [number, number?, number?]): void {
    const [x, y = 1, z = 1] = workgroups;
    const maxWg = this.ctx.limits.maxComputeWorkgroupsPerDimension;
    if (x > maxWg || y > maxWg || z > maxWg) throw new ShapeError(`dispatch (${x},${y},${z}) over maxComputeWorkgroupsPerDimension ${maxWg}`);
    if (x === 0 || y === 0 || z === 0) return;
    const maxBind = this.ctx.limits.maxStorageBufferBindingSize;
    // Uniform slots first: placing one may flush, which must happen before anything is recorded.
    const placed = bindings.map((b) => (b instanceof UniformBlock ? this.placeUniform(b) : b));
    const entries: GPUBindGroupEntry[] = placed.map((b, binding) => {
      if (b instanceof Tensor) {
        if (b.isFreed) throw new Error(`dispatch ${pipeline.label}: binding ${binding} uses a freed tensor`);
        const size = Math.max(4, Math.ceil(b.byteLength / 4) * 4);
        if (size > maxBind) throw new ShapeError(`binding ${binding} of ${pipeline.label} is ${size} bytes, over maxStorageBufferBindingSize ${maxBind}: process it in chunks`);
        return { binding, resource: { buffer: b.buffer, offset: b.byteOffset, size } };
      }
      if (b.size !== undefined && b.size > maxBind) throw new ShapeError(`binding ${binding} of ${pipeline.label} over maxStorageBufferBindingSize`);
      return { binding, resource: { buffer: b.buffer, offset: b.offset ?? 0, size: b.size } };
    });
    const bg = this.bindGroup(pipeline, entries);
    if (this.prof) {
      // Profiling: one pass per dispatch, bracketed by timestamps (resolved at flush).
      this.endPass();
      if (this.prof.used + 2 > Engine.PROFILE_QUERIES) this.flush();
      const i = this.prof.used;
      this.prof.labels.push(pipeline.label);
      this.prof.used += 2;
      this.pass = this.enc().beginComputePass({ timestampWrites: { querySet: this.prof.set, beginningOfPassWriteIndex: i, endOfPassWriteIndex: i + 1 } });
    }
    if (!this.pass) this.pass = this.enc().beginComputePass();
    this.pass.setPipeline(pipeline);
    this.pass.setBindGroup(0, bg);
    this.pass.dispatchWorkgroups(x, y, z);
    this.stats.dispatches++;
    // Bound the size of one command buffer; lavapipe handles thousands fine, but keep memory flat.
    if (++this.dispatchesInBatch >= 4096) this.flush();
  }

  // Bind groups cached by (pipeline, buffers, offsets, sizes), least recently used first out: a
  // training step or a decode step binds the same pooled buffers in the same order every time, and
  // createBindGroup is the largest host cost of a dispatch (~12 µs on lavapipe, more on GPUs).
  // Driver memory: on lavapipe every live bind group holds one memfd mapping, and a dropped one is
  // only released when its JS wrapper is collected, which the GC does not do on its own (it cannot
  // see the native memory): a process that kept creating them died at vm.max_map_count. So the cache
  // is bounded, and after every MAX_BIND_GROUPS / 4 evictions the engine asks for a collection.
  private bindGroups = new Map<string, GPUBindGroup>();
  private objectIds = new WeakMap<object, number>();
  private nextObjectId = 1;
  private static readonly MAX_BIND_GROUPS = 4096;
  private droppedSinceCollect = 0;
  readonly bindGroupStats = { hits: 0, misses: 0, evicted: 0, collections: 0 };

  private idOf(o: object): number {
    let id = this.objectIds.get(o);
    if (id === undefined) this.objectIds.set(o, (id = this.nextObjectId++));
    return id;
  }

  private bindGroup(pipeline: GPUComputePipeline, entries: GPUBindGroupEntry[]): GPUBindGroup {
    let key = String(this.idOf(pipeline));
    for (const en of entries) {
      const r = en.resource as GPUBufferBinding;
      key += `|${this.idOf(r.buffer)}:${r.offset ?? 0}:${r.size ?? -1}`;
    }
    let bg = this.bindGroups.get(key);
    if (bg) {
      this.bindGroupStats.hits++;
      this.bindGroups.delete(key); // most recently used last
      this.bindGroups.set(key, bg);
      return bg;
    }
    this.bindGroupStats.misses++;
    if (this.bindGroups.size >= Engine.MAX_BIND_GROUPS) this.dropBindGroups(Engine.MAX_BIND_GROUPS / 8);
    bg = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
    this.bindGroups.set(key, bg);
    return bg;
  }

  /** Drops the `n` least recently used bind groups; collects their wrappers once enough are dropped. */
  private dropBindGroups(n: number): void {
    let dropped = 0;
    for (const key of this.bindGroups.keys()) {
      if (dropped >= n) break;
      this.bindGroups.delete(key);
      dropped++;
    }
    this.bindGroupStats.evicted += dropped;
    this.droppedSinceCollect += dropped;
    if (this.droppedSinceCollect >= Engine.MAX_BIND_GROUPS / 4) {
      this.droppedSinceCollect = 0;
      this.bindGroupStats.collections++;
      collectGarbage();
    }
  }

  /** Driver objects this engine keeps alive: cached bind groups and pipelines. */
  driverObjects(): { bindGroups: number; pipelines: number } {
    return { bindGroups: this.bindGroups.size, pipelines: this.pipelines.size };
  }

  /** Submits everything recorded so far (does not wait). */
  flush(): void {
    this.endPass();
    if (!this.encoder) return;
    let resolved: (() => void) | null = null;
    if (this.prof && this.prof.used > 0) {
      const n = this.prof.used;
      const buf = this.device.createBuffer({ size: n * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
      const rb = this.device.createBuffer({ size: n * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      this.encoder.resolveQuerySet(this.prof.set, 0, n, buf, 0);
      this.encoder.copyBufferToBuffer(buf, 0, rb, 0, n * 8);
      const labels = this.prof.labels;
      const { totals, pending } = this.prof;
      // Mapped only after the submit below (a buffer pending a map cannot be used in a submit).
      resolved = () =>
        void pending.push(
          rb.mapAsync(GPUMapMode.READ).then(() => {
            const ts = new BigUint64Array(rb.getMappedRange());
            for (let j = 0; j < labels.length; j++) {
              const ns = Number(ts[2 * j + 1]! - ts[2 * j]!);
              const key = labels[j]!.split('|').slice(0, 2).join('|');
              const t = totals.get(key) ?? { n: 0, ms: 0 };
              t.n++;
              t.ms += ns / 1e6;
              totals.set(key, t);
            }
            rb.unmap();
            rb.destroy();
            buf.destroy();
          }),
        );
      this.prof.labels = [];
      this.prof.used = 0;
    }
    if (this.uniformUsed > 0 && this.uniformBuf) {
      this.device.queue.writeBuffer(this.uniformBuf, 0, this.uniformData, 0, this.uniformUsed);
      this.uniformUsed = 0;
    }
    this.device.queue.submit([this.encoder.finish()]);
    this.submitSerial++;
    this.encoder = null;
    this.dispatchesInBatch = 0;
    this.stats.submits++;
    resolved?.();
  }

  private prof: { set: GPUQuerySet; used: number; labels: string[]; totals: Map<string, { n: number; ms: number }>; pending: Promise<void>[] } | null = null;
  private static readonly PROFILE_QUERIES = 4096;

  /**
   * Starts per-kernel GPU timing (needs 'timestamp-query'; each dispatch then gets its own pass, so
   * it adds overhead: for finding hot kernels in benchmarks, not for production).
   */
  startProfile(): boolean {
    if (!this.device.features.has('timestamp-query')) return false;
    this.flush();
    this.prof = { set: this.device.createQuerySet({ type: 'timestamp', count: Engine.PROFILE_QUERIES }), used: 0, labels: [], totals: new Map(), pending: [] };
    return true;
  }

  /** Stops profiling; per kernel (name|entry point): dispatch count and total GPU milliseconds. */
  async stopProfile(): Promise<{ kernel: string; n: number; ms: number }[]> {
    const p = this.prof;
    if (!p) return [];
    this.flush();
    this.prof = null;
    await Promise.all(p.pending);
    p.set.destroy();
    return [...p.totals].map(([kernel, t]) => ({ kernel, ...t })).sort((a, b) => b.ms - a.ms);
  }

  /** Waits until all submitted work is done (flushes first). */
  async sync(): Promise<void> {
    this.flush();
    const serial = this.submitSerial;
    await this.device.queue.onSubmittedWorkDone();
    this.doneSerial = Math.max(this.doneSerial, serial);
    checkDevice(this.ctx);
  }

  /** Whether work has been recorded or submitted that no read-back or sync has waited for yet. */
  get hasUnwaitedWork(): boolean {
    return this.encoder !== null || this.submitSerial > this.doneSerial;
  }

  /** Reads a tensor back to the host. Flushes pending work; the only place the CPU waits. */
  async read(t: Tensor): Promise<Float32Array | Int32Array | Uint32Array | Uint16Array> {
    const bytes = await this.readBytes(t.buffer, t.byteOffset, t.byteLength);
    switch (t.dtype) {
      case 'f32':
        return new Float32Array(bytes);
      case 'i32':
        return new Int32Array(bytes);
      case 'u32':
        return new Uint32Array(bytes);
      case 'f16':
      case 'bf16':
        return new Uint16Array(bytes, 0, t.numel);
    }
  }

  /** Reads an f32 tensor (f16 and bf16 are widened) as Float32Array. */
  async readF32(t: Tensor): Promise<Float32Array> {
    const data = await this.read(t);
    if (data instanceof Float32Array) return data;
    if (data instanceof Uint16Array) return t.dtype === 'bf16' ? bf16ToF32(data) : f16ToF32(data);
    throw new Error(`readF32 of ${t}`);
  }

  /** Reads several f32 tensors with one submit and one wait. */
  async readManyF32(ts: Tensor[]): Promise<Float32Array[]> {
    for (const t of ts) if (t.dtype !== 'f32') throw new Error(`readManyF32 of ${t}`);
    const parts = await this.readRanges(ts.map((t) => ({ buffer: t.buffer, offset: t.byteOffset, byteLength: t.byteLength })));
    return parts.map((p) => new Float32Array(p));
  }

  async readBytes(buffer: GPUBuffer, offset: number, byteLength: number): Promise<ArrayBuffer> {
    return (await this.readRanges([{ buffer, offset, byteLength }]))[0]!;
  }

  /** Copies byte ranges into one staging buffer with one submit and one wait. */
  private async readRanges(ranges: { buffer: GPUBuffer; offset: number; byteLength: number }[]): Promise<ArrayBuffer[]> {
    const sizes = ranges.map((r) => Math.ceil(r.byteLength / 4) * 4);
    const total = sizes.reduce((a, b) => a + b, 0);
    const staging = this.device.createBuffer({ size: Math.max(4, total), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    this.endPass();
    let off = 0;
    ranges.forEach((r, i) => {
      if (sizes[i]) this.enc().copyBufferToBuffer(r.buffer, r.offset, staging, off, sizes[i]!);
      off += sizes[i]!;
    });
    this.flush();
    const serial = this.submitSerial;
    this.stats.readbacks++;
    try {
      await staging.mapAsync(GPUMapMode.READ);
    } catch (e) {
      staging.destroy();
      checkDevice(this.ctx);
      throw e;
    }
    this.doneSerial = Math.max(this.doneSerial, serial); // the map waited for every earlier submit
    const mapped = staging.getMappedRange();
    off = 0;
    const out = ranges.map((r, i) => {
      const part = mapped.slice(off, off + r.byteLength);
      off += sizes[i]!;
      return part;
    });
    staging.unmap();
    staging.destroy();
    return out;
  }

  /**
   * Runs `fn` inside validation and out-of-memory error scopes and throws if either caught an error.
   * A validation error otherwise silently drops a whole submit (results turn into zeros or NaN).
   */
  async checked<T>(fn: () => T | Promise<T>): Promise<T> {
    this.flush();
    this.device.pushErrorScope('out-of-memory');
    this.device.pushErrorScope('validation');
    let result: T;
    try {
      result = await fn();
      this.flush();
    } finally {
      const validation = await this.device.popErrorScope();
      const oom = await this.device.popErrorScope();
      if (validation) throw new Error(`WebGPU validation error: ${validation.message}`);
      if (oom) throw new MemoryBudgetError(`GPU out of memory: ${oom.message}`);
    }
    return result!;
  }
}

/**
 * A full garbage collection, where the runtime offers one (Bun; Node with --expose-gc): releases
 * the driver objects behind dropped WebGPU wrappers (see Engine.dropBindGroups).
 */
function collectGarbage(): void {
  const g = globalThis as { Bun?: { gc(full: boolean): void }; gc?: () => void };
  if (g.Bun) g.Bun.gc(true);
  else g.gc?.();
}

/** Budget when the caller gives none (the service passes COLA_GPU_MEMORY_BUDGET_BYTES from its config). */
function defaultBudget(): number {
  return 4 * 1024 ** 3;
}

function padTo4(data: ArrayBufferView): Uint8Array {
  const out = new Uint8Array(Math.ceil(data.byteLength / 4) * 4);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return out;
}
