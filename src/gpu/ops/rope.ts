import src from '../kernels/rope.wgsl' with { type: 'text' };
import { ShapeError, type Engine, type Tensor } from '../engine.ts';
import { ropeAngle } from '../ref/rope.ts';
import { grid1d } from './util.ts';

// Per-engine cos/sin tables keyed by the frequencies (theta and D, or the inverse frequencies
// themselves), grown by doubling to cover posOffset + T.
const tables = new WeakMap<Engine, Map<string, { t: Tensor; positions: number }>>();

function table(e: Engine, theta: number, invFreq: Float32Array | undefined, D: number, positions: number): Tensor {
  let m = tables.get(e);
  if (!m) tables.set(e, (m = new Map()));
  const key = invFreq ? `f|${Array.from(invFreq).join(',')}` : `${theta}|${D}`;
  const have = m.get(key);
  if (have && have.positions >= positions && !have.t.isFreed) return have.t;
  let cap = Math.max(256, have?.positions ?? 0);
  while (cap < positions) cap *= 2;
  const half = D / 2;
  const data = new Float32Array(cap * half * 2);
  for (let p = 0; p < cap; p++)
    for (let k = 0; k < half; k++) {
      const a = invFreq ? p * invFreq[k]! : ropeAngle(p, k, D, theta); // f64, as the reference
      data[(p * half + k) * 2] = Math.cos(a);
      data[(p * half + k) * 2 + 1] = Math.sin(a);
    }
  // The old table goes back to the pool; commands already recorded with it run before any reuse.
  have?.t.free();
  const t = e.upload(data, [cap, half, 2]);
  m.set(key, { t, positions: cap });
  return t;
}

/**
 * Rotary embedding of x (B, T, H, D): token t sits at position posOffset + t and its pair k turns
 * by pos·theta^(−2k/D), or by pos·invFreq[k] when the model's inverse frequencies are given (as f32
 * values from src/model/rope.ts; the angle and its cos/sin are taken in f64). interleaved: pairs (2k, 2k+1) (llama2.c); otherwise (k, k + D/2) (HF Llama
 * rotate_half). inverse: rotate by −angle, which is the backward (the rotation is orthogonal).
 */
export function rope(
  e: Engine,
  x: Tensor,
  opts: { theta: number; invFreq?: Float32Array; posOffset?: number; interleaved: boolean; inverse?: boolean },
): Tensor {
  if (x.dtype !== 'f32' || x.shape.length !== 4) throw new ShapeError(`rope: expected f32 (B, T, H, D), got ${x}`);
  const [, T, H, D] = x.shape as [number, number, number, number];
  if (D % 2 !== 0) throw new ShapeError(`rope: head dim ${D} must be even`);
  const posOffset = opts.posOffset ?? 0;
  if (!Number.isInteger(posOffset) || posOffset < 0) throw new ShapeError(`rope: posOffset ${posOffset}`);
  if (!opts.invFreq && !(opts.theta > 0)) throw new ShapeError(`rope: theta ${opts.theta}`);
  if (opts.invFreq && opts.invFreq.length !== D / 2) throw new ShapeError(`rope: ${opts.invFreq.length} inverse frequencies for head dim ${D}`);
  const y = e.empty(x.shape);
  const pairs = x.numel / 2;
  if (pairs === 0) return y;
  const cs = table(e, opts.theta, opts.invFreq, D, posOffset + T);
  const p = e.pipeline('rope', () => src, { H, D, INTERLEAVED: opts.interleaved ? 1 : 0 });
  const u = new ArrayBuffer(16);
  new Uint32Array(u, 0, 3).set([pairs, T, posOffset]);
  new Float32Array(u, 12, 1)[0] = opts.inverse ? -1 : 1;
  e.dispatch(p, [x, cs, y, e.uniform(new Uint8Array(u))], grid1d(e, pairs, 256));
  return y;
}
