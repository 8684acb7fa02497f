// Matmul, linear and linear backward (f32 arithmetic). Kernel families and why: ../kernels/matmul.ts.
// B may be a 2-D f16/bf16 tensor (a frozen weight stored 16-bit): every kernel family then reads its
// packed words directly (kernels/half.ts); A, C, the bias and the accumulation stay f32.
import gemvSrc from '../kernels/gemv.wgsl' with { type: 'text' };
import { ShapeError, type Binding, type Engine, type Tensor, type UniformBlock } from '../engine.ts';
import { halfWGSL, type HalfKind } from '../kernels/half.ts';
import { COLSUM_WGSL, TRANSPOSE4_WGSL, transpose4HalfWGSL, matmulKernelName, matmulWGSL, type MatmulSpec, type MatmulVariant, type SizeMode } from '../kernels/matmul.ts';
import { grid1d } from './util.ts';

export type { MatmulVariant, SizeMode } from '../kernels/matmul.ts';

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  /** C += alpha·op(A)·op(B); the result is written into (and returned as) this tensor. */
  accumulate?: Tensor;
  /** Write into this tensor instead of a new one (ignored when `accumulate` is given). */
  out?: Tensor;
  /** Extension: + bias[col] per output column (N), not scaled by alpha. */
  bias?: Tensor;
  /** Extension: force a kernel family (tests and benchmarks); default is chosen from the device. */
  variant?: MatmulVariant;
  /** Extension: sizes as override constants or a uniform block (see kernels/matmul.ts). */
  sizes?: SizeMode;
}

/** Rows up to which x·Wᵀ on GPUs runs the GEMV kernel (kernels/gemv.wgsl). */
export const GEMV_MAX_ROWS = 8;

// Tile sizes, a forced family, the size mode and a tile cap are the engine's (Engine.tuning).

/** Families this device can run. 'sg' needs subgroups of one known size. */
export function availableMatmulVariants(e: Engine): MatmulVariant[] {
  const out: MatmulVariant[] = [];
  if (sgSize(e) > 0) out.push('sg');
  out.push('uni', 'tiled');
  return out;
}

function sgSize(e: Engine): number {
  const { subgroupMinSize: lo, subgroupMaxSize: hi } = e.ctx.info;
  // The sg kernel assumes one subgroup per workgroup of exactly SG lanes; only safe when the size is fixed.
  return e.subgroups && lo > 0 && lo === hi && lo <= 64 ? lo : 0;
}

/** Default family: register tiles on CPU drivers (measured in bench/matmul.ts), shared-memory tiles on GPUs. */
export function defaultMatmulVariant(e: Engine): MatmulVariant {
  if (e.ctx.info.isSoftware) return sgSize(e) > 0 ? 'sg' : 'uni';
  return 'tiled';
}

const ceil = (a: number, b: number) => Math.ceil(a / b);
const pow2 = (n: number) => 2 ** Math.ceil(Math.log2(Math.max(1, n)));

/** Kernel spec and grid for one (M, N, K) problem. */
export function planMatmul(
  e: Engine,
  M: number,
  N: number,
  K: number,
  transA: boolean,
  transB: boolean,
  variant: MatmulVariant,
  sizes: SizeMode = e.tuning.matmulSizes,
  bHalf?: HalfKind,
): { spec: MatmulSpec; grid: [number, number] } {
  if (variant === 'tiled') {
    // 64×64 tiles with 16×16 invocations of 4×4 outputs when the device allows 256 invocations and
    // 8 KiB of workgroup memory (every WebGPU device does: these are the spec's minimum limits);
    // smaller tiles for small problems so that enough workgroups exist.
    const inv = e.limits.maxComputeInvocationsPerWorkgroup;
    const big = inv >= 256 && e.limits.maxComputeWorkgroupStorageSize >= 16 * 64 * 2 * 4 && M * N >= 64 * 64 * 64;
    const BM = big ? 64 : 32;
    const BN = big ? 64 : 32;
    const spec: MatmulSpec = { variant, transA, transB, BM, BN, BK: 16, TM: 4, TN: 4, sizes, ...(bHalf ? { bHalf } : {}) };
    return { spec, grid: [ceil(N, BN), ceil(M, BM)] };
  }
  const sg = variant === 'sg';
  const LW = sg ? sgSize(e) : 8;
  if (sg && !LW) throw new ShapeError('matmul variant sg needs the subgroups feature with a fixed subgroup size');
  // Register tile: R rows × CN columns per lane. Bigger tiles load fewer elements per multiply-add
  // (the cost on llvmpipe); shrink them for thin problems (decode M=1, LoRA rank N=8) so that no
  // work is wasted on clamped rows/columns.
  const tiles = e.tuning.matmulTiles;
  const tileCap = e.tuning.matmulTileCap;
  const [Rmax, CNmax] = sg ? [tiles.sgR, tiles.sgCN] : [tiles.uniR, tiles.uniCN];
  // Sizes are rounded up to powers of two so that few distinct kernels get compiled.
  const R = Math.min(tileCap ? Math.max(tileCap.R, sg ? LW : 1) : Rmax, Rmax, Math.max(sg ? LW : 1, pow2(M)));
  const CN = Math.min(tileCap?.CN ?? CNmax, CNmax, pow2(ceil(N, LW)));
  const spec: MatmulSpec = {
    variant,
    transA,
    transB,
    R,
    CN,
    KU: 4,
    LW,
    aVec: !transA && K % 4 === 0,
    bVec: transB && K % 4 === 0,
    nVec: tiles.nVec && !transB && N % 4 === 0 && CN % 4 === 0,
    sizes,
    ...(bHalf ? { bHalf } : {}),
  };
  return { spec, grid: [ceil(M, R), ceil(N, LW * CN)] };
}

const dummies = new WeakMap<Engine, Tensor>();
function dummy(e: Engine): Tensor {
  let t = dummies.get(e);
  if (!t || t.isFreed) dummies.set(e, (t = e.zeros([4])));
  return t;
}

/**
 * alpha·op(A)·op(B) (+ bias) (+ accumulate). a: (..., M, K) or (..., K, M) if transA; b: (..., K, N)
 * or (..., N, K) if transB; leading dims are the batch; a 2-D operand is broadcast over the other's batch.
 */
export function matmul(e: Engine, a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const { transA = false, transB = false, alpha = 1, accumulate, bias } = opts;
  const bHalf = isHalf(b) ? b.dtype : undefined;
  if (a.dtype !== 'f32' || (b.dtype !== 'f32' && !bHalf)) throw new ShapeError(`matmul: A f32 and B f32, f16 or bf16, got ${a} and ${b}`);
  if (bHalf && (b.shape.length !== 2 || b.byteOffset % 4 !== 0)) throw new ShapeError(`matmul: a 16-bit B must be a whole 2-D weight, got ${b}`);
  if (a.shape.length < 2 || b.shape.length < 2) throw new ShapeError(`matmul: operands must be at least 2-D, got ${a} and ${b}`);
  const ar = a.shape.length;
  const br = b.shape.length;
  const [M, K] = transA ? [a.shape[ar - 1]!, a.shape[ar - 2]!] : [a.shape[ar - 2]!, a.shape[ar - 1]!];
  const [Kb, N] = transB ? [b.shape[br - 1]!, b.shape[br - 2]!] : [b.shape[br - 2]!, b.shape[br - 1]!];
  if (K !== Kb) throw new ShapeError(`matmul: inner dims differ: ${a}${transA ? 'ᵀ' : ''} · ${b}${transB ? 'ᵀ' : ''}`);
  const aBatch = a.shape.slice(0, -2);
  const bBatch = b.shape.slice(0, -2);
  if (aBatch.length && bBatch.length && aBatch.join(',') !== bBatch.join(',')) {
    throw new ShapeError(`matmul: batch dims differ: ${a} vs ${b} (only a 2-D operand broadcasts)`);
  }
  const batchDims = aBatch.length ? aBatch : bBatch;
  const outShape = [...batchDims, M, N];
  let batch = batchDims.reduce((p, d) => p * d, 1);
  let SA = aBatch.length ? M * K : 0;
  const SB = bBatch.length ? K * N : 0;
  let Mk = M;
  // A batched, untransposed A against a shared B is one tall matmul (fewer partial tiles, one dispatch).
  if (SA && !SB && !transA) {
    Mk = M * batch;
    batch = 1;
    SA = 0;
  }
  const c = accumulate ?? opts.out ?? e.empty(outShape);
  if (c.dtype !== 'f32' || c.numel !== batch * Mk * N) throw new ShapeError(`matmul: output ${c} does not hold ${JSON.stringify(outShape)}`);
  if (c.buffer === a.buffer || c.buffer === b.buffer) throw new ShapeError('matmul: output must not alias an input');
  if (bias && (bias.numel !== N || bias.dtype !== 'f32')) throw new ShapeError(`matmul: bias ${bias} for ${N} columns`);
  if (c.numel === 0) return c;
  if (K === 0) {
    // Empty reduction: the product is zero — not worth a kernel.
    if (bias) throw new ShapeError('matmul: K = 0 with a bias is not supported');
    if (!accumulate) e.clear(c);
    return c;
  }
  const variant = opts.variant ?? e.tuning.matmulVariant ?? defaultMatmulVariant(e);
  const sizes = opts.sizes ?? e.tuning.matmulSizes;
  // Up to 8 rows against a shared (N, K) weight on a GPU (decode of a continuous batch): the GEMV
  // kernel, each weight load shared by the rows.
  if (variant === 'tiled' && Mk <= GEMV_MAX_ROWS && batch === 1 && transB && !transA && !SB && K % 4 === 0) {
    const params = new ArrayBuffer(32);
    new Uint32Array(params, 0, 4).set([N, K / 4, accumulate ? 1 : 0, bias ? 1 : 0]);
    new Float32Array(params, 16, 1)[0] = alpha;
    const groups = ceil(N, 8);
    const max = e.limits.maxComputeWorkgroupsPerDimension;
    const gy = ceil(groups, max);
    const pipe = bHalf ? e.pipeline(`gemv.${bHalf}`, () => gemvHalfWGSL(bHalf), { MR: Mk }) : e.pipeline('gemv', () => gemvSrc, { MR: Mk });
    e.dispatch(pipe, [a, b, c, bias ?? dummy(e), e.uniform(new Uint8Array(params))], [ceil(groups, gy), gy]);
    return c;
  }
  // x·Wᵀ with a shared W on the register tiles: transpose W (one pass over K·N elements) and run the
  // untransposed kernel, whose lane-contiguous vec4 B loads measured ~1.5× faster on lavapipe than
  // strided ones. Only worth it when the product (Mk·K·N MACs) dwarfs the pass: not for decode (M=1).
  if (transB && !SB && variant !== 'tiled' && e.tuning.matmulTiles.transposeB && N % 4 === 0 && K % 4 === 0 && N >= 32 && Mk >= 64) {
    const bt = transpose2d(e, b.view([N, K]));
    const r = matmul(e, a, bt, { ...opts, transB: false, variant, sizes, out: c, accumulate });
    bt.free(); // later dispatches that reuse its buffer are ordered after this one
    return r;
  }
  const { spec, grid } = planMatmul(e, Mk, N, K, transA, transB, variant, sizes, bHalf);
  const bindings: (Tensor | Binding | UniformBlock)[] = [a, b, c, bias ?? dummy(e)];
  let p: GPUComputePipeline;
  if (sizes === 'override') {
    const consts = { M: Mk, N, K, SA, SB, SC: Mk * N, ALPHA: alpha, ACC: accumulate ? 1 : 0, HAS_BIAS: bias ? 1 : 0 };
    p = e.pipeline(matmulKernelName(spec), () => matmulWGSL(spec), consts);
  } else {
    p = e.pipeline(matmulKernelName(spec), () => matmulWGSL(spec));
    const u = new Uint32Array(8);
    u.set([Mk, N, K, SA, SB, Mk * N, 0, (accumulate ? 1 : 0) | (bias ? 2 : 0)]);
    new Float32Array(u.buffer, 24, 1)[0] = alpha;
    bindings.push(e.uniform(u));
  }
  e.dispatch(p, bindings, [grid[0], grid[1], batch]);
  return c;
}

/** y = x·Wᵀ + b. x: (..., in), w: (out, in), bias: (out) → (..., out). */
export function linear(e: Engine, x: Tensor, w: Tensor, bias?: Tensor | null): Tensor {
  if (w.shape.length !== 2) throw new ShapeError(`linear: weight must be (out, in), got ${w}`);
  const [outF, inF] = w.shape as [number, number];
  if (x.shape.at(-1) !== inF) throw new ShapeError(`linear: ${x} · ${w}ᵀ`);
  const rows = x.numel / inF;
  const y = matmul(e, x.view([rows, inF]), w, { transB: true, bias: bias ?? undefined });
  return y.view([...x.shape.slice(0, -1), outF]);
}

export interface LinearBackwardOptions {
  needDx: boolean;
  /** dW = dyᵀ·x, (out, in), written here (or added, with `accumulate`). */
  dw?: Tensor | false;
  /** db = column sums of dy, (out), written here (or added, with `accumulate`). */
  db?: Tensor | false;
  /** Add into dw/db instead of overwriting them (gradient accumulation over micro-batches). */
  accumulate?: boolean;
}

/** Gradients of y = x·Wᵀ + b. dy: (..., out), x: (..., in), w: (out, in). dx = dy·W. */
export function linearBackward(e: Engine, dy: Tensor, x: Tensor, w: Tensor, opts: LinearBackwardOptions): { dx?: Tensor } {
  if (w.shape.length !== 2) throw new ShapeError(`linearBackward: weight must be (out, in), got ${w}`);
  const [outF, inF] = w.shape as [number, number];
  if (dy.shape.at(-1) !== outF || x.shape.at(-1) !== inF || dy.numel / outF !== x.numel / inF) {
    throw new ShapeError(`linearBackward: dy ${dy}, x ${x}, w ${w}`);
  }
  const rows = x.numel / inF;
  const dy2 = dy.view([rows, outF]);
  const res: { dx?: Tensor } = {};
  if (opts.needDx) res.dx = matmul(e, dy2, w).view(x.shape);
  if (opts.dw) {
    if (opts.dw.numel !== outF * inF) throw new ShapeError(`linearBackward: dw ${opts.dw} for ${w}`);
    matmul(e, dy2, x.view([rows, inF]), opts.accumulate ? { transA: true, accumulate: opts.dw } : { transA: true, out: opts.dw });
  }
  if (opts.db) colSum(e, dy2, opts.db, !!opts.accumulate);
  return res;
}

/** out (+)= column sums of x (rows, cols). */
export function colSum(e: Engine, x: Tensor, out: Tensor, accumulate = false): Tensor {
  const cols = x.shape.at(-1)!;
  if (out.numel !== cols) throw new ShapeError(`colSum: ${out} for ${x}`);
  const p = e.pipeline('matmul.colsum', () => COLSUM_WGSL, { ROWS: x.numel / cols, COLS: cols, ACC: accumulate ? 1 : 0 });
  e.dispatch(p, [x, out], grid1d(e, cols, 64));
  return out;
}

/** y = xᵀ (f32) for a 2-D x (f32, f16 or bf16) whose dims are multiples of 4. */
export function transpose2d(e: Engine, x: Tensor, out?: Tensor): Tensor {
  const [rows, cols] = x.shape as [number, number];
  if (x.shape.length !== 2 || rows % 4 || cols % 4) throw new ShapeError(`transpose2d: ${x} (2-D, dims multiples of 4)`);
  const y = out ?? e.empty([cols, rows]);
  const h = isHalf(x) ? x.dtype : null;
  if (!h && x.dtype !== 'f32') throw new ShapeError(`transpose2d: ${x} must be f32, f16 or bf16`);
  const p = h ? e.pipeline(`matmul.transpose4.${h}`, () => transpose4HalfWGSL(h)) : e.pipeline('matmul.transpose4', () => TRANSPOSE4_WGSL);
  e.dispatch(p, [x, y, e.uniform(new Uint32Array([rows, cols]))], grid1d(e, (rows * cols) / 16, 64));
  return y;
}

/** Whether t holds 16-bit floats (f16 or bf16) packed two per u32 word. */
export function isHalf(t: Tensor): t is Tensor & { dtype: HalfKind } {
  return t.dtype === 'f16' || t.dtype === 'bf16';
}

/** kernels/gemv.wgsl with W read as 16-bit values packed in words (4 values per vec2 of words). */
export function gemvHalfWGSL(kind: HalfKind): string {
  const src = gemvSrc
    .replace('@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;      // (N, K/4)', `@group(0) @binding(1) var<storage, read> w: array<vec2<u32>>;      // (N, K/4) ${kind}, 4 values per vec2 of words\n${halfWGSL(kind)}`)
    .replace('let wv = w[n * P.K4 + k];', 'let wp = w[n * P.K4 + k]; let wv = vec4f(h2(wp.x), h2(wp.y));');
  if (!src.includes('fn h2') || !src.includes('let wp')) throw new Error('gemvHalfWGSL: template changed');
  return src;
}
