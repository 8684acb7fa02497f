// Column-block copies (split / gather of fused projections).
import src from '../kernels/layout.wgsl' with { type: 'text' };
import { ShapeError, type Engine, type Tensor } from '../engine.ts';
import { grid1d } from './util.ts';

function copyCols(e: Engine, from: Tensor, to: Tensor, rows: number, w: number, srcC: number, dstC: number, srcOff: number, dstOff: number): void {
  const p = e.pipeline('layout', () => src, { ROWS: rows, W: w, SRC_C: srcC, DST_C: dstC, SRC_OFF: srcOff, DST_OFF: dstOff }, 'copy_cols');
  e.dispatch(p, [from, to], grid1d(e, rows * w, 256));
}

/** Columns [off, off+w) of x (N, C) as a new (N, w) tensor. */
export function sliceCols(e: Engine, x: Tensor, off: number, w: number): Tensor {
  const C = x.shape.at(-1)!;
  const N = x.numel / C;
  if (off < 0 || w < 1 || off + w > C) throw new ShapeError(`sliceCols(${off}, ${w}) of ${x}`);
  const out = e.empty([N, w]);
  copyCols(e, x, out, N, w, C, w, off, 0);
  return out;
}

/** Writes x (N, w) into columns [off, off+w) of dst (N, C). */
export function scatterCols(e: Engine, x: Tensor, dst: Tensor, off: number): void {
  const w = x.shape.at(-1)!;
  const C = dst.shape.at(-1)!;
  const N = x.numel / w;
  if (dst.numel / C !== N || off < 0 || off + w > C) throw new ShapeError(`scatterCols ${x} into ${dst} at ${off}`);
  copyCols(e, x, dst, N, w, w, C, 0, off);
}
