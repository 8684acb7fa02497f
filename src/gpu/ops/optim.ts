// Optimizer steps on the GPU (in place on the parameter and its state), gradient clipping.
//
// Each step is one dispatch of a pipeline shared by all parameters and all steps: the element
// count and hyper-parameters (lr changes every step under a schedule) go through `e.uniform`.
// Bias corrections are computed on the host in f64 and passed as f32, as PyTorch does with its
// Python-float step sizes. Update formulas (PyTorch's single-tensor implementations) are in
// ../ref/optim.ts, the CPU reference the tests compare against.
import src from '../kernels/optim.wgsl' with { type: 'text' };
import { ShapeError, type Engine, type Tensor } from '../engine.ts';
import {
  adagradDefaults,
  adamwDefaults,
  sgdDefaults,
  type AdagradHp,
  type AdamWHp,
  type SgdHp,
} from '../ref/optim.ts';
import { grid1d } from './util.ts';

export type { AdagradHp, AdamWHp, SgdHp };
const WG = 256;

/**
 * Optimizer state of one parameter tensor. `step` counts the steps since creation or the last
 * `zeroState` (it drives AdamW's bias correction, AdaGrad's lr decay and SGD's first-step rule).
 */
export interface AdamWState {
  kind: 'adamw';
  step: number;
  m: Tensor; // exp_avg, shape of the parameter
  v: Tensor; // exp_avg_sq
}
export interface SgdState {
  kind: 'sgd';
  step: number;
  momentumBuffer: Tensor | null; // null when created with momentum 0 (PyTorch keeps none either)
}
export interface AdagradState {
  kind: 'adagrad';
  step: number;
  sum: Tensor; // Σ g² (initial accumulator value 0)
}
export type OptimState = AdamWState | SgdState | AdagradState;
export type OptimizerKind = OptimState['kind'];

export function createAdamWState(e: Engine, param: Tensor): AdamWState {
  return { kind: 'adamw', step: 0, m: e.zeros(param.shape), v: e.zeros(param.shape) };
}
export function createSgdState(e: Engine, param: Tensor, momentum: number): SgdState {
  return { kind: 'sgd', step: 0, momentumBuffer: momentum !== 0 ? e.zeros(param.shape) : null };
}
export function createAdagradState(e: Engine, param: Tensor): AdagradState {
  return { kind: 'adagrad', step: 0, sum: e.zeros(param.shape) };
}

/** The state's buffers, in a fixed order (AdamW: m, v; SGD: momentum buffer if any; AdaGrad: Σ g²). */
export function stateTensors(state: OptimState): Tensor[] {
  switch (state.kind) {
    case 'adamw':
      return [state.m, state.v];
    case 'sgd':
      return state.momentumBuffer ? [state.momentumBuffer] : [];
    case 'adagrad':
      return [state.sum];
  }
}

/** Resets moments / accumulators to 0 and the step counter (a COLA knot). Recorded in order on the GPU. */
export function zeroState(state: OptimState): void {
  for (const t of stateTensors(state)) t.engine.clear(t);
  state.step = 0;
}

export function freeState(state: OptimState): void {
  for (const t of stateTensors(state)) t.free();
}

function check(what: string, param: Tensor, grad: Tensor, state: Tensor[]): void {
  for (const t of [param, grad, ...state]) {
    if (t.dtype !== 'f32') throw new ShapeError(`${what}: ${t} must be f32`);
    if (t.numel !== param.numel) throw new ShapeError(`${what}: ${t} does not match param ${param}`);
  }
}

function nextStep(state: OptimState, step: number | undefined, what: string): number {
  const t = step ?? state.step + 1;
  if (!Number.isInteger(t) || t < 1) throw new Error(`${what}: step ${t} must be an integer ≥ 1`);
  return t;
}

function hpBlock(e: Engine, n: number, flag: number, f: [number, number, number, number, number, number, number]) {
  const buf = new ArrayBuffer(48);
  const u = new Uint32Array(buf);
  const x = new Float32Array(buf);
  u[0] = n;
  u[1] = flag;
  x.set(f, 2);
  for (let i = 2; i < 9; i++) if (!Number.isFinite(x[i]!)) throw new Error(`optimizer hyper-parameter ${f[i - 2]} is not finite in f32`);
  return e.uniform(u);
}

const dummies = new WeakMap<Engine, Tensor>();
function dummy(e: Engine): Tensor {
  let t = dummies.get(e);
  if (!t || t.isFreed) dummies.set(e, (t = e.zeros([1])));
  return t;
}

/**
 * AdamW (torch.optim.AdamW, amsgrad off): θ ← θ(1−lr·λ); m ← lerp(m, g, 1−β1); v ← β2v + (1−β2)g²;
 * θ ← θ − lr/(1−β1^t) · m / (√v/√(1−β2^t) + ε). `step` (1-based, since the last reset) defaults to
 * state.step + 1; state.step is set to it.
 */
export function adamwStep(e: Engine, param: Tensor, grad: Tensor, state: AdamWState, hp: AdamWHp, step?: number): void {
  check('adamwStep', param, grad, [state.m, state.v]);
  const h = adamwDefaults(hp);
  const t = nextStep(state, step, 'adamwStep');
  const stepSize = h.lr / (1 - h.beta1 ** t);
  const bc2sqrt = Math.sqrt(1 - h.beta2 ** t);
  const u = hpBlock(e, param.numel, 0, [stepSize, 1 - h.lr * h.weightDecay, 1 - h.beta1, h.beta2, h.eps, bc2sqrt, 1 - h.beta2]);
  const p = e.pipeline('optim', () => src, { WG }, 'adamw');
  e.dispatch(p, [param, grad, u, state.m, state.v], grid1d(e, param.numel, WG));
  state.step = t;
}

/**
 * SGD (torch.optim.SGD): d = g + λθ; with momentum μ: buf ← d on the first step after a reset, else
 * μ·buf + (1−dampening)·d; d = nesterov ? d + μ·buf : buf; θ ← θ − lr·d.
 */
export function sgdStep(e: Engine, param: Tensor, grad: Tensor, state: SgdState, hp: SgdHp, step?: number): void {
  const h = sgdDefaults(hp);
  if (h.momentum !== 0 && !state.momentumBuffer) throw new Error('sgdStep: momentum needs a state created with createSgdState(e, param, momentum)');
  if (h.nesterov && (h.momentum <= 0 || h.dampening !== 0)) throw new Error('sgdStep: Nesterov momentum requires a momentum and zero dampening');
  check('sgdStep', param, grad, state.momentumBuffer ? [state.momentumBuffer] : []);
  const t = nextStep(state, step, 'sgdStep');
  const buf = state.momentumBuffer ?? dummy(e); // before e.uniform(): nothing may flush between it and the dispatch
  const u = hpBlock(e, param.numel, state.step === 0 ? 1 : 0, [h.lr, h.weightDecay, h.momentum, 1 - h.dampening, h.nesterov ? 1 : 0, 1, 0]);
  const p = e.pipeline('optim', () => src, { WG }, 'sgd');
  e.dispatch(p, [param, grad, u, buf], grid1d(e, param.numel, WG));
  state.step = t;
}

/** AdaGrad (torch.optim.Adagrad): g ← g + λθ; s ← s + g²; θ ← θ − lr/(1+(t−1)·lr_decay) · g/(√s + ε). */
export function adagradStep(e: Engine, param: Tensor, grad: Tensor, state: AdagradState, hp: AdagradHp, step?: number): void {
  check('adagradStep', param, grad, [state.sum]);
  const h = adagradDefaults(hp);
  const t = nextStep(state, step, 'adagradStep');
  const clr = h.lr / (1 + (t - 1) * h.lrDecay);
  const u = hpBlock(e, param.numel, 0, [clr, h.weightDecay, 0, 0, h.eps, 1, 0]);
  const p = e.pipeline('optim', () => src, { WG }, 'adagrad');
  e.dispatch(p, [param, grad, u, state.sum], grid1d(e, param.numel, WG));
  state.step = t;
}

// ---------------------------------------------------------------- gradient norms

const MAX_PARTIALS_PER_TENSOR = 64;

function redBlock(e: Engine, n: number, offset: number, maxNorm: number, mode: number) {
  const buf = new ArrayBuffer(16);
  const u = new Uint32Array(buf);
  u[0] = n;
  u[1] = offset;
  new Float32Array(buf)[2] = maxNorm;
  u[3] = mode;
  return e.uniform(u);
}

/** Σ over all grads of Σ g² (mode 0) or its square root (mode 1) into a new (1) tensor; deterministic. */
function reduceSq(e: Engine, grads: Tensor[], mode: 0 | 1): Tensor {
  if (grads.length === 0) throw new ShapeError('gradient norm of no tensors');
  for (const g of grads) if (g.dtype !== 'f32') throw new ShapeError(`gradient norm: ${g} must be f32`);
  const counts = grads.map((g) => Math.max(1, Math.min(MAX_PARTIALS_PER_TENSOR, Math.ceil(g.numel / WG))));
  const total = counts.reduce((a, b) => a + b, 0);
  const partials = e.empty([total]);
  const pp = e.pipeline('optim', () => src, { WG }, 'sumsq_partial');
  let offset = 0;
  grads.forEach((g, i) => {
    e.dispatch(pp, [g, partials, redBlock(e, g.numel, offset, 0, 0)], [counts[i]!]);
    offset += counts[i]!;
  });
  const out = e.empty([1]);
  e.dispatch(e.pipeline('optim', () => src, { WG }, 'finalize'), [partials, out, redBlock(e, total, 0, 0, mode)], [1]);
  partials.free();
  return out;
}

/** Σ_i ||g_i||² over the given tensors as a (1) tensor (no read-back). */
export function gradNormSq(e: Engine, grads: Tensor | Tensor[]): Tensor /* (1) */ {
  return reduceSq(e, Array.isArray(grads) ? grads : [grads], 0);
}

/**
 * torch.nn.utils.clip_grad_norm_ (L2, error_if_nonfinite=False): total = √(Σ_i ||g_i||²), every grad
 * scaled in place by min(1, maxNorm/(total + 1e-6)). Returns the total norm (before clipping) as a
 * (1) tensor; nothing is read back. A non-finite norm makes the grads non-finite, as in PyTorch.
 */
export function clipGradNorm(e: Engine, grads: Tensor[], maxNorm: number): Tensor /* (1) */ {
  if (!(maxNorm > 0) || !Number.isFinite(maxNorm)) throw new Error(`clipGradNorm: maxNorm ${maxNorm} must be positive`);
  const norm = reduceSq(e, grads, 1);
  const p = e.pipeline('optim', () => src, { WG }, 'scale');
  for (const g of grads) e.dispatch(p, [g, norm, redBlock(e, g.numel, 0, maxNorm, 0)], grid1d(e, g.numel, WG));
  return norm;
}
