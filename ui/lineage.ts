// The lineage graph of models and versions as SVG: base → knots → merges → imports, one lane per
// model, each version placed one column right of its parent; a node shows kind, link, rank,
// sha256 and size, and a click selects it.
import type { ModelDetail } from './api.ts';

export type LineageModel = Pick<ModelDetail, 'name' | 'owner' | 'versions'>;
export type LineageNode = { id: string; model: string; owner: string; v: LineageModel['versions'][number] | null; x: number; y: number };

const W = 178;
const H = 58;
const GX = 48;
const GY = 26;
const SVG_NS = 'http://www.w3.org/2000/svg';

export const bytesText = (b: number) => (b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB` : b >= 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${b} B`);

export function layout(models: LineageModel[]): { nodes: LineageNode[]; edges: [string, string][] } {
  const nodes = new Map<string, LineageNode>();
  const edges: [string, string][] = [];
  const lane = new Map<string, number>();
  const laneOf = (m: string) => {
    if (!lane.has(m)) lane.set(m, lane.size);
    return lane.get(m)!;
  };
  // shared models first, then the tenant's, in the order given
  for (const m of [...models].sort((a, b) => Number(a.owner !== 'shared') - Number(b.owner !== 'shared'))) laneOf(m.name);
  for (const m of models) for (const v of m.versions) nodes.set(`${m.name}@${v.version}`, { id: `${m.name}@${v.version}`, model: m.name, owner: m.owner, v, x: 0, y: laneOf(m.name) });
  for (const n of [...nodes.values()]) {
    const p = n.v?.parent;
    if (!p) continue;
    const pid = `${p.model}@${p.version}`;
    if (!nodes.has(pid)) nodes.set(pid, { id: pid, model: p.model, owner: '?', v: null, x: 0, y: laneOf(p.model) });
    edges.push([pid, n.id]);
  }
  // column = depth from a root (parents are older, so a few passes settle it)
  for (let pass = 0; pass < nodes.size; pass++) {
    let moved = false;
    for (const [a, b] of edges) {
      const na = nodes.get(a)!;
      const nb = nodes.get(b)!;
      if (nb.x < na.x + 1) {
        nb.x = na.x + 1;
        moved = true;
      }
    }
    if (!moved) break;
  }
  return { nodes: [...nodes.values()], edges };
}

function el<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>, text?: string): SVGElementTagNameMap[K] {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

export function renderLineage(models: LineageModel[], onSelect: (n: LineageNode) => void): SVGSVGElement {
  const { nodes, edges } = layout(models);
  const cols = Math.max(1, ...nodes.map((n) => n.x + 1));
  const rows = Math.max(1, ...nodes.map((n) => n.y + 1));
  const svg = el('svg', { class: 'lineage', width: cols * (W + GX) + 20, height: rows * (H + GY) + 20, 'data-testid': 'lineage' });
  const pos = (n: LineageNode) => ({ x: 10 + n.x * (W + GX), y: 10 + n.y * (H + GY) });
  const byId = new Map(nodes.map((n) => [n.id, n]));
  for (const [a, b] of edges) {
    const p = pos(byId.get(a)!);
    const q = pos(byId.get(b)!);
    const x1 = p.x + W;
    const y1 = p.y + H / 2;
    const x2 = q.x;
    const y2 = q.y + H / 2;
    svg.append(el('path', { d: `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}`, 'data-edge': `${a}->${b}` }));
    svg.append(el('path', { d: `M${x2 - 6},${y2 - 4} L${x2},${y2} L${x2 - 6},${y2 + 4}` }));
  }
  for (const n of nodes) {
    const p = pos(n);
    // A tenant's own model whose first version has no parent was imported (the API calls it "base").
    const kind = n.v?.kind === 'base' && n.owner === 'tenant' && !n.v.parent ? 'import' : (n.v?.kind ?? 'base');
    const g = el('g', { class: `node ${kind}`, transform: `translate(${p.x},${p.y})`, 'data-node': n.id, 'data-kind': kind });
    g.append(el('rect', { width: W, height: H }));
    g.append(el('text', { x: 8, y: 16, 'font-weight': 600 }, n.id));
    const what = n.v ? [kind, n.v.link !== undefined && n.v.link !== null ? `link ${n.v.link + 1}` : '', n.v.rank ? `r${n.v.rank}` : ''].filter(Boolean).join(' · ') : 'not visible';
    g.append(el('text', { x: 8, y: 32, fill: '#475569' }, what));
    if (n.v) g.append(el('text', { x: 8, y: 48, fill: '#64748b' }, `${n.v.sha256.slice(0, 12)}… · ${bytesText(n.v.bytes)}`));
    g.addEventListener('click', () => {
      svg.querySelectorAll('.node.selected').forEach((x) => x.classList.remove('selected'));
      g.classList.add('selected');
      onSelect(n);
    });
    svg.append(g);
  }
  return svg;
}
