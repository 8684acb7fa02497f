// Small statistics and formatting helpers for the experiment report.

export function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN;
}

/** Sample standard deviation (n − 1); 0 for a single value. */
export function std(xs: readonly number[]): number {
  if (xs.length < 2) return 0;
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1));
}

/** Accuracy in percent as "mean ± std" (std over seeds; "—" std with one seed). */
export function pm(xs: readonly number[], digits = 1): string {
  if (!xs.length) return 'n/a';
  const m = (100 * mean(xs)).toFixed(digits);
  return xs.length > 1 ? `${m} ± ${(100 * std(xs)).toFixed(digits)}` : `${m}`;
}

export function signed(x: number, digits = 1, unit = ''): string {
  if (!Number.isFinite(x)) return 'n/a';
  return `${x >= 0 ? '+' : '−'}${Math.abs(x).toFixed(digits)}${unit}`;
}

export function mdTable(header: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n') + '\n';
}

export function csvCell(v: string | number): string {
  const s = String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function csv(header: string[], rows: (string | number)[][]): string {
  return [header, ...rows].map((r) => r.map(csvCell).join(',')).join('\n') + '\n';
}

/** Trailing moving average (window w) for plotting noisy per-step losses. */
export function smooth(xs: readonly number[], w: number): number[] {
  const out: number[] = [];
  let s = 0;
  for (let i = 0; i < xs.length; i++) {
    s += xs[i]!;
    if (i >= w) s -= xs[i - w]!;
    out.push(s / Math.min(i + 1, w));
  }
  return out;
}
