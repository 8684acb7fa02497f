// Central finite differences in f64, for checking CPU reference backwards.
//
// With step h, central differences have truncation error ≈ h²/6·|f'''| and rounding error
// ≈ ε·|L|/h (ε = 2.2e-16). With h = 1e-5 and |L| ≲ 100 both are ≲ 1e-9, so an analytic gradient
// that is right agrees to ~1e-8 and one that is wrong by more than ~1e-6 is caught.

export interface GradCheckResult {
  /** max over checked i of |numeric − analytic| / (atol + rtol·|numeric|); ≤ 1 passes. */
  worst: number;
  worstIndex: number;
  numeric: number;
  analytic: number;
}

/**
 * Compares `analytic` (dL/dx) with central differences of `loss` at `x` on the indices `idx`
 * (all of x when omitted). `x` is perturbed in place and restored.
 */
export function gradCheck(
  loss: (x: Float64Array) => number,
  x: Float64Array,
  analytic: ArrayLike<number>,
  opts: { h?: number; atol?: number; rtol?: number; idx?: number[] } = {},
): GradCheckResult {
  const h = opts.h ?? 1e-5;
  const atol = opts.atol ?? 1e-7;
  const rtol = opts.rtol ?? 1e-6;
  const idx = opts.idx ?? Array.from({ length: x.length }, (_, i) => i);
  const res: GradCheckResult = { worst: 0, worstIndex: -1, numeric: 0, analytic: 0 };
  for (const i of idx) {
    const x0 = x[i]!;
    x[i] = x0 + h;
    const lp = loss(x);
    x[i] = x0 - h;
    const lm = loss(x);
    x[i] = x0;
    const num = (lp - lm) / (2 * h);
    const err = Math.abs(num - analytic[i]!) / (atol + rtol * Math.abs(num));
    if (!(err <= res.worst)) Object.assign(res, { worst: err, worstIndex: i, numeric: num, analytic: analytic[i]! });
  }
  return res;
}

/** Σ r·y, the scalar whose gradient with respect to y is r (a random projection of an output). */
export function dot(r: ArrayLike<number>, y: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < y.length; i++) s += r[i]! * y[i]!;
  return s;
}

export function f64(a: ArrayLike<number>): Float64Array {
  return Float64Array.from(a);
}
