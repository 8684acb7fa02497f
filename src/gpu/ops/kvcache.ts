// RoPE + KV-cache write for generation (one dispatch per layer and step).
import src from '../kernels/kvcache.wgsl' with { type: 'text' };
import { ShapeError, type Engine, type Tensor } from '../engine.ts';
import { grid1d } from './util.ts';

export interface Strided {
  t: Tensor; // (B·T, stride)
  stride: number;
  off: number;
}

export interface KvWriteOptions {
  B: number;
  T: number;
  H: number;
  HKV: number;
  D: number;
  /** invFreq: the model's RoPE inverse frequencies (D/2) on the GPU; null = no rotation. */
  rope: { invFreq: Tensor; interleaved: boolean } | null;
}

/**
 * q (B,T,H,D) with RoPE applied at positions start..start+T-1 is returned; k (roped) and v are
 * written into kCache / vCache (B,MAXT,HKV,D) at those positions.
 */
export function ropeAndCache(e: Engine, q: Strided, k: Strided, v: Strided, kCache: Tensor, vCache: Tensor, start: number, o: KvWriteOptions, qOut?: Tensor): Tensor {
  const MAXT = kCache.shape[1]!;
  if (kCache.shape.length !== 4 || kCache.shape[0] !== o.B || kCache.shape[2] !== o.HKV || kCache.shape[3] !== o.D) throw new ShapeError(`ropeAndCache: cache ${kCache}`);
  if (!Number.isInteger(start) || start < 0 || start + o.T > MAXT) throw new ShapeError(`ropeAndCache: positions ${start}..${start + o.T} outside the cache (${MAXT})`);
  if (o.D % 2 !== 0) throw new ShapeError(`ropeAndCache: head dim ${o.D} must be even`);
  if (o.rope && (o.rope.invFreq.numel !== o.D / 2 || o.rope.invFreq.dtype !== 'f32')) throw new ShapeError(`ropeAndCache: inverse frequencies ${o.rope.invFreq} for head dim ${o.D}`);
  const out = qOut ?? e.empty([o.B, o.T, o.H, o.D]);
  const p = e.pipeline('kvcache', () => src, {
    B: o.B, T: o.T, H: o.H, HKV: o.HKV, D: o.D, MAXT,
    Q_STRIDE: q.stride, Q_OFF: q.off, K_STRIDE: k.stride, K_OFF: k.off, V_STRIDE: v.stride, V_OFF: v.off,
    ROPE: o.rope ? 1 : 0, INTERLEAVED: o.rope?.interleaved ? 1 : 0,
  });
  const n = o.B * o.T * (o.H + 2 * o.HKV) * (o.D / 2);
  // Without RoPE the frequency binding is unused: q's own buffer fills it.
  e.dispatch(p, [q.t, k.t, v.t, out, kCache, vCache, e.uniform(new Uint32Array([start, 0, 0, 0])), o.rope?.invFreq ?? q.t], grid1d(e, n, 64));
  return out;
}
