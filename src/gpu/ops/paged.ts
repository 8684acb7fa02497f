// Paged KV cache ops for continuous batching (see ../kernels/paged.wgsl for the layout).
import src from '../kernels/paged.wgsl' with { type: 'text' };
import { ShapeError, type Engine, type Tensor } from '../engine.ts';
import { ATTENTION_MAX_HEAD_DIM } from './attention.ts';
import type { Strided } from './kvcache.ts';
import { grid1d } from './util.ts';

/** Shape of one layer's cache slab and of the block tables. */
export interface PagedShape {
  H: number; // query heads
  HKV: number; // kv heads
  D: number; // head dim
  BS: number; // positions per block
  MAXB: number; // blocks per table row (⌈context / BS⌉)
}

export interface PagedRows {
  /** (N, 2) u32: (table row, position) of each query row. */
  rows: Tensor;
  /** (S, MAXB) u32: block ids of each sequence, by table row. */
  tables: Tensor;
  /** Number of query rows N. */
  n: number;
}

function checkCommon(what: string, s: PagedShape, cache: Tensor, r: PagedRows): void {
  if (s.D > ATTENTION_MAX_HEAD_DIM || s.D % 2 !== 0) throw new ShapeError(`${what}: head dim ${s.D} must be even and ≤ ${ATTENTION_MAX_HEAD_DIM}`);
  if (s.HKV < 1 || s.H % s.HKV !== 0) throw new ShapeError(`${what}: H=${s.H} is not a multiple of Hkv=${s.HKV}`);
  if (cache.numel % (2 * s.BS * s.HKV * s.D) !== 0) throw new ShapeError(`${what}: cache ${cache} is not whole blocks of (2, ${s.BS}, ${s.HKV}, ${s.D})`);
  if (r.rows.dtype !== 'u32' || r.rows.numel < 2 * r.n) throw new ShapeError(`${what}: rows ${r.rows} for ${r.n} rows`);
  if (r.tables.dtype !== 'u32' || r.tables.numel % s.MAXB !== 0) throw new ShapeError(`${what}: tables ${r.tables} are not rows of ${s.MAXB}`);
}

/**
 * RoPE at each row's own position for q and k (angle pos·invFreq[i]); k and v are written into the cache at (row's
 * sequence, position). Returns q (N, H, D). `rope` null = no rotation (learned positions).
 */
export function pagedWrite(
  e: Engine,
  q: Strided,
  k: Strided,
  v: Strided,
  cache: Tensor /* (NB, 2, BS, HKV, D) */,
  r: PagedRows,
  s: PagedShape,
  rope: { invFreq: Tensor /* (D/2) */; interleaved: boolean } | null,
): Tensor /* (N, H, D) */ {
  checkCommon('pagedWrite', s, cache, r);
  if (rope && (rope.invFreq.numel !== s.D / 2 || rope.invFreq.dtype !== 'f32')) throw new ShapeError(`pagedWrite: inverse frequencies ${rope.invFreq} for head dim ${s.D}`);
  const out = e.empty([r.n, s.H, s.D]);
  const p = e.pipeline(
    'paged',
    () => src,
    {
      H: s.H, HKV: s.HKV, D: s.D, BS: s.BS, MAXB: s.MAXB,
      Q_STRIDE: q.stride, Q_OFF: q.off, K_STRIDE: k.stride, K_OFF: k.off, V_STRIDE: v.stride, V_OFF: v.off,
      ROPE: rope ? 1 : 0, INTERLEAVED: rope?.interleaved ? 1 : 0,
    },
    'write',
  );
  const n = r.n * (s.H + 2 * s.HKV) * (s.D / 2);
  // Without RoPE the frequency binding is unused: q's own buffer fills it.
  e.dispatch(p, [q.t, k.t, v.t, out, cache, r.rows, r.tables, e.uniform(new Uint32Array([r.n, 0, 0, 0])), rope?.invFreq ?? q.t], grid1d(e, n, 64));
  return out;
}

// Lanes splitting one (row, head)'s keys. Decode rows of small models see few keys; 16 lanes keep
// the merge cheap (workgroup memory: 16·DMAX·4 = 16 KiB).
const WG_ATTEND = 16;
// As in ops/attention.ts: for small head dims the module bakes D in (registers instead of private
// memory indexed at run time); larger D stays a uniform (compile times on lavapipe).
const SPECIALISE_MAX_D = 8;

/** Attention of each query row over positions 0..pos of its own sequence (causal, ragged). */
export function pagedAttention(e: Engine, q: Tensor /* (N, H, D) */, cache: Tensor, r: PagedRows, s: PagedShape, scale = 1 / Math.sqrt(s.D)): Tensor /* (N, H, D) */ {
  checkCommon('pagedAttention', s, cache, r);
  if (q.numel !== r.n * s.H * s.D) throw new ShapeError(`pagedAttention: q ${q} for ${r.n} rows of (${s.H}, ${s.D})`);
  if (!Number.isFinite(scale)) throw new ShapeError(`pagedAttention: scale ${scale}`);
  const out = e.empty([r.n, s.H, s.D]);
  const special = s.D <= SPECIALISE_MAX_D;
  const name = special ? `paged.d${s.D}` : 'paged';
  const code = special ? () => src.replace(/const DMAX: u32 = \d+u;/, `const DMAX: u32 = ${s.D}u;`).replace('let D = ap.d;', 'let D = DMAX;') : () => src;
  const p = e.pipeline(name, code, { WG: WG_ATTEND }, 'attend');
  const buf = new ArrayBuffer(32);
  new Uint32Array(buf).set([r.n, s.H, s.HKV, s.D, s.BS, s.MAXB, 0, 0]);
  new Float32Array(buf)[6] = scale;
  e.dispatch(p, [q, cache, r.rows, r.tables, out, e.uniform(new Uint8Array(buf))], [s.H, r.n]);
  return out;
}
