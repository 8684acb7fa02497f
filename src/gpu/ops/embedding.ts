import src from '../kernels/embedding.wgsl' with { type: 'text' };
import { ShapeError, type Engine, type Tensor } from '../engine.ts';
import { grid1d } from './util.ts';
import { halfWGSL, type HalfKind } from '../kernels/half.ts';

/** The gather over a 16-bit table (f16/bf16 packed two per word): f32 rows out. */
function gatherHalfWGSL(kind: HalfKind): string {
  return `override C: u32;
override WG: u32 = 64;
struct Params { n: u32, v: u32, lo: u32, hi: u32 }
@group(0) @binding(0) var<storage, read> g_ids: array<i32>;        // (N)
@group(0) @binding(1) var<storage, read> g_table: array<u32>;      // (V, C) ${kind}, two per word
@group(0) @binding(2) var<storage, read_write> g_out: array<f32>;  // (N, C)
@group(0) @binding(3) var<uniform> g_p: Params;
${halfWGSL(kind)}
@compute @workgroup_size(WG)
fn emb_fwd(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= g_p.n * C) { return; }
  let n = i / C;
  let c = i - n * C;
  let id = g_ids[n];
  var v = 0.0;
  if (id >= 0 && u32(id) < g_p.v) {
    if (u32(id) < g_p.lo || u32(id) >= g_p.hi) { return; } // another chunk's row
    let j = (u32(id) - g_p.lo) * C + c;
    let p = h2(g_table[j >> 1u]);
    v = select(p.x, p.y, (j & 1u) == 1u);
  }
  g_out[i] = v;
}
`;
}

const WG = 64;

function params(e: Engine, n: number, v: number) {
  return e.uniform(new Uint32Array([n, v, 0, v]));
}

function gcd(x: number, y: number): number {
  while (y) [x, y] = [y, x % y];
  return x;
}

/**
 * out[n] = table[ids[n]]. ids i32 (...), table (V, C) → (..., C). Ids outside [0, V) (e.g. −1
 * padding) give zero rows (ops never read back, so they cannot throw on bad ids).
 */
export function embedding(e: Engine, ids: Tensor, table: Tensor): Tensor {
  if (ids.dtype !== 'i32') throw new ShapeError(`embedding: ids must be i32, got ${ids}`);
  const half = table.dtype === 'f16' || table.dtype === 'bf16' ? table.dtype : null;
  if ((table.dtype !== 'f32' && !half) || table.shape.length !== 2) throw new ShapeError(`embedding: table must be f32, f16 or bf16 (V, C), got ${table}`);
  const [V, C] = table.shape as [number, number];
  const N = ids.numel;
  const out = e.empty([...ids.shape, C]);
  if (N * C === 0) return out;
  const p = half ? e.pipeline(`embedding.${half}`, () => gatherHalfWGSL(half), { C, WG: 256 }, 'emb_fwd') : e.pipeline('embedding', () => src, { C, WG: 256 }, 'emb_fwd');
  // A table over the storage-binding limit (a 128k-token vocabulary) is bound in row chunks whose
  // byte offsets are 256-aligned; each dispatch writes the tokens whose ids fall in its chunk.
  const rowBytes = table.byteLength / V;
  const align = e.limits.minStorageBufferOffsetAlignment;
  const alignRows = align / gcd(rowBytes, align);
  let chunk = V;
  if (table.byteLength > e.limits.maxStorageBufferBindingSize) chunk = Math.floor(e.limits.maxStorageBufferBindingSize / rowBytes / alignRows) * alignRows;
  if (chunk < 1 || !Number.isInteger(alignRows)) throw new ShapeError(`embedding: ${table} cannot be bound in row chunks`);
  for (let lo = 0; lo < V; lo += chunk) {
    const hi = Math.min(V, lo + chunk);
    const t = chunk === V ? table : table.rows(lo, hi);
    e.dispatch(p, [ids, t, out, e.uniform(new Uint32Array([N, V, lo, hi]))], grid1d(e, N * C, 256));
  }
  return out;
}

/**
 * dTable (vocab, C) = scatter-add of dy rows by id, deterministic (no float atomics: each row is
 * summed over its tokens in ascending order). dy (..., C), ids i32 (...). Invalid ids are skipped.
 */
export function embeddingBackward(e: Engine, dy: Tensor, ids: Tensor, vocab: number): Tensor {
  if (ids.dtype !== 'i32') throw new ShapeError(`embeddingBackward: ids must be i32, got ${ids}`);
  if (dy.dtype !== 'f32' || dy.shape.length < 1) throw new ShapeError(`embeddingBackward: dy ${dy}`);
  const C = dy.shape[dy.shape.length - 1]!;
  const N = ids.numel;
  if (dy.numel !== N * C) throw new ShapeError(`embeddingBackward: dy ${dy} for ids ${ids}`);
  if (!Number.isInteger(vocab) || vocab < 0) throw new ShapeError(`embeddingBackward: vocab ${vocab}`);
  const dTable = e.zeros([vocab, C]);
  if (N === 0 || C === 0 || vocab === 0) return dTable;
  const nxt = e.empty([N], 'i32');
  const head = e.empty([N], 'u32');
  const prm = params(e, N, vocab);
  e.dispatch(e.pipeline('embedding', () => src, { C, WG }, 'emb_links'), [ids, nxt, head, prm], grid1d(e, N, WG));
  const max = e.limits.maxComputeWorkgroupsPerDimension;
  const z = Math.ceil(N / max);
  e.dispatch(e.pipeline('embedding', () => src, { C, WG }, 'emb_scatter'), [dy, ids, nxt, head, dTable, prm], [
    Math.ceil(C / WG),
    Math.ceil(N / z),
    z,
  ]);
  nxt.free(); // pooled: a later reuse is ordered after this dispatch
  head.free();
  return dTable;
}
