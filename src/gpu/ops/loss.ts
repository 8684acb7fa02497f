import src from '../kernels/loss.wgsl' with { type: 'text' };
import { ShapeError, type Binding, type UniformBlock, type Engine, type Tensor } from '../engine.ts';
import { rowGrid, rowLanes, rowPerLane } from './norm.ts';
import { grid1d } from './util.ts';

export interface LossOptions {
  /** Cap on rows per dispatch (tests force small chunks; rounded down to the offset alignment). */
  chunkRows?: number;
}

export interface CrossEntropyOptions extends LossOptions {
  /** Also compute dLogits (default true). */
  grad?: boolean;
  /** Write dLogits over the logits tensor instead of a new (N, V) buffer (logits are destroyed). */
  inPlace?: boolean;
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

function checkArgs(what: string, logits: Tensor, targets: Tensor): [number, number] {
  if (logits.dtype !== 'f32' || logits.shape.length !== 2) throw new ShapeError(`${what}: logits must be f32 (N, V), got ${logits}`);
  const [N, V] = logits.shape as [number, number];
  if (targets.dtype !== 'i32' || targets.numel !== N) throw new ShapeError(`${what}: targets must be i32 (${N}), got ${targets}`);
  if (V === 0) throw new ShapeError(`${what}: empty vocabulary`);
  return [N, V];
}

/**
 * Row chunks [start, start + rows) whose byte ranges fit one storage binding and start at a
 * multiple of minStorageBufferOffsetAlignment.
 */
export function rowChunks(e: Engine, N: number, V: number, chunkRows?: number): { start: number; rows: number }[] {
  const rowBytes = V * 4;
  const align = e.limits.minStorageBufferOffsetAlignment;
  const step = align / gcd(rowBytes, align); // chunk starts must be multiples of this many rows
  let rows = Math.floor(e.limits.maxStorageBufferBindingSize / rowBytes);
  if (chunkRows !== undefined) rows = Math.min(rows, Math.max(1, Math.floor(chunkRows)));
  if (rows >= N) return [{ start: 0, rows: N }];
  rows = Math.max(step, Math.floor(rows / step) * step);
  if (rows * rowBytes > e.limits.maxStorageBufferBindingSize) throw new ShapeError(`logits rows of ${V} values cannot be chunked within the storage binding limit`);
  const out = [];
  for (let s = 0; s < N; s += rows) out.push({ start: s, rows: Math.min(rows, N - s) });
  return out;
}

const LANE_WG = 8;

/** Pipeline and grid for a row kernel: vec4 lane-per-row on CPU drivers when V % 4 == 0. */
function rowKernel(e: Engine, entry: string, V: number, rows: number) {
  if (rowPerLane(e) && V % 4 === 0)
    return { p: e.pipeline('loss', () => src, { V, WG: LANE_WG }, `${entry}_lane4`), grid: grid1d(e, rows, LANE_WG) };
  return { p: e.pipeline('loss', () => src, { V, WG: rowLanes(e, V) }, entry), grid: rowGrid(e, rows) };
}

function rangeOf(t: Tensor, c: { start: number; rows: number }, V: number): Binding {
  return { buffer: t.buffer, offset: t.byteOffset + c.start * V * 4, size: c.rows * V * 4 };
}

function params(e: Engine, start: number, rows: number, n: number): UniformBlock {
  return e.uniform(new Uint32Array([start, rows, n, 0x7fc00000]));
}

/**
 * log softmax(logits[n])[targets[n]] for every row: (N). Ignored targets (−1) give 0; a target
 * outside [0, V) gives NaN. Used for candidate scoring and OpenAI-style logprobs.
 */
export function tokenLogprobs(e: Engine, logits: Tensor, targets: Tensor, opts: LossOptions = {}): Tensor {
  const [N, V] = checkArgs('tokenLogprobs', logits, targets);
  const out = e.empty([N]);
  if (N === 0) return out;
  for (const c of rowChunks(e, N, V, opts.chunkRows)) {
    const k = rowKernel(e, 'logprob_rows', V, c.rows);
    e.dispatch(k.p, [rangeOf(logits, c, V), targets, out, params(e, c.start, c.rows, N)], k.grid);
  }
  return out;
}

/**
 * Mean softmax cross-entropy over rows whose target is not −1 (completion-only loss); 0 when every
 * row is ignored. dLogits = (softmax − onehot)/count on kept rows, 0 on ignored rows. Works on
 * logits over the storage-binding limit by binding row chunks. Deterministic (fixed reduction
 * order). A target outside [0, V) other than −1 makes the loss NaN.
 */
export function crossEntropy(
  e: Engine,
  logits: Tensor,
  targets: Tensor,
  opts: CrossEntropyOptions = {},
): { loss: Tensor; dLogits?: Tensor } {
  const [N, V] = checkArgs('crossEntropy', logits, targets);
  const grad = opts.grad ?? true;
  if (opts.inPlace && !grad) throw new ShapeError('crossEntropy: inPlace needs grad');
  const WG = rowLanes(e, V);
  const loss = e.empty([1]);
  const count = e.empty([1]);
  const lp = e.empty([N]);
  const all = params(e, 0, N, N);
  e.dispatch(e.pipeline('loss', () => src, { WG }, 'count_kept'), [targets, count, all], [1]);
  let dLogits: Tensor | undefined;
  if (grad) {
    dLogits = opts.inPlace ? logits : e.empty([N, V]);
    const entry = opts.inPlace ? 'ce_rows_inplace' : 'ce_rows';
    for (const c of N ? rowChunks(e, N, V, opts.chunkRows) : []) {
      const k = rowKernel(e, entry, V, c.rows);
      const prm = params(e, c.start, c.rows, N);
      const b = opts.inPlace
        ? [rangeOf(logits, c, V), targets, count, lp, prm]
        : [rangeOf(logits, c, V), targets, count, lp, rangeOf(dLogits, c, V), prm];
      e.dispatch(k.p, b, k.grid);
    }
  } else {
    for (const c of N ? rowChunks(e, N, V, opts.chunkRows) : []) {
      const k = rowKernel(e, 'logprob_rows', V, c.rows);
      e.dispatch(k.p, [rangeOf(logits, c, V), targets, lp, params(e, c.start, c.rows, N)], k.grid);
    }
  }
  e.dispatch(e.pipeline('loss', () => src, { WG }, 'ce_mean'), [lp, count, loss, all], [1]);
  lp.free(); // pooled: reuse is ordered after the dispatches above
  count.free();
  return dLogits ? { loss, dLogits } : { loss };
}
