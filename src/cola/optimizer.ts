// One optimizer over a link's trainable tensors (AdamW, SGD with optional momentum, AdaGrad),
// built on the GPU update ops. A COLA knot resets it (`reset`: moments and step counters to zero);
// with optimizer.reset_keep > 0 a pruned part of the state is carried over instead (pruneState).
import type { Engine, Tensor } from '../gpu/engine.ts';
import {
  adagradStep, adamwStep, clipGradNorm, createAdagradState, createAdamWState, createSgdState, freeState, sgdStep, stateTensors, zeroState,
  type OptimState,
} from '../gpu/ops/optim.ts';
import { encodeSafetensors, parseSafetensors, toFloat32 } from '../model/safetensors.ts';
import { ColaConfigError } from './errors.ts';

export interface OptimizerConfig {
  name: 'adamw' | 'sgd' | 'adagrad';
  lr: number;
  weightDecay: number;
  betas: [number, number];
  eps: number;
  momentum: number;
  /**
   * At a knot, the fraction of optimizer-state entries kept (by magnitude, ReLoRA-style) for the
   * next link instead of zeroing them all; 0 (default) is the paper's full reset. In [0, 1).
   */
  resetKeep?: number;
}

export interface Optimizer {
  readonly states: OptimState[];
  /** One update of every parameter from its gradient (same order as the params), at learning rate lr. */
  step(grads: Tensor[], lr: number, maxGradNorm: number): void;
  /** Zeroes all state (a knot: extend the chain with a fresh optimizer). */
  reset(): void;
  free(): void;
}

export function createOptimizer(e: Engine, cfg: OptimizerConfig, params: Tensor[]): Optimizer {
  const states: OptimState[] = params.map((p) =>
    cfg.name === 'adamw' ? createAdamWState(e, p) : cfg.name === 'sgd' ? createSgdState(e, p, cfg.momentum) : createAdagradState(e, p),
  );
  return {
    states,
    step(grads, lr, maxGradNorm) {
      if (grads.length !== params.length) throw new Error(`optimizer: ${grads.length} gradients for ${params.length} parameters`);
      if (maxGradNorm > 0) clipGradNorm(e, grads, maxGradNorm).free();
      params.forEach((p, i) => {
        const s = states[i]!;
        const g = grads[i]!;
        if (s.kind === 'adamw') adamwStep(e, p, g, s, { lr, beta1: cfg.betas[0], beta2: cfg.betas[1], eps: cfg.eps, weightDecay: cfg.weightDecay });
        else if (s.kind === 'sgd') sgdStep(e, p, g, s, { lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay });
        else adagradStep(e, p, g, s, { lr, eps: cfg.eps, weightDecay: cfg.weightDecay });
      });
    },
    reset() {
      for (const s of states) zeroState(s);
    },
    free() {
      for (const s of states) freeState(s);
    },
  };
}

/**
 * Optimizer state carried over a knot by a partial reset (optimizer.reset_keep > 0): per
 * parameter, its state buffers (stateTensors order) with all but the kept entries zeroed, and the
 * step counter (which keeps counting, as in ReLoRA, so AdamW's bias correction does not re-inflate
 * the kept moments).
 */
export interface CarriedState {
  kind: OptimizerConfig['name'];
  step: number;
  /** [param][buffer] → values (the parameter's shape, flattened). */
  buffers: Float32Array[][];
}

/**
 * Indices of the `k` largest |x| (ties: lower index first), so the choice is deterministic.
 * O(n log n) on a copy; n is one adapter tensor.
 */
export function topKIndices(x: Float32Array, k: number): Uint32Array {
  const idx = Uint32Array.from({ length: x.length }, (_, i) => i);
  idx.sort((a, b) => Math.abs(x[b]!) - Math.abs(x[a]!) || a - b);
  return idx.slice(0, k);
}

/** round(keep · n): how many entries of an n-element tensor a partial reset keeps. */
export function keptCount(n: number, keep: number): number {
  return Math.min(n, Math.round(keep * n));
}

/**
 * ReLoRA-style partial reset: reads the link's optimizer state and keeps, in each parameter's
 * state, the round(keep·n) entries of largest magnitude of its first buffer (AdamW: |m|; SGD: the
 * momentum buffer; AdaGrad: Σ g²), zeroing the rest. One mask per parameter applies to all its
 * buffers, so a kept first moment never meets a zeroed second moment (m/√v would blow up).
 */
export async function pruneState(e: Engine, states: OptimState[], keep: number): Promise<CarriedState> {
  if (!(keep > 0 && keep < 1)) throw new Error(`pruneState: keep ${keep} outside (0, 1)`);
  const per = states.map((s) => stateTensors(s));
  const flat = await e.readManyF32(per.flat()); // one wait for the whole state
  let o = 0;
  const buffers = per.map((ts) => {
    const bufs = ts.map(() => flat[o++]!);
    if (bufs.length === 0) return bufs;
    const n = bufs[0]!.length;
    const keepIdx = topKIndices(bufs[0]!, keptCount(n, keep));
    return bufs.map((b) => {
      const out = new Float32Array(n);
      for (const i of keepIdx) out[i] = b[i]!;
      return out;
    });
  });
  const kind = states[0]?.kind ?? 'adamw';
  return { kind, step: states[0]?.step ?? 0, buffers };
}

/** Loads a carried state into a fresh optimizer of the same kind and shapes (the next link's). */
export function loadState(e: Engine, states: OptimState[], c: CarriedState): void {
  if (states.length !== c.buffers.length) throw new Error(`carried optimizer state has ${c.buffers.length} parameters, the link has ${states.length}`);
  states.forEach((s, i) => {
    if (s.kind !== c.kind) throw new Error(`carried optimizer state is ${c.kind}, the optimizer is ${s.kind}`);
    const ts = stateTensors(s);
    const bufs = c.buffers[i]!;
    if (ts.length !== bufs.length) throw new Error(`carried optimizer state of parameter ${i} has ${bufs.length} buffers, expected ${ts.length}`);
    ts.forEach((t, b) => {
      if (t.numel !== bufs[b]!.length) {
        throw new ColaConfigError('optimizer.reset_keep', `the next link's adapters have another shape (${t.numel} vs ${bufs[b]!.length} values): a partial reset needs every link to have the same rank`);
      }
      e.write(t, bufs[b]!);
    });
    s.step = c.step;
  });
}

const STATE_NAMES = { adamw: ['m', 'v'], sgd: ['momentum'], adagrad: ['sum'] } as const;

/** The carried state as safetensors bytes (deterministic): tensors "{param}.{buffer}", metadata kind and step. */
export function encodeCarriedState(c: CarriedState): Uint8Array {
  const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  c.buffers.forEach((bufs, i) => bufs.forEach((b, j) => (tensors[`${String(i).padStart(4, '0')}.${STATE_NAMES[c.kind][j]}`] = { dtype: 'F32', shape: [b.length], data: b })));
  return encodeSafetensors(tensors, { kind: c.kind, step: String(c.step), params: String(c.buffers.length) });
}

export function decodeCarriedState(bytes: Uint8Array): CarriedState {
  const p = parseSafetensors(bytes);
  const kind = p.metadata?.kind as CarriedState['kind'];
  if (kind !== 'adamw' && kind !== 'sgd' && kind !== 'adagrad') throw new Error(`carried optimizer state: unknown kind ${kind}`);
  const step = Number(p.metadata?.step);
  const n = Number(p.metadata?.params);
  const buffers: Float32Array[][] = Array.from({ length: n }, () => []);
  for (let i = 0; i < n; i++) {
    for (const name of STATE_NAMES[kind]) {
      const t = p.tensors.get(`${String(i).padStart(4, '0')}.${name}`);
      if (t) buffers[i]!.push(toFloat32(t, { copy: true }));
    }
  }
  return { kind, step, buffers };
}
