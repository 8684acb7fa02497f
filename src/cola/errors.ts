// Errors raised by the pure COLA modules (schedule, lr, data, flops, peft, tasks).
// `path` names the offending field in the request body (JSON-pointer-like, e.g. "chain.knots[1]"),
// so routes can answer 400 application/problem+json with `errors: [{path, message}]`.

export class ColaConfigError extends Error {
  override name = 'ColaConfigError';
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(path ? `${path}: ${message}` : message);
  }
}

/** Throws ColaConfigError unless `x` is an integer in [lo, hi]. Returns x. */
export function checkInt(path: string, x: unknown, lo: number, hi: number): number {
  if (typeof x !== 'number' || !Number.isInteger(x)) {
    throw new ColaConfigError(path, `must be an integer, got ${describe(x)}`);
  }
  if (x < lo || x > hi) throw new ColaConfigError(path, `must be in [${lo}, ${hi}], got ${x}`);
  return x;
}

/** Throws ColaConfigError unless `x` is a finite number in [lo, hi]. Returns x. */
export function checkNum(path: string, x: unknown, lo: number, hi: number): number {
  if (typeof x !== 'number' || !Number.isFinite(x)) {
    throw new ColaConfigError(path, `must be a finite number, got ${describe(x)}`);
  }
  if (x < lo || x > hi) throw new ColaConfigError(path, `must be in [${lo}, ${hi}], got ${x}`);
  return x;
}

export function describe(x: unknown): string {
  if (typeof x === 'string') return JSON.stringify(x.length > 40 ? x.slice(0, 40) + '…' : x);
  if (typeof x === 'number' || typeof x === 'boolean' || x === null || x === undefined) return String(x);
  if (Array.isArray(x)) return `array(${x.length})`;
  return typeof x;
}
