// COLA "tie a knot": W ← W + s·B·A, refusing to write a non-finite result.
//
// The merged values are computed into a scratch tensor of W's shape while a GPU flag records
// whether any of them is NaN/±Inf; the flag is read back once (the only wait), and only if it
// is clear is the scratch copied over W. On a non-finite result W is left bit-for-bit unchanged
// and NonFiniteError is thrown. Extra memory while merging: one copy of W (d·k·4 bytes).
//
// Order of operations (matches PEFT's `W += (B @ A) * scaling` up to f32 rounding):
// acc = Σ_x B[i,x]·A[x,j] in f32, then W[i,j] + s·acc.
//
// A 16-bit W (f16/bf16, a frozen weight of a half-precision model) is read as such and merged in
// f32, and the merged module STAYS f32: the scratch becomes the module's weight (mergeLoraMany
// returns it) instead of being rounded back. Why: a LoRA update is small next to the weight, and a
// bf16 store keeps 8 significant bits. Measured (test/gpu.merge.test.ts, weights of std 0.02, rank 8):
// an update of 1e-3 of the weights' scale rounded back into bf16 leaves 77% of the values unchanged
// and loses about three quarters of it (relative L2 error of the stored update 0.77; at 1e-2: 0.16;
// f16 at 1e-3: 0.20), while the f32 result keeps it to 2e-5. Refusing would block every knot of a
// bf16 model; a warning would still corrupt the later links, which train on top of the merged
// weights. The cost is 2 more bytes per value of the adapted modules only.
import src from '../kernels/merge.wgsl' with { type: 'text' };
import { ShapeError, type Binding, type Engine, type Tensor } from '../engine.ts';
import { grid1d } from './util.ts';
import { halfWGSL, type HalfKind } from '../kernels/half.ts';

/** merge.wgsl reading a 16-bit W block (packed two per word; blocks start at even elements). */
function mergeHalfWGSL(kind: HalfKind): string {
  const s = src
    .replace('@group(0) @binding(0) var<storage, read> w: array<f32>;', `@group(0) @binding(0) var<storage, read> w: array<u32>; // ${kind}, two per word\n${halfWGSL(kind)}`)
    .replace('let v = w[idx] + p.scale * acc;', 'let wp = h2(w[idx >> 1u]); let v = select(wp.x, wp.y, (idx & 1u) == 1u) + p.scale * acc;');
  if (!s.includes('fn h2') || !s.includes('let wp')) throw new Error('mergeHalfWGSL: template changed');
  return s;
}

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
 * when any merged value is not finite, ShapeError on mismatched shapes. Returns the merged weight:
 * `w` itself when f32; for a 16-bit `w`, a new f32 tensor (w is left as it was: see the header).
 */
export async function mergeLora(e: Engine, w: Tensor, a: Tensor, b: Tensor, scale: number, opts: MergeOptions = {}): Promise<Tensor> {
  return (await mergeLoraMany(e, [{ w, a, b, scale }], opts))[0]!;
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
 * non-finite value nothing of that group is written and NonFiniteError is thrown (f32 weights of
 * groups before it are already merged; the f32 results made for 16-bit weights of those groups are
 * freed; a knot's caller treats the error as fatal for the run).
 */
export async function mergeLoraMany(e: Engine, items: MergeItem[], opts: MergeOptions & { maxScratchBytes?: number } = {}): Promise<Tensor[]> {
  for (const { w, a, b, scale } of items) checkItem(w, a, b, scale);
  const cap = opts.maxScratchBytes ?? 256 * 2 ** 20;
  const merged = items.map((it) => it.w);
  let group: number[] = [];
  let bytes = 0;
  const run = async () => {
    if (!group.length) return;
    const flag = e.zeros([1], 'u32');
    const scratches: Tensor[] = [];
    const kept = new Set<Tensor>();
    try {
      for (const i of group) scratches.push(recordMerge(e, items[i]!, flag, opts));
      const bad = (await e.read(flag))[0]!;
      if (bad !== 0) {
        const names = group.map((i) => String(items[i]!.w)).join(', ');
        throw new NonFiniteError(`mergeLora: W + s·B·A has non-finite values (weights ${names}); the weights were left unchanged`);
      }
      group.forEach((i, j) => {
        const w = items[i]!.w;
        if (w.dtype === 'f32') e.copy(scratches[j]!, w);
        else kept.add((merged[i] = scratches[j]!)); // a 16-bit W: the merged module stays f32
      });
    } finally {
      for (const t of scratches) if (!kept.has(t)) t.free(); // the copies are recorded before any later use of the pooled buffers
      flag.free();
    }
    group = [];
    bytes = 0;
  };
  try {
    for (const [i, it] of items.entries()) {
      if (it.w.numel === 0) continue;
      const sb = it.w.numel * 4;
      if (bytes > 0 && bytes + sb > cap) await run();
      group.push(i);
      bytes += sb;
    }
    await run();
  } catch (err) {
    // A later group failed: the f32 results kept for 16-bit weights of earlier groups are never
    // returned, so free them here (the caller keeps its 16-bit weights).
    merged.forEach((t, i) => {
      if (t !== items[i]!.w) t.free();
    });
    throw err;
  }
  return merged;
}

function checkItem(w: Tensor, a: Tensor, b: Tensor, scale: number): void {
  if (w.shape.length !== 2 || a.shape.length !== 2 || b.shape.length !== 2) throw new ShapeError(`mergeLora: W ${w}, A ${a}, B ${b} must be 2-D`);
  const [d, k] = w.shape as [number, number];
  const r = a.shape[0]!;
  if (a.shape[1] !== k || b.shape[0] !== d || b.shape[1] !== r) throw new ShapeError(`mergeLora: W ${w} (d,k), A ${a} (r,k), B ${b} (d,r) do not agree`);
  for (const t of [a, b]) if (t.dtype !== 'f32') throw new ShapeError(`mergeLora: ${t} must be f32`);
  if (w.dtype !== 'f32' && w.dtype !== 'f16' && w.dtype !== 'bf16') throw new ShapeError(`mergeLora: W ${w} must be f32, f16 or bf16`);
  if (!Number.isFinite(scale) || !Number.isFinite(Math.fround(scale))) throw new NonFiniteError(`mergeLora: scale ${scale} is not finite`);
}

/** Records W + s·B·A into a new scratch tensor (returned), raising `flag` on a non-finite value. */
function recordMerge(e: Engine, { w, a, b, scale }: MergeItem, flag: Tensor, opts: MergeOptions): Tensor {
  const [d, k] = w.shape as [number, number];
  const r = a.shape[0]!;
  // Row blocks whose byte offsets (in W, whatever its element size, and in the f32 scratch) respect
  // the storage-offset alignment and the binding limit.
  const half = w.dtype === 'f16' || w.dtype === 'bf16' ? w.dtype : null;
  const wb = half ? 2 : 4; // bytes per W element
  const align = e.limits.minStorageBufferOffsetAlignment / wb; // W elements
  const alignRows = align / gcd(k, align);
  const maxBind = e.limits.maxStorageBufferBindingSize;
  let rows = opts.chunkRows ?? Math.floor(maxBind / (k * 4) / alignRows) * alignRows;
  if (rows < d && (rows < 1 || rows % alignRows !== 0)) throw new ShapeError(`mergeLora: a block of ${rows} rows of ${k} floats cannot be bound (alignment ${alignRows} rows, limit ${maxBind} B)`);
  rows = Math.min(rows, d);
  const scratch = e.empty([d, k]);
  const p = half ? e.pipeline(`merge.${half}`, () => mergeHalfWGSL(half), { K: k, R: r, WG }, 'merge') : e.pipeline('merge', () => src, { K: k, R: r, WG }, 'merge');
  for (let row0 = 0; row0 < d; row0 += rows) {
    const n = Math.min(rows, d - row0);
    const params = new ArrayBuffer(16);
    new Uint32Array(params, 0, 2).set([row0, n]);
    new Float32Array(params, 8, 1)[0] = scale;
    const block = (t: Tensor, eb: number): Binding => ({ buffer: t.buffer, offset: t.byteOffset + row0 * k * eb, size: Math.ceil((n * k * eb) / 4) * 4 }); // views keep their offset
    e.dispatch(p, [block(w, wb), a, b, block(scratch, 4), flag, e.uniform(new Uint8Array(params))], grid1d(e, n * k, WG));
  }
  return scratch;
}

function gcd(x: number, y: number): number {
  while (y) [x, y] = [y, x % y];
  return x;
}
