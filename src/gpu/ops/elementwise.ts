import src from '../kernels/elementwise.wgsl' with { type: 'text' };
import { ShapeError, type Engine, type Tensor } from '../engine.ts';
import { grid1d } from './util.ts';

/** out = a + b, same shapes (residual add). */
export function add(e: Engine, a: Tensor, b: Tensor, out = e.empty(a.shape)): Tensor {
  if (a.numel !== b.numel || out.numel !== a.numel) throw new ShapeError(`add: ${a} + ${b} -> ${out}`);
  const p = e.pipeline('elementwise', () => src, { N: a.numel }, 'add');
  e.dispatch(p, [a, b, out], grid1d(e, a.numel, 256));
  return out;
}
