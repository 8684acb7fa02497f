// COLA "tie a knot": W ← W + s·B·A, refusing to write a non-finite result.
//
// The merged values are computed into a scratch tensor of W's shape while a GPU flag records
// whether any of them is NaN/±Inf; the flag is read back once (the only wait), and only if it
// is clear is the scratch copied over W. On a non-finite result W is left bit-for-bit unchanged
// and NonFiniteError is thrown. Extra memory while merging: one copy of W (d·k·4 bytes).
//
// Order of operations (matches PEFT's `W += (B @ A) * scaling` up to f32 rounding):
// acc = Σ_x B[i,x]·A[x,j] in f32, then W[i,j] + s·acc.
import src from '../kernels/merge.wgsl' with { type: 'text' };
import { ShapeError, type Binding, type Engine, type Tensor } from '../engine.ts';
import { grid1d } from './util.ts';

export class NonFiniteError extends Error {
  override name = 'NonFiniteError';
}

const WG = 256;

export interface MergeOptions {
  /** Rows per dispatch (tests force chunking with it); default: as many as one storage binding allows. */
  chunkRows?: number;
}

/**
 * W (d,k) += scale · B (d,r) · A (r,k), in place, all or nothing. Throws NonFiniteError (W untouched)
 * when any merged value is not finite, ShapeError on mismatched shapes.
 */
export async function mergeLora(e: Engine, w: Tensor, a: Tensor, b: Tensor, scale: number, opts: MergeOptions = {}): Promise<void> {
  await mergeLoraMany(e, [{ w, a, b, scale }], opts);
}

export interface MergeItem {
  w: Tensor; // (d,k)
  a: Tensor; // (r,k)
  b: Tensor; // (d,r)
  scale: number;
}

/**
 * Ties a knot on many modules with one wait: every W_i + s_i·B_i·A_i is computed into its scratch
 * copy under one shared non-finite flag, read back once per group, and only then copied over the
 * weights. All or nothing per group of at most `maxScratchBytes` (default 256 MiB) of scratch: on a
 * non-finite value nothing of that group is written and NonFiniteError is thrown (groups before it
 * are already merged; a knot's caller treats the error as fatal for the run).
 */
export async function mergeLoraMany(e: Engine, items: MergeItem[], opts: MergeOptions & { maxScratchBytes?: number } = {}): Promise<void> {
  for (const { w, a, b, scale } of items) checkItem(w, a, b, scale);
  const cap = opts.maxScratchBytes ?? 256 * 2 ** 20;
  let group: MergeItem[] = [];
  let bytes = 0;
  const run = async () => {
    if (!group.length) return;
    const flag = e.zeros([1], 'u32');
    const scratches: Tensor[] = [];
    try {
      for (const it of group) scratches.push(recordMerge(e, it, flag, opts));
      const bad = (await e.read(flag))[0]!;
      if (bad !== 0) {
        const names = group.map((it) => String(it.w)).join(', ');
        throw new NonFiniteError(`mergeLora: W + s·B·A has non-finite values (weights ${names}); the weights were left unchanged`);
      }
      group.forEach((it, i) => e.copy(scratches[i]!, it.w));
    } finally {
      for (const t of scratches) t.free(); // the copies are recorded before any later use of the pooled buffers
      flag.free();
    }
    group = [];
    bytes = 0;
  };
  for (const it of items) {
    if (it.w.numel === 0) continue;
    if (bytes > 0 && bytes + it.w.byteLength > cap) await run();
    group.push(it);
    bytes += it.w.byteLength;
  }
  await run();
}

function checkItem(w: Tensor, a: Tensor, b: Tensor, scale: number): void {
  if (w.shape.length !== 2 || a.shape.length !== 2 || b.shape.length !== 2) throw new ShapeError(`mergeLora: W ${w}, A ${a}, B ${b} must be 2-D`);
  const [d, k] = w.shape as [number, number];
  const r = a.shape[0]!;
  if (a.shape[1] !== k || b.shape[0] !== d || b.shape[1] !== r) throw new ShapeError(`mergeLora: W ${w} (d,k), A ${a} (r,k), B ${b} (d,r) do not agree`);
  for (const t of [w, a, b]) if (t.dtype !== 'f32') throw new ShapeError(`mergeLora: ${t} must be f32`);
  if (!Number.isFinite(scale) || !Number.isFinite(Math.fround(scale))) throw new NonFiniteError(`mergeLora: scale ${scale} is not finite`);
}

/** Records W + s·B·A into a new scratch tensor (returned), raising `flag` on a non-finite value. */
function recordMerge(e: Engine, { w, a, b, scale }: MergeItem, flag: Tensor, opts: MergeOptions): Tensor {
  const [d, k] = w.shape as [number, number];
  const r = a.shape[0]!;
  // Row blocks whose byte offsets respect the storage-offset alignment and the binding limit.
  const align = e.limits.minStorageBufferOffsetAlignment / 4; // floats
  const alignRows = align / gcd(k, align);
  const maxBind = e.limits.maxStorageBufferBindingSize;
  let rows = opts.chunkRows ?? Math.floor(maxBind / (k * 4) / alignRows) * alignRows;
  if (rows < d && (rows < 1 || rows % alignRows !== 0)) throw new ShapeError(`mergeLora: a block of ${rows} rows of ${k} floats cannot be bound (alignment ${alignRows} rows, limit ${maxBind} B)`);
  rows = Math.min(rows, d);
  const scratch = e.empty([d, k]);
  const p = e.pipeline('merge', () => src, { K: k, R: r, WG }, 'merge');
  for (let row0 = 0; row0 < d; row0 += rows) {
    const n = Math.min(rows, d - row0);
    const params = new ArrayBuffer(16);
    new Uint32Array(params, 0, 2).set([row0, n]);
    new Float32Array(params, 8, 1)[0] = scale;
    const block = (t: Tensor): Binding => ({ buffer: t.buffer, offset: t.byteOffset + row0 * k * 4, size: n * k * 4 }); // views keep their offset
    e.dispatch(p, [block(w), a, b, block(scratch), flag, e.uniform(new Uint8Array(params))], grid1d(e, n * k, WG));
  }
  return scratch;
}

function gcd(x: number, y: number): number {
  while (y) [x, y] = [y, x % y];
  return x;
}
