// One optimizer over a link's trainable tensors (AdamW, SGD with optional momentum, AdaGrad),
// built on the GPU update ops. A COLA knot resets it (`reset`: moments and step counters to zero).
import type { Engine, Tensor } from '../gpu/engine.ts';
import {
  adagradStep, adamwStep, clipGradNorm, createAdagradState, createAdamWState, createSgdState, freeState, sgdStep, zeroState,
  type OptimState,
} from '../gpu/ops/optim.ts';

export interface OptimizerConfig {
  name: 'adamw' | 'sgd' | 'adagrad';
  lr: number;
  weightDecay: number;
  betas: [number, number];
  eps: number;
  momentum: number;
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
