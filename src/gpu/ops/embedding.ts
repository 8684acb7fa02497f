import src from '../kernels/embedding.wgsl' with { type: 'text' };
import { ShapeError, type Engine, type Tensor } from '../engine.ts';
import { grid1d } from './util.ts';

const WG = 64;

function params(e: Engine, n: number, v: number) {
  return e.uniform(new Uint32Array([n, v, 0, 0]));
}

/**
 * out[n] = table[ids[n]]. ids i32 (...), table (V, C) → (..., C). Ids outside [0, V) (e.g. −1
 * padding) give zero rows (ops never read back, so they cannot throw on bad ids).
 */
export function embedding(e: Engine, ids: Tensor, table: Tensor): Tensor {
  if (ids.dtype !== 'i32') throw new ShapeError(`embedding: ids must be i32, got ${ids}`);
  if (table.dtype !== 'f32' || table.shape.length !== 2) throw new ShapeError(`embedding: table must be f32 (V, C), got ${table}`);
  const [V, C] = table.shape as [number, number];
  const N = ids.numel;
  const out = e.empty([...ids.shape, C]);
  if (N * C === 0) return out;
  const p = e.pipeline('embedding', () => src, { C, WG: 256 }, 'emb_fwd');
  e.dispatch(p, [ids, table, out, params(e, N, V)], grid1d(e, N * C, 256));
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
