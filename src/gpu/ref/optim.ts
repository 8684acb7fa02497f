// CPU references of the optimizer updates, written exactly as PyTorch 2.x's single-tensor
// (for-loop) implementations (torch/optim/adamw.py, sgd.py, adagrad.py; amsgrad=False,
// maximize=False, no foreach/fused), in f64 (or any array type: all arithmetic is JS doubles).
//
// AdamW (torch.optim.AdamW), step t = 1, 2, ... since the last reset:
//   θ ← θ·(1 − lr·λ)                      (decoupled weight decay, applied first)
//   m ← m + (1−β1)(g − m)                 (exp_avg.lerp_(grad, 1−β1))
//   v ← β2·v + (1−β2)·g²
//   θ ← θ − (lr / (1−β1^t)) · m / (√v / √(1−β2^t) + ε)
// SGD (torch.optim.SGD):
//   d = g + λ·θ;  if μ≠0: buf ← d on the first step, else buf ← μ·buf + (1−τ)·d;
//   d = nesterov ? d + μ·buf : buf;   θ ← θ − lr·d
// AdaGrad (torch.optim.Adagrad), initial accumulator 0:
//   g ← g + λ·θ;  clr = lr / (1 + (t−1)·lr_decay);  s ← s + g²;  θ ← θ − clr · g / (√s + ε)
export type Vec = Float64Array | Float32Array | number[];

export interface AdamWHp {
  lr: number;
  beta1?: number; // 0.9
  beta2?: number; // 0.999
  eps?: number; // 1e-8
  weightDecay?: number; // 1e-2 (PyTorch's AdamW default)
}
export interface SgdHp {
  lr: number;
  momentum?: number; // 0
  dampening?: number; // 0
  weightDecay?: number; // 0
  nesterov?: boolean; // false
}
export interface AdagradHp {
  lr: number;
  lrDecay?: number; // 0
  weightDecay?: number; // 0
  eps?: number; // 1e-10
}

export function adamwDefaults(hp: AdamWHp): Required<AdamWHp> {
  return { lr: hp.lr, beta1: hp.beta1 ?? 0.9, beta2: hp.beta2 ?? 0.999, eps: hp.eps ?? 1e-8, weightDecay: hp.weightDecay ?? 1e-2 };
}
export function sgdDefaults(hp: SgdHp): Required<SgdHp> {
  return { lr: hp.lr, momentum: hp.momentum ?? 0, dampening: hp.dampening ?? 0, weightDecay: hp.weightDecay ?? 0, nesterov: hp.nesterov ?? false };
}
export function adagradDefaults(hp: AdagradHp): Required<AdagradHp> {
  return { lr: hp.lr, lrDecay: hp.lrDecay ?? 0, weightDecay: hp.weightDecay ?? 0, eps: hp.eps ?? 1e-10 };
}

/** In place on p, m, v. `t` is the 1-based step since the last reset. */
export function adamwStepRef(p: Vec, g: Vec, m: Vec, v: Vec, hp: AdamWHp, t: number): void {
  const { lr, beta1, beta2, eps, weightDecay } = adamwDefaults(hp);
  const bc1 = 1 - beta1 ** t;
  const bc2sqrt = Math.sqrt(1 - beta2 ** t);
  const stepSize = lr / bc1;
  for (let i = 0; i < p.length; i++) {
    p[i] = p[i]! * (1 - lr * weightDecay);
    m[i] = m[i]! + (1 - beta1) * (g[i]! - m[i]!);
    v[i] = v[i]! * beta2 + (1 - beta2) * g[i]! * g[i]!;
    p[i] = p[i]! - (stepSize * m[i]!) / (Math.sqrt(v[i]!) / bc2sqrt + eps);
  }
}

/** In place on p and buf. `first`: the momentum buffer does not exist yet (first step after a reset). */
export function sgdStepRef(p: Vec, g: Vec, buf: Vec, hp: SgdHp, first: boolean): void {
  const { lr, momentum, dampening, weightDecay, nesterov } = sgdDefaults(hp);
  for (let i = 0; i < p.length; i++) {
    let d = g[i]! + weightDecay * p[i]!;
    if (momentum !== 0) {
      buf[i] = first ? d : momentum * buf[i]! + (1 - dampening) * d;
      d = nesterov ? d + momentum * buf[i]! : buf[i]!;
    }
    p[i] = p[i]! - lr * d;
  }
}

/** In place on p and the squared-gradient sum s. `t` is the 1-based step since the last reset. */
export function adagradStepRef(p: Vec, g: Vec, s: Vec, hp: AdagradHp, t: number): void {
  const { lr, lrDecay, weightDecay, eps } = adagradDefaults(hp);
  const clr = lr / (1 + (t - 1) * lrDecay);
  for (let i = 0; i < p.length; i++) {
    const gi = g[i]! + weightDecay * p[i]!;
    s[i] = s[i]! + gi * gi;
    p[i] = p[i]! - (clr * gi) / (Math.sqrt(s[i]!) + eps);
  }
}

/** torch.nn.utils.clip_grad_norm_ (L2): returns the total norm, scales every grad by min(1, max/(norm+1e-6)). */
export function clipGradNormRef(grads: Vec[], maxNorm: number): number {
  let sq = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) sq += g[i]! * g[i]!;
  const norm = Math.sqrt(sq);
  const coef = Math.min(maxNorm / (norm + 1e-6), 1);
  for (const g of grads) for (let i = 0; i < g.length; i++) g[i] = g[i]! * coef;
  return norm;
}
