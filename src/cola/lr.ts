// Learning-rate schedules (API.md `schedule`), pure functions of the 0-based optimizer step.
//
// Formulas follow Hugging Face transformers (get_linear_schedule_with_warmup /
// get_constant_schedule_with_warmup), where the LR used by optimizer step s (0-based) is
// base · λ(s):
//   warmup (s < W):   λ(s) = s / W                       (so step 0 uses LR 0 when W > 0)
//   linear (s ≥ W):   λ(s) = max(0, (T - s) / (T - W))   (1 at s = W, reaching 0 at s = T,
//                                                        i.e. after the run's last step)
//   constant (s ≥ W): λ(s) = 1
// By default T is the WHOLE run: the schedule continues across knots (MISSION.md: "the LR schedule
// continues over the whole run"); only optimizer state is reset at a knot.
// With `restartAtKnots`, each link restarts the schedule on its own steps: s → s - startStep,
// T → link.steps, and the warmup W → min(W, link.steps) (a link shorter than the warmup
// warms up over its whole length and linear decay then has nothing left, λ = s/W throughout).
// With `knotWarmupSteps` K > 0 (used with a partial optimizer reset, ReLoRA's "jagged" schedule),
// the first K steps of every link after the first are scaled by (s - startStep + 1)/(K + 1): the
// first step after a knot uses 1/(K+1) of the scheduled LR, step K after the knot the full LR.
// K = 0 (default) leaves the schedule as above.

import { ColaConfigError, checkInt, checkNum } from './errors.ts';
import { linkForStep, type ChainPlan } from './schedule.ts';

export const MAX_LR = 10;

export interface LrSchedule {
  name: 'linear' | 'constant';
  /** Peak learning rate (optimizer.lr), in (0, 10]. */
  lr: number;
  warmupSteps?: number;
  restartAtKnots?: boolean;
  /** Re-warm-up over this many steps after each knot (0 = none). */
  knotWarmupSteps?: number;
}

/** Validates a schedule against the run length; throws ColaConfigError. */
export function checkSchedule(s: LrSchedule, totalSteps: number): void {
  if (s.name !== 'linear' && s.name !== 'constant') {
    throw new ColaConfigError('schedule.name', `must be "linear" or "constant", got ${JSON.stringify(s.name)}`);
  }
  checkNum('optimizer.lr', s.lr, 0, MAX_LR);
  if (!(s.lr > 0)) throw new ColaConfigError('optimizer.lr', 'must be > 0');
  checkInt('total_steps', totalSteps, 1, 10_000_000);
  checkInt('schedule.warmup_steps', s.warmupSteps ?? 0, 0, totalSteps);
  checkInt('schedule.knot_warmup_steps', s.knotWarmupSteps ?? 0, 0, totalSteps);
}

/** λ(s) for a run (or link) of `total` steps with `warmup` warm-up steps; pure, no validation. */
export function lrFactor(name: 'linear' | 'constant', step: number, total: number, warmup: number): number {
  if (step < warmup) return step / warmup;
  if (name === 'constant') return 1;
  if (total <= warmup) return 0;
  return Math.max(0, (total - step) / (total - warmup));
}

/**
 * The learning rate of optimizer step `step` (0 ≤ step < T). `plan` is needed only with
 * `restartAtKnots`. Throws on an out-of-range step or invalid schedule.
 */
export function lrAt(step: number, sched: LrSchedule, totalSteps: number, plan?: ChainPlan): number {
  checkSchedule(sched, totalSteps);
  if (!Number.isInteger(step) || step < 0 || step >= totalSteps) {
    throw new RangeError(`step ${step} outside [0, ${totalSteps})`);
  }
  if (sched.restartAtKnots || sched.knotWarmupSteps) checkPlan(totalSteps, plan);
  return unchecked(step, sched, totalSteps, plan);
}

function checkPlan(totalSteps: number, plan?: ChainPlan): void {
  if (!plan) throw new ColaConfigError('schedule.restart_at_knots', 'needs the chain plan');
  if (plan.totalSteps !== totalSteps) throw new RangeError(`plan has ${plan.totalSteps} steps, schedule ${totalSteps}`);
}

function unchecked(step: number, sched: LrSchedule, totalSteps: number, plan?: ChainPlan): number {
  const k = sched.knotWarmupSteps ?? 0;
  const base = scheduled(step, sched, totalSteps, plan);
  if (k === 0) return base;
  const link = linkForStep(step, plan!);
  const since = step - link.startStep;
  return link.index > 0 && since < k ? (base * (since + 1)) / (k + 1) : base;
}

function scheduled(step: number, sched: LrSchedule, totalSteps: number, plan?: ChainPlan): number {
  const warmup = sched.warmupSteps ?? 0;
  if (!sched.restartAtKnots) return sched.lr * lrFactor(sched.name, step, totalSteps, warmup);
  const link = linkForStep(step, plan!);
  return sched.lr * lrFactor(sched.name, step - link.startStep, link.steps, Math.min(warmup, link.steps));
}

/** The whole LR curve (length T), e.g. for progress reports and plots. */
export function lrCurve(sched: LrSchedule, totalSteps: number, plan?: ChainPlan): Float64Array {
  checkSchedule(sched, totalSteps);
  if (sched.restartAtKnots || sched.knotWarmupSteps) checkPlan(totalSteps, plan);
  const out = new Float64Array(totalSteps);
  for (let s = 0; s < totalSteps; s++) out[s] = unchecked(s, sched, totalSteps, plan);
  return out;
}
