// The COLA chain schedule as a pure function (MISSION.md "The algorithm").
//
// Step numbering: optimizer steps are numbered 0 … T-1 (T = totalSteps). A link covers the
// half-open range [startStep, endStep) and trains `endStep - startStep` steps. The knot of a link
// is tied AFTER its last step, i.e. when `endStep` steps have been completed.
//
// Knot/version choice: the service persists every link's merge as a version, so a chain of M
// links ties M knots and yields M versions (versions 1 … M of the output model). The knots at
// the internal boundaries τ1 < … < τ(M-1) are "tie_knot" actions (merge, persist, start the next
// link with a fresh (A, B) and reset optimizer state); the final link's merge at step T is the
// "finish" action (merge, persist, done). M = 1 is plain LoRA: one version.
//
// Chain forms (API.md `chain`):
//   {links: M}                        equal split of T. With T = q·M + r (0 ≤ r < M), the FIRST r
//                                     links train q+1 steps and the others q (earlier links are
//                                     never shorter than later ones). Needs M ≤ T.
//   {knots: [τ1, …, τm]}              strictly increasing integers in (0, T): link j ends after
//                                     step τ(j+1) - 1; m knots give M = m+1 links.
//   {links: [{steps, rank?}, …]}      per-link lengths and ranks (rank step-down); the steps must
//                                     sum to totalSteps when it is given, or define it when it
//                                     is omitted. A missing rank is the default rank.
//   {auto: {min_link_steps, …}}      automatic knots (src/cola/auto.ts): planned as ONE link of T
//                                     steps at the default rank; the trainer splits it (splitAt)
//                                     where the loss-improvement rate says so.
// Without per-link ranks every link uses the default rank (lora.rank).

import { ColaConfigError, checkInt } from './errors.ts';
import { checkAuto, type AutoChain } from './auto.ts';

export const MAX_TOTAL_STEPS = 10_000_000;
export const MAX_LINKS = 1_000;
export const MAX_RANK = 1_024;

export type LinkSpec = { steps: number; rank?: number };
export type ChainConfig = { links: number } | { knots: number[] } | { links: LinkSpec[] } | { auto: Partial<AutoChain> };

/** The auto-knot settings of a chain config (validated for `totalSteps`), or null for a fixed chain. */
export function autoOf(chain: ChainConfig | undefined, totalSteps: number): AutoChain | null {
  return chain && 'auto' in chain ? checkAuto(chain.auto, totalSteps) : null;
}

export interface PlannedLink {
  index: number;
  /** First step of the link (inclusive, 0-based). */
  startStep: number;
  /** One past the link's last step; the knot is tied when this many steps are done. */
  endStep: number;
  steps: number;
  rank: number;
}

export interface ChainPlan {
  totalSteps: number;
  links: PlannedLink[];
}

export type ChainAction =
  | { kind: 'train'; link: PlannedLink }
  | { kind: 'tie_knot'; link: PlannedLink; nextLink: PlannedLink; nextRank: number }
  | { kind: 'finish'; link: PlannedLink };

export interface PlanInput {
  /** Total optimizer steps of the run (epochs × ceil(n / batch)); optional only for per-link steps. */
  totalSteps?: number;
  chain?: ChainConfig;
  /** lora.rank: the rank of links that do not name their own. */
  rank: number;
}

/** Builds and validates the plan. Throws ColaConfigError (with the field path) on bad input. */
export function planChain(input: PlanInput): ChainPlan {
  const defaultRank = checkInt('lora.rank', input.rank, 1, MAX_RANK);
  const chain: unknown = input.chain ?? { links: 1 };
  if (typeof chain !== 'object' || chain === null || Array.isArray(chain)) {
    throw new ColaConfigError('chain', 'must be an object: {links: M}, {knots: [...]} or {links: [{steps, rank}]}');
  }
  const c = chain as Record<string, unknown>;
  const keys = Object.keys(c);
  if (keys.length !== 1 || !(keys[0] === 'links' || keys[0] === 'knots' || keys[0] === 'auto')) {
    throw new ColaConfigError('chain', `must have exactly one of "links", "knots" or "auto", got keys [${keys.join(', ')}]`);
  }

  // Per-link form: the steps may define the total.
  if (Array.isArray(c.links)) {
    const specs = c.links as unknown[];
    if (specs.length < 1 || specs.length > MAX_LINKS) {
      throw new ColaConfigError('chain.links', `must list 1 to ${MAX_LINKS} links, got ${specs.length}`);
    }
    const lengths: number[] = [];
    const ranks: number[] = [];
    specs.forEach((s, i) => {
      if (typeof s !== 'object' || s === null || Array.isArray(s)) {
        throw new ColaConfigError(`chain.links[${i}]`, 'must be an object {steps, rank?}');
      }
      const o = s as Record<string, unknown>;
      for (const k of Object.keys(o)) {
        if (k !== 'steps' && k !== 'rank') throw new ColaConfigError(`chain.links[${i}].${k}`, 'unknown field');
      }
      lengths.push(checkInt(`chain.links[${i}].steps`, o.steps, 1, MAX_TOTAL_STEPS));
      ranks.push(o.rank === undefined ? defaultRank : checkInt(`chain.links[${i}].rank`, o.rank, 1, MAX_RANK));
    });
    const sum = lengths.reduce((a, b) => a + b, 0);
    if (sum > MAX_TOTAL_STEPS) throw new ColaConfigError('chain.links', `steps sum to ${sum}, more than ${MAX_TOTAL_STEPS}`);
    if (input.totalSteps !== undefined) {
      const t = checkInt('total_steps', input.totalSteps, 1, MAX_TOTAL_STEPS);
      if (t !== sum) {
        throw new ColaConfigError(
          'chain.links',
          `link steps sum to ${sum} but the run has ${t} steps (epochs × ceil(examples / batch_size)); make them equal`,
        );
      }
    }
    return build(lengths, ranks);
  }

  if (input.totalSteps === undefined) {
    throw new ColaConfigError('total_steps', 'is required unless the chain lists per-link steps');
  }
  const T = checkInt('total_steps', input.totalSteps, 1, MAX_TOTAL_STEPS);
  if ('auto' in c) {
    checkAuto(c.auto, T);
    return build([T], [defaultRank]);
  }

  if ('links' in c) {
    const M = checkInt('chain.links', c.links, 1, MAX_LINKS);
    if (M > T) throw new ColaConfigError('chain.links', `${M} links need at least ${M} steps, the run has ${T}`);
    const q = Math.floor(T / M);
    const r = T % M;
    const lengths = Array.from({ length: M }, (_, j) => q + (j < r ? 1 : 0));
    return build(lengths, lengths.map(() => defaultRank));
  }

  const knots = c.knots;
  if (!Array.isArray(knots)) throw new ColaConfigError('chain.knots', 'must be an array of step numbers');
  if (knots.length > MAX_LINKS - 1) {
    throw new ColaConfigError('chain.knots', `at most ${MAX_LINKS - 1} knots, got ${knots.length}`);
  }
  let prev = 0;
  const lengths: number[] = [];
  knots.forEach((k, i) => {
    const path = `chain.knots[${i}]`;
    checkInt(path, k, 1, MAX_TOTAL_STEPS);
    if ((k as number) >= T) throw new ColaConfigError(path, `must be less than the run's ${T} steps, got ${k}`);
    if ((k as number) <= prev) {
      throw new ColaConfigError(path, `knots must be strictly increasing and > 0, got ${k} after ${prev}`);
    }
    lengths.push((k as number) - prev);
    prev = k as number;
  });
  lengths.push(T - prev);
  return build(lengths, lengths.map(() => defaultRank));
}

function build(lengths: number[], ranks: number[]): ChainPlan {
  const links: PlannedLink[] = [];
  let s = 0;
  lengths.forEach((n, index) => {
    links.push({ index, startStep: s, endStep: s + n, steps: n, rank: ranks[index]! });
    s += n;
  });
  return { totalSteps: s, links };
}

/** The link that trains step `step` (0 ≤ step < T). Binary search; throws on out-of-range. */
export function linkForStep(step: number, plan: ChainPlan): PlannedLink {
  if (!Number.isInteger(step) || step < 0 || step >= plan.totalSteps) {
    throw new RangeError(`step ${step} outside [0, ${plan.totalSteps})`);
  }
  let lo = 0;
  let hi = plan.links.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (plan.links[mid]!.endStep <= step) lo = mid + 1;
    else hi = mid;
  }
  return plan.links[lo]!;
}

/**
 * What to do when `done` steps have been completed (0 ≤ done ≤ T):
 *  - `finish`   when done = T: tie the last link's knot (its version is the run's last) and stop;
 *  - `tie_knot` when done is an internal boundary: merge and persist `link`, then start
 *               `nextLink` with rank `nextRank`, a fresh (A, B) and reset optimizer state;
 *  - `train`    otherwise: take step number `done` in `link`.
 * Trainer loop: `for (done = 0; ; ) { a = actionAt(done); if train → step, done++;
 * else if tie_knot → merge/persist/extend, then train step `done` in a.nextLink; else finish }`.
 * After a tie_knot, the next step to take is `done` itself, in `nextLink` (= linkForStep(done)).
 */
export function actionAt(done: number, plan: ChainPlan): ChainAction {
  if (!Number.isInteger(done) || done < 0 || done > plan.totalSteps) {
    throw new RangeError(`completed steps ${done} outside [0, ${plan.totalSteps}]`);
  }
  const last = plan.links[plan.links.length - 1]!;
  if (done === plan.totalSteps) return { kind: 'finish', link: last };
  const link = linkForStep(done, plan);
  if (done === link.startStep && link.index > 0) {
    const prev = plan.links[link.index - 1]!;
    return { kind: 'tie_knot', link: prev, nextLink: link, nextRank: link.rank };
  }
  return { kind: 'train', link };
}

/** Knot steps τ1 < … < τ(M-1) of the plan (the internal boundaries; the final knot is at T). */
export function knotSteps(plan: ChainPlan): number[] {
  return plan.links.slice(0, -1).map((l) => l.endStep);
}

/**
 * `POST /merge {job}`: tie a knot now, after `done` completed steps, inside link L. L is cut at
 * `done`; a new link with L's rank (or `rank`) trains the rest of L's steps; later links keep their
 * steps and ranks and are renumbered. Throws when `done` is not strictly inside a link (a knot is
 * already scheduled there, or the link has not taken a step yet, or the run is over).
 */
export function splitAt(plan: ChainPlan, done: number, rank?: number): ChainPlan {
  if (!Number.isInteger(done) || done <= 0 || done >= plan.totalSteps) {
    throw new ColaConfigError('step', `a knot can be tied only after step 0 and before the end (${plan.totalSteps}), got ${done}`);
  }
  const link = linkForStep(done, plan);
  if (done === link.startStep) {
    throw new ColaConfigError('step', `a knot is already tied at step ${done}, or the current link has taken no step yet`);
  }
  const r = rank === undefined ? link.rank : checkInt('rank', rank, 1, MAX_RANK);
  const lengths: number[] = [];
  const ranks: number[] = [];
  for (const l of plan.links) {
    if (l.index === link.index) {
      lengths.push(done - l.startStep, l.endStep - done);
      ranks.push(l.rank, r);
    } else {
      lengths.push(l.steps);
      ranks.push(l.rank);
    }
  }
  if (lengths.length > MAX_LINKS) throw new ColaConfigError('step', `a chain has at most ${MAX_LINKS} links`);
  return build(lengths, ranks);
}

/**
 * The plan of a run resumed after `knotSteps` (the steps of the knots it persisted, in order):
 * knots tied on request (POST /merge {job}) are not in the planned schedule, so the plan is split
 * at each of them again, as the interrupted run did. Link numbers, each link's A (seeded by link)
 * and the knots' versions then match an uninterrupted run.
 */
export function replayKnots(plan: ChainPlan, knotSteps: readonly number[]): ChainPlan {
  let p = plan;
  for (const s of knotSteps) {
    if (s < p.totalSteps && !p.links.some((l) => l.endStep === s)) p = splitAt(p, s);
  }
  return p;
}
