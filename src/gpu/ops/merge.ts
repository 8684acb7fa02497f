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
  if (w.shape.length !== 2 || a.shape.length !== 2 || b.shape.length !== 2) throw new ShapeError(`mergeLora: W ${w}, A ${a}, B ${b} must be 2-D`);
  const [d, k] = w.shape as [number, number];
  const r = a.shape[0]!;
  if (a.shape[1] !== k || b.shape[0] !== d || b.shape[1] !== r) throw new ShapeError(`mergeLora: W ${w} (d,k), A ${a} (r,k), B ${b} (d,r) do not agree`);
  for (const t of [w, a, b]) if (t.dtype !== 'f32') throw new ShapeError(`mergeLora: ${t} must be f32`);
  if (!Number.isFinite(scale) || !Number.isFinite(Math.fround(scale))) throw new NonFiniteError(`mergeLora: scale ${scale} is not finite`);
  if (d === 0 || k === 0) return;

  // Row blocks whose byte offsets respect the storage-offset alignment and the binding limit.
  const align = e.limits.minStorageBufferOffsetAlignment / 4; // floats
  const alignRows = align / gcd(k, align);
  const maxBind = e.limits.maxStorageBufferBindingSize;
  let rows = opts.chunkRows ?? Math.floor(maxBind / (k * 4) / alignRows) * alignRows;
  if (rows < d && (rows < 1 || rows % alignRows !== 0)) throw new ShapeError(`mergeLora: a block of ${rows} rows of ${k} floats cannot be bound (alignment ${alignRows} rows, limit ${maxBind} B)`);
  rows = Math.min(rows, d);

  const scratch = e.empty([d, k]);
  const flag = e.zeros([1], 'u32');
  try {
    const p = e.pipeline('merge', () => src, { K: k, R: r, WG }, 'merge');
    for (let row0 = 0; row0 < d; row0 += rows) {
      const n = Math.min(rows, d - row0);
      const params = new ArrayBuffer(16);
      new Uint32Array(params, 0, 2).set([row0, n]);
      new Float32Array(params, 8, 1)[0] = scale;
      const block = (t: Tensor): Binding => ({ buffer: t.buffer, offset: t.byteOffset + row0 * k * 4, size: n * k * 4 }); // views keep their offset
      e.dispatch(p, [block(w), a, b, block(scratch), flag, e.uniform(new Uint8Array(params))], grid1d(e, n * k, WG));
    }
    const bad = (await e.read(flag))[0]!;
    if (bad !== 0) throw new NonFiniteError(`mergeLora: W + ${scale}·B·A has non-finite values (W ${w}); the weights were left unchanged`);
    e.copy(scratch, w);
  } finally {
    scratch.free(); // the copy is recorded before any later use of the pooled buffer
    flag.free();
  }
}

function gcd(x: number, y: number): number {
  while (y) [x, y] = [y, x % y];
  return x;
}
