import src from '../kernels/norm.wgsl' with { type: 'text' };
import { ShapeError, type Engine, type Tensor } from '../engine.ts';

export type { RowMode } from '../engine.ts';
import { grid1d } from './util.ts';

// Lanes per row workgroup. On lavapipe a workgroup is one CPU thread running 8 SIMD lanes, so a
// small group keeps the tree reduction short; on real GPUs 256 lanes fill a compute unit.
export function rowLanes(e: Engine, C: number): number {
  const max = e.tuning.rowMaxLanes ?? (e.ctx.info.isSoftware ? 64 : 256);
  let wg = 32;
  while (wg < max && wg < C) wg *= 2;
  return wg;
}

/**
 * A lane per row (CPU drivers) or a workgroup per row (GPUs), unless the engine's tuning forces one
 * (Engine.tuning.rowMode; tests force each mode, and rowMaxLanes 256, the real-GPU group size, so
 * every path is verified on any machine).
 */
export function rowPerLane(e: Engine): boolean {
  const mode = e.tuning.rowMode;
  return mode === 'auto' ? e.ctx.info.isSoftware : mode === 'lane';
}
const LANE_WG = 8; // one SIMD row on lavapipe; more workgroups spread over the CPU threads

/** Pipeline and grid for a row kernel `entry` over N rows of C. */
function rowKernel(e: Engine, entry: string, N: number, C: number, consts: Record<string, number> = {}) {
  if (rowPerLane(e)) {
    const entryLane = C % 4 === 0 ? `${entry}_lane4` : `${entry}_lane`; // vec4 loads when rows allow
    return { p: e.pipeline('norm', () => src, { C, WG: LANE_WG, ...consts }, entryLane), grid: grid1d(e, N, LANE_WG) };
  }
  return { p: e.pipeline('norm', () => src, { C, WG: rowLanes(e, C), ...consts }, entry), grid: rowGrid(e, N) };
}

/** Workgroup grid with one workgroup per row, folded into y past the per-dimension limit. */
export function rowGrid(e: Engine, rows: number): [number, number] {
  const max = e.limits.maxComputeWorkgroupsPerDimension;
  if (rows <= max) return [Math.max(rows, 1), 1];
  const y = Math.ceil(rows / max);
  return [Math.ceil(rows / y), y];
}

function rowsCols(x: Tensor, what: string): [number, number] {
  if (x.dtype !== 'f32' || x.shape.length < 1) throw new ShapeError(`${what}: expected f32 (..., C), got ${x}`);
  const C = x.shape[x.shape.length - 1]!;
  return [C === 0 ? 0 : x.numel / C, C];
}

function expectShape(t: Tensor, shape: number[], what: string): void {
  const n = shape.reduce((a, b) => a * b, 1);
  if (t.dtype !== 'f32' || t.numel !== n || t.shape[t.shape.length - 1] !== shape[shape.length - 1])
    throw new ShapeError(`${what}: expected f32 ${JSON.stringify(shape)}, got ${t}`);
}

/** The uniform block `struct Params { n: u32 }` holding a row count. */
export function rowsParam(e: Engine, n: number) {
  return e.uniform(new Uint32Array([n, 0, 0, 0]));
}

const COL_ROWS = 64; // rows per column-sum block (fixed, so results are reproducible for a shape)
const COL_WG = 64;

/**
 * Deterministic column reduction over N rows. `entry` is one of col_sum / col_rms / col_ln and
 * `inputs` its read bindings; `outs` receive the (C) results (col_ln has two).
 * @internal shared with activation.ts (biasGrad)
 */
export function columnReduce(e: Engine, entry: string, N: number, C: number, inputs: Tensor[], outs: Tensor[]): void {
  const nb = Math.max(1, Math.ceil(N / COL_ROWS));
  if (nb > e.limits.maxComputeWorkgroupsPerDimension) throw new ShapeError(`column reduce: ${N} rows is too many`);
  const gx = Math.ceil(C / COL_WG);
  const p1 = e.pipeline('norm', () => src, { C, WG: COL_WG, ROWS: COL_ROWS }, entry);
  const prm = rowsParam(e, N);
  if (nb === 1) {
    e.dispatch(p1, [...inputs, ...outs, prm], [gx, 1]);
    return;
  }
  const parts = outs.map(() => e.empty([nb, C]));
  e.dispatch(p1, [...inputs, ...parts, prm], [gx, nb]);
  const p2 = e.pipeline('norm', () => src, { C, WG: COL_WG, NB: nb }, 'col_final');
  parts.forEach((part, i) => e.dispatch(p2, [part, outs[i]!], [gx]));
  for (const part of parts) part.free(); // pooled: reuse is ordered after these dispatches
}

/** RMSNorm over the last dim: y = x·rstd·w, rstd = 1/sqrt(mean(x²) + eps). x (..., C), w (C). */
export function rmsnorm(e: Engine, x: Tensor, w: Tensor, eps: number): { y: Tensor; rstd: Tensor } {
  const [N, C] = rowsCols(x, 'rmsnorm');
  expectShape(w, [C], 'rmsnorm w');
  const y = e.empty(x.shape);
  const rstd = e.empty([N]);
  const k = rowKernel(e, 'rms_fwd', N, C, { EPS: eps });
  e.dispatch(k.p, [x, w, y, rstd, rowsParam(e, N)], k.grid);
  return { y, rstd };
}

export function rmsnormBackward(e: Engine, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor): { dx: Tensor; dw: Tensor } {
  const [N, C] = rowsCols(x, 'rmsnormBackward');
  expectShape(dy, [N, C], 'rmsnormBackward dy');
  expectShape(w, [C], 'rmsnormBackward w');
  expectShape(rstd, [N], 'rmsnormBackward rstd');
  const dx = e.empty(x.shape);
  const dw = e.empty([C]);
  const k = rowKernel(e, 'rms_bwd', N, C);
  e.dispatch(k.p, [dy, x, w, rstd, dx, rowsParam(e, N)], k.grid);
  columnReduce(e, 'col_rms', N, C, [dy, x, rstd], [dw]);
  return { dx, dw };
}

/** LayerNorm over the last dim (biased variance, eps inside the sqrt). x (..., C), w, b (C). */
export function layernorm(e: Engine, x: Tensor, w: Tensor, b: Tensor, eps: number): { y: Tensor; mean: Tensor; rstd: Tensor } {
  const [N, C] = rowsCols(x, 'layernorm');
  expectShape(w, [C], 'layernorm w');
  expectShape(b, [C], 'layernorm b');
  const y = e.empty(x.shape);
  const mean = e.empty([N]);
  const rstd = e.empty([N]);
  const k = rowKernel(e, 'ln_fwd', N, C, { EPS: eps });
  e.dispatch(k.p, [x, w, b, y, mean, rstd, rowsParam(e, N)], k.grid);
  return { y, mean, rstd };
}

export function layernormBackward(
  e: Engine,
  dy: Tensor,
  x: Tensor,
  w: Tensor,
  mean: Tensor,
  rstd: Tensor,
): { dx: Tensor; dw: Tensor; db: Tensor } {
  const [N, C] = rowsCols(x, 'layernormBackward');
  expectShape(dy, [N, C], 'layernormBackward dy');
  expectShape(w, [C], 'layernormBackward w');
  expectShape(mean, [N], 'layernormBackward mean');
  expectShape(rstd, [N], 'layernormBackward rstd');
  const dx = e.empty(x.shape);
  const dw = e.empty([C]);
  const db = e.empty([C]);
  const k = rowKernel(e, 'ln_bwd', N, C);
  e.dispatch(k.p, [dy, x, w, mean, rstd, dx, rowsParam(e, N)], k.grid);
  columnReduce(e, 'col_ln', N, C, [dy, x, mean, rstd], [dw, db]);
  return { dx, dw, db };
}
