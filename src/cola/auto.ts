// Automatic knot placement (`chain: {auto: {...}}`, the paper's stated future work): the trainer
// ties a knot when the current link's loss-improvement rate has fallen below a fraction of the
// link's initial rate.
//
// Signal, per link (state restarts at every knot, so a run resumed from a knot decides the same):
//   ema_n   = bias-corrected EMA of the link's training losses, ema_n = Ẽ_n / (1 - β^n),
//             Ẽ_n = β·Ẽ_{n-1} + (1-β)·loss_n, Ẽ_0 = 0 (n = steps done in the link);
//   rate_n  = (ema_{n-w} - ema_n) / w            (nats per step over the last w = `window` steps),
//             defined for n > w;
//   initial = the largest rate_n seen so far in the link (for a decaying loss curve: its rate
//             right after the knot; the maximum makes the reference robust to a noisy first value).
// Decision after step n of link j: tie a knot when
//   n ≥ min_link_steps, n > w (the rate exists), j + 1 < max_links, the link has ≥ min_link_steps steps left after the knot,
//   initial > 0 (the loss has improved in this link, beyond rounding), and rate_n ≤ threshold · initial.
// Pure arithmetic on the losses the trainer reads back: the same request gives the same losses
// (bit-identical GPU work) and therefore the same knots, on a rerun and after a resume.
import { ColaConfigError, checkInt, checkNum } from './errors.ts';

export interface AutoChain {
  /** Fewest steps of a link (before a knot may be tied, and left after it). */
  min_link_steps: number;
  /** Most links of the chain (M); the last link runs to the end of the run. */
  max_links: number;
  /** Tie when the rate falls to this fraction of the link's initial rate, in (0, 1). */
  threshold: number;
  /** EMA factor β of the loss, in [0, 1). */
  ema: number;
  /** Steps w over which the rate is measured. */
  window: number;
}

/** As many links as the explicit chain forms allow in a request. */
export const MAX_AUTO_LINKS = 64;

export const AUTO_DEFAULTS: Omit<AutoChain, 'min_link_steps'> = { max_links: 5, threshold: 0.25, ema: 0.9, window: 10 };

/** Validates an auto chain for a run of `total` steps (ColaConfigError with the field path). */
export function checkAuto(a: unknown, total: number): AutoChain {
  if (typeof a !== 'object' || a === null || Array.isArray(a)) throw new ColaConfigError('chain.auto', 'must be an object {min_link_steps, max_links, threshold, ema, window}');
  const o = a as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (!['min_link_steps', 'max_links', 'threshold', 'ema', 'window'].includes(k)) throw new ColaConfigError(`chain.auto.${k}`, 'unknown field');
  }
  const min = checkInt('chain.auto.min_link_steps', o.min_link_steps ?? Math.max(1, Math.floor(total / 10)), 1, 10_000_000);
  const maxLinks = checkInt('chain.auto.max_links', o.max_links ?? AUTO_DEFAULTS.max_links, 1, MAX_AUTO_LINKS);
  const threshold = checkNum('chain.auto.threshold', o.threshold ?? AUTO_DEFAULTS.threshold, 0, 1);
  if (!(threshold > 0 && threshold < 1)) throw new ColaConfigError('chain.auto.threshold', `must be in (0, 1), got ${threshold}`);
  const ema = checkNum('chain.auto.ema', o.ema ?? AUTO_DEFAULTS.ema, 0, 1);
  if (ema >= 1) throw new ColaConfigError('chain.auto.ema', 'must be < 1');
  // Default window: 10 steps, at most half a minimal link (the rate exists before a knot may be tied).
  const window = checkInt('chain.auto.window', o.window ?? Math.max(1, Math.min(AUTO_DEFAULTS.window, Math.floor(min / 2))), 1, 10_000_000);
  if (maxLinks > 1 && 2 * min > total) {
    throw new ColaConfigError('chain.auto.min_link_steps', `${min} steps per link leave no room for a knot in a run of ${total} steps (needs ≤ ${Math.floor(total / 2)})`);
  }
  return { min_link_steps: min, max_links: maxLinks, threshold, ema, window };
}

/** One decision, as recorded in the job's events (`knot_decision`). */
export interface KnotDecision {
  /** "tie": a knot is tied after `step`; "last_link": the chain reached max_links, the link runs to the end. */
  decision: 'tie' | 'last_link';
  link: number;
  /** Completed steps of the run when the decision was taken. */
  step: number;
  steps_in_link: number;
  /** The signal when the decision was taken (null for "last_link", taken before the link's first step). */
  ema_loss: number | null;
  rate: number | null;
  initial_rate: number | null;
  threshold: number;
}

/** The per-run controller; `startLink` at each link start, `observe` after each step. */
export class AutoKnots {
  private link = 0;
  private start = 0;
  private emas: number[] = [];
  private acc = 0;
  private pow = 1;
  private initial = -Infinity;
  private closed = false;

  constructor(readonly cfg: AutoChain) {}

  startLink(link: number, startStep: number): KnotDecision | null {
    this.link = link;
    this.start = startStep;
    this.emas = [];
    this.acc = 0;
    this.pow = 1;
    this.initial = -Infinity;
    this.closed = link + 1 >= this.cfg.max_links;
    return this.closed && this.cfg.max_links > 1
      ? { decision: 'last_link', link, step: startStep, steps_in_link: 0, ema_loss: null, rate: null, initial_rate: null, threshold: this.cfg.threshold }
      : null;
  }

  /** After a step: `done` completed steps of the run, `linkEnd` the current link's planned end. Returns a tie decision or null. */
  observe(done: number, loss: number, linkEnd: number): KnotDecision | null {
    const b = this.cfg.ema;
    this.acc = b * this.acc + (1 - b) * loss;
    this.pow *= b;
    const ema = this.acc / (1 - this.pow);
    this.emas.push(ema);
    const n = this.emas.length;
    const w = this.cfg.window;
    if (n <= w) return null;
    const rate = (this.emas[n - 1 - w]! - ema) / w;
    if (rate > this.initial) this.initial = rate;
    if (this.closed || !Number.isFinite(loss)) return null;
    if (n < this.cfg.min_link_steps || linkEnd - done < this.cfg.min_link_steps) return null;
    // A link whose loss has not improved yet has no rate to fall from: with initial ≤ 0,
    // rate ≤ threshold · initial would hold at every step of a flat or rising loss. "Improved" is
    // beyond the f64 rounding of the EMA (a constant loss gives rates of ~1e-16 · loss).
    if (!(this.initial > 1e-12 * Math.abs(ema))) return null;
    if (rate > this.cfg.threshold * this.initial) return null;
    return { decision: 'tie', link: this.link, step: done, steps_in_link: done - this.start, ema_loss: ema, rate, initial_rate: this.initial, threshold: this.cfg.threshold };
  }
}
