import src from '../kernels/elementwise.wgsl' with { type: 'text' };
import { ShapeError, type Engine, type Tensor } from '../engine.ts';
import { grid1d } from './util.ts';

/** out = a + b, same shapes (residual add). */
export function add(e: Engine, a: Tensor, b: Tensor, out = e.empty(a.shape)): Tensor {
  if (a.numel !== b.numel || out.numel !== a.numel) throw new ShapeError(`add: ${a} + ${b} -> ${out}`);
  if (a.numel % 4 === 0 && a.numel > 0) {
    e.dispatch(e.pipeline('elementwise', () => src, {}, 'add4'), [a, b, out], grid1d(e, a.numel / 4, 256));
    return out;
  }
  const p = e.pipeline('elementwise', () => src, { N: a.numel }, 'add');
  e.dispatch(p, [a, b, out], grid1d(e, a.numel, 256));
  return out;
}

/** out = a·b, same element counts. */
export function mul(e: Engine, a: Tensor, b: Tensor, out = e.empty(a.shape)): Tensor {
  if (a.numel !== b.numel || out.numel !== a.numel) throw new ShapeError(`mul: ${a} * ${b} -> ${out}`);
  const p = e.pipeline('elementwise', () => src, { N: a.numel }, 'mul');
  e.dispatch(p, [a, b, out], grid1d(e, a.numel, 256));
  return out;
}

/** out = s·a. */
export function scale(e: Engine, a: Tensor, s: number, out = e.empty(a.shape)): Tensor {
  if (out.numel !== a.numel) throw new ShapeError(`scale: ${a} -> ${out}`);
  if (a.numel === 0) return out;
  const p = e.pipeline('elementwise', () => src, {}, 'scale');
  e.dispatch(p, [a, out, e.uniform(new Float32Array([s, 0, 0, 0]))], grid1d(e, a.numel, 256));
  return out;
}

/** y += alpha·x, in place on y (e.g. gradient accumulation). Returns y. */
export function axpy(e: Engine, alpha: number, x: Tensor, y: Tensor): Tensor {
  if (x.numel !== y.numel) throw new ShapeError(`axpy: ${x} into ${y}`);
  if (x.numel === 0) return y;
  const p = e.pipeline('elementwise', () => src, {}, 'axpy');
  e.dispatch(p, [x, y, e.uniform(new Float32Array([alpha, 0, 0, 0]))], grid1d(e, x.numel, 256));
  return y;
}
