import src from '../kernels/activation.wgsl' with { type: 'text' };
import { ShapeError, type Engine, type Tensor } from '../engine.ts';
import { columnReduce } from './norm.ts';
import { grid1d } from './util.ts';

const WG = 256;

function same(what: string, ...ts: Tensor[]): void {
  const n = ts[0]!.numel;
  for (const t of ts) if (t.dtype !== 'f32' || t.numel !== n) throw new ShapeError(`${what}: shapes ${ts.join(', ')}`);
}

// numel % 4 == 0 (the usual case) uses the vec4 entry points: one 16-byte load per operand.
function run(e: Engine, entry: string, bindings: Tensor[], n: number): void {
  if (n === 0) return;
  const v4 = n % 4 === 0;
  e.dispatch(e.pipeline('activation', () => src, { WG }, v4 ? `${entry}4` : entry), bindings, grid1d(e, v4 ? n / 4 : n, WG));
}

/** swiglu(gate, up) = silu(gate)·up (Llama FFN). gate, up (N, H) → (N, H). */
export function swiglu(e: Engine, gate: Tensor, up: Tensor): Tensor {
  same('swiglu', gate, up);
  const y = e.empty(gate.shape);
  run(e, 'swiglu', [gate, up, y], y.numel);
  return y;
}

export function swigluBackward(e: Engine, dy: Tensor, gate: Tensor, up: Tensor): { dGate: Tensor; dUp: Tensor } {
  same('swigluBackward', dy, gate, up);
  const dGate = e.empty(gate.shape);
  const dUp = e.empty(up.shape);
  run(e, 'swiglu_bwd', [dy, gate, up, dGate, dUp], dy.numel);
  return { dGate, dUp };
}

export function relu(e: Engine, x: Tensor): Tensor {
  same('relu', x);
  const y = e.empty(x.shape);
  run(e, 'relu', [x, y], y.numel);
  return y;
}

/** dx = dy where x > 0 (x is the forward input). */
export function reluBackward(e: Engine, dy: Tensor, x: Tensor): Tensor {
  same('reluBackward', dy, x);
  const dx = e.empty(x.shape);
  run(e, 'relu_bwd', [dy, x, dx], dx.numel);
  return dx;
}

/** GELU, tanh approximation (GPT-2 "gelu_new"). */
export function gelu(e: Engine, x: Tensor): Tensor {
  same('gelu', x);
  const y = e.empty(x.shape);
  run(e, 'gelu', [x, y], y.numel);
  return y;
}

/** dx = dy·gelu'(x) (x is the forward input). */
export function geluBackward(e: Engine, dy: Tensor, x: Tensor): Tensor {
  same('geluBackward', dy, x);
  const dx = e.empty(x.shape);
  run(e, 'gelu_bwd', [dy, x, dx], dx.numel);
  return dx;
}

/** Column sums of dy (..., C) → (C): the gradient of a bias. Deterministic (fixed order). */
export function biasGrad(e: Engine, dy: Tensor): Tensor {
  if (dy.dtype !== 'f32' || dy.shape.length < 1) throw new ShapeError(`biasGrad: ${dy}`);
  const C = dy.shape[dy.shape.length - 1]!;
  const out = e.empty([C]);
  if (C === 0) return out;
  columnReduce(e, 'col_sum', dy.numel / C, C, [dy], [out]);
  return out;
}
