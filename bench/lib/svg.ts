// A hand-written SVG line chart (no dependency): series of (x, y) points, optional error bars,
// vertical markers (COLA knots) and horizontal reference lines.

export interface Series {
  name: string;
  color: string;
  points: { x: number; y: number; err?: number }[];
  dashed?: boolean;
  /** Draw a dot at every point (for short series such as accuracy vs chain length). */
  dots?: boolean;
}

export interface Marker {
  x: number;
  color: string;
  label?: string;
}

export interface ChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  markers?: Marker[];
  hlines?: { y: number; color: string; label: string }[];
  width?: number;
  height?: number;
  xTicks?: number[];
  yMin?: number;
  yMax?: number;
  /** Only integer x ticks (steps). */
  integerX?: boolean;
}

export const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function niceTicks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) out.push(Number(v.toPrecision(10)));
  return out;
}

const fmt = (v: number) => (Math.abs(v) >= 1000 ? v.toFixed(0) : Number(v.toPrecision(4)).toString());

export function lineChart(c: ChartSpec): string {
  const W = c.width ?? 720;
  const H = c.height ?? 420;
  const m = { l: 64, r: 220, t: 40, b: 52 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const xs = c.series.flatMap((s) => s.points.map((p) => p.x)).concat((c.markers ?? []).map((k) => k.x));
  const ys = c.series.flatMap((s) => s.points.flatMap((p) => [p.y - (p.err ?? 0), p.y + (p.err ?? 0)])).concat((c.hlines ?? []).map((h) => h.y));
  let x0 = Math.min(...xs);
  let x1 = Math.max(...xs);
  if (!(x1 > x0)) [x0, x1] = [x0 - 1, x0 + 1];
  let y0 = c.yMin ?? Math.min(...ys);
  let y1 = c.yMax ?? Math.max(...ys);
  if (!(y1 > y0)) [y0, y1] = [y0 - 1, y0 + 1];
  const pad = (y1 - y0) * 0.05;
  if (c.yMin === undefined) y0 -= pad;
  if (c.yMax === undefined) y1 += pad;
  const X = (x: number) => m.l + ((x - x0) / (x1 - x0)) * pw;
  const Y = (y: number) => m.t + ph - ((y - y0) / (y1 - y0)) * ph;
  const o: string[] = [];
  o.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  o.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  o.push(`<text x="${W / 2 - m.r / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">${esc(c.title)}</text>`);
  for (const t of niceTicks(y0, y1)) {
    o.push(`<line x1="${m.l}" x2="${m.l + pw}" y1="${Y(t).toFixed(1)}" y2="${Y(t).toFixed(1)}" stroke="#e5e5e5"/>`);
    o.push(`<text x="${m.l - 6}" y="${(Y(t) + 4).toFixed(1)}" text-anchor="end">${fmt(t)}</text>`);
  }
  for (const t of c.xTicks ?? niceTicks(x0, x1, 6).filter((v) => !c.integerX || Number.isInteger(v))) {
    o.push(`<line x1="${X(t).toFixed(1)}" x2="${X(t).toFixed(1)}" y1="${m.t + ph}" y2="${m.t + ph + 4}" stroke="#333"/>`);
    o.push(`<text x="${X(t).toFixed(1)}" y="${m.t + ph + 18}" text-anchor="middle">${fmt(t)}</text>`);
  }
  o.push(`<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  o.push(`<text x="${m.l + pw / 2}" y="${H - 12}" text-anchor="middle">${esc(c.xLabel)}</text>`);
  o.push(`<text transform="translate(16 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle">${esc(c.yLabel)}</text>`);
  for (const h of c.hlines ?? []) {
    o.push(`<line x1="${m.l}" x2="${m.l + pw}" y1="${Y(h.y).toFixed(1)}" y2="${Y(h.y).toFixed(1)}" stroke="${h.color}" stroke-dasharray="2 3"/>`);
  }
  const labelled = new Map<string, number>(); // stagger the labels of different marker colours
  for (const k of c.markers ?? []) {
    o.push(`<line x1="${X(k.x).toFixed(1)}" x2="${X(k.x).toFixed(1)}" y1="${m.t}" y2="${m.t + ph}" stroke="${k.color}" stroke-dasharray="5 4" stroke-width="1.2"/>`);
    if (!labelled.has(k.color)) labelled.set(k.color, labelled.size);
    if (k.label) o.push(`<text x="${(X(k.x) + 3).toFixed(1)}" y="${m.t + 12 + 12 * labelled.get(k.color)!}" fill="${k.color}" font-size="10">${esc(k.label)}</text>`);
  }
  for (const s of c.series) {
    if (!s.points.length) continue;
    const d = s.points.map((p, i) => `${i ? 'L' : 'M'}${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`).join(' ');
    o.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.6"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    for (const p of s.points) {
      if (p.err) o.push(`<line x1="${X(p.x).toFixed(1)}" x2="${X(p.x).toFixed(1)}" y1="${Y(p.y - p.err).toFixed(1)}" y2="${Y(p.y + p.err).toFixed(1)}" stroke="${s.color}"/>`);
      if (s.dots) o.push(`<circle cx="${X(p.x).toFixed(1)}" cy="${Y(p.y).toFixed(1)}" r="3" fill="${s.color}"/>`);
    }
  }
  const legend = [...c.series.map((s) => ({ name: s.name, color: s.color, dash: s.dashed ? '6 4' : '' })), ...(c.hlines ?? []).map((h) => ({ name: h.label, color: h.color, dash: '2 3' }))];
  legend.forEach((l, i) => {
    const y = m.t + 10 + i * 18;
    o.push(`<line x1="${m.l + pw + 12}" x2="${m.l + pw + 36}" y1="${y}" y2="${y}" stroke="${l.color}" stroke-width="2"${l.dash ? ` stroke-dasharray="${l.dash}"` : ''}/>`);
    o.push(`<text x="${m.l + pw + 42}" y="${y + 4}">${esc(l.name)}</text>`);
  });
  o.push('</svg>');
  return o.join('\n') + '\n';
}
