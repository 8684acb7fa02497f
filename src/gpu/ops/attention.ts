// Causal grouped-query attention: forward, backward, and a single-position decode step.
//
// Memory: the forward saves only the per-row logsumexp `lse` (B,H,T) f32 (plus references to its
// own output, the mask and the scale); the backward recomputes the probabilities from q, k and
// lse, and allocates one more (B,H,T) f32 temporary (`delta` = Σ_d dO·O) besides its outputs.
// So attention keeps 4·B·H·T bytes for backward instead of the 4·B·H·T² of the probability matrix
// (B=8, H=8, T=512: 128 KiB instead of 64 MiB).
import src from '../kernels/attention.wgsl' with { type: 'text' };
import { ShapeError, type Engine, type Tensor } from '../engine.ts';

export const ATTENTION_MAX_HEAD_DIM = 256; // DMAX in attention.wgsl (private per-row arrays)
const WG = 64; // rows per workgroup (forward / backward)
const WG_DECODE = 16; // lanes splitting the keys of one (b, h) in decode (workgroup memory: 16·DMAX·4 = 16 KiB)

export interface AttentionOptions {
  /** Score scale; default 1/sqrt(D). */
  scale?: number;
  /** (B,T) u32: 1 = real token, 0 = padding key (never attended to). */
  keyMask?: Tensor;
  /** 'auto' (default): vec4 kernels when D % 4 == 0, else scalar. 'scalar' forces the scalar ones (tests, benchmarks). */
  kernel?: 'auto' | 'scalar';
}

export interface AttentionSaved {
  /** Forward output (B,T,H,D): the same tensor as `out`, referenced, not copied. */
  out: Tensor;
  /** (B,H,T) log Σ_j exp(scale·q_t·k_j) over the keys visible to row t. Owned: free after backward. */
  lse: Tensor;
  scale: number;
  keyMask?: Tensor;
  /** Entry-point suffix used by the forward ('4' = vec4 kernels); the backward uses the same. */
  variant?: '' | '4';
}

interface Dims {
  B: number;
  T: number;
  H: number;
  HKV: number;
  D: number;
}

/**
 * For small head dims (D ≤ 8) the module is specialised: DMAX and the per-row loop bounds become
 * the constant D, so the per-row q / accumulator arrays live in registers instead of private memory
 * indexed at run time (on lavapipe a per-lane scalar loop per access). Measured on lavapipe:
 * stories260K's (D = 8) attention forward + backward at batch 8×128 went from ~800 to ~300 ms.
 * Larger D is not specialised: LLVM's unrolling then made compile times explode (D = 32: 20 s
 * forward + 68 s backward; D = 48: 37 s + 42 s) with no gain once compiled (D = 64: 28 vs 21 ms).
 */
const SPECIALISE_MAX_D = 8;
function kernelFor(D: number): { name: string; code: () => string } {
  if (D > SPECIALISE_MAX_D) return { name: 'attention', code: () => src };
  return {
    name: `attention.d${D}`,
    code: () =>
      src
        .replace(/const DMAX: u32 = \d+u;/, `const DMAX: u32 = ${D}u;`)
        .replaceAll('let D = P.D;', 'let D = DMAX;')
        .replaceAll('let D4 = P.D / 4u;', 'let D4 = DMAX / 4u;')
        .replaceAll('DMAX / 4>', '(DMAX + 3u) / 4u>'),
  };
}

const dummyMasks = new WeakMap<Engine, Tensor>();
/**
 * A (1) u32 tensor bound in the mask slot when there is no mask (the kernel never reads it).
 * Made with zeros() (recorded in the command stream), not upload(): an upload flushes, and a flush
 * between e.uniform() and the dispatch that binds it would let later uniforms overwrite its block.
 */
function dummyMask(e: Engine): Tensor {
  let t = dummyMasks.get(e);
  if (!t || t.isFreed) {
    t = e.zeros([1], 'u32');
    dummyMasks.set(e, t);
  }
  return t;
}

function dimsOf(q: Tensor, k: Tensor, v: Tensor, what: string): Dims {
  if (q.shape.length !== 4 || k.shape.length !== 4 || v.shape.length !== 4) throw new ShapeError(`${what}: q, k, v must be 4-D, got ${q} ${k} ${v}`);
  const [B, T, H, D] = q.shape as [number, number, number, number];
  const [Bk, Tk, HKV, Dk] = k.shape as [number, number, number, number];
  if (Bk !== B || Tk !== T || Dk !== D) throw new ShapeError(`${what}: k ${k} does not match q ${q}`);
  if (v.shape.join() !== k.shape.join()) throw new ShapeError(`${what}: v ${v} differs from k ${k}`);
  if (HKV < 1 || H % HKV !== 0) throw new ShapeError(`${what}: H=${H} is not a multiple of Hkv=${HKV}`);
  if (D > ATTENTION_MAX_HEAD_DIM) throw new ShapeError(`${what}: head dim ${D} over ${ATTENTION_MAX_HEAD_DIM}`);
  for (const t of [q, k, v]) if (t.dtype !== 'f32') throw new ShapeError(`${what}: ${t} must be f32`);
  return { B, T, H, HKV, D };
}

function checkMask(mask: Tensor | undefined, B: number, T: number, what: string): void {
  if (!mask) return;
  if (mask.dtype !== 'u32' || mask.shape.length !== 2 || mask.shape[0] !== B || mask.shape[1] !== T)
    throw new ShapeError(`${what}: keyMask must be u32 (${B},${T}), got ${mask}`);
}

/** Pipeline constants: only the workgroup size (sizes and the mask flag go through `params`, so all shapes share pipelines). */
function constants(wg: number): Record<string, number> {
  return { WG: wg };
}

/** The kernels' uniform block `Params` (binding 0). */
function params(e: Engine, d: Dims, scale: number, masked: boolean, pos = 0) {
  const buf = new ArrayBuffer(32);
  new Uint32Array(buf).set([d.B, d.T, d.H, d.HKV, d.D, 0, pos, masked ? 1 : 0]);
  new Float32Array(buf)[5] = scale;
  return e.uniform(new Uint8Array(buf));
}

/**
 * out = softmax(scale·q·kᵀ, causal, padding keys excluded)·v per head; query head h uses kv head
 * h / (H/Hkv). A query row that sees no real key outputs zeros.
 */
export function attention(
  e: Engine,
  q: Tensor /* (B,T,H,D) */,
  k: Tensor /* (B,T,Hkv,D) */,
  v: Tensor /* (B,T,Hkv,D) */,
  opts: AttentionOptions = {},
): { out: Tensor /* (B,T,H,D) */; saved: AttentionSaved } {
  const d = dimsOf(q, k, v, 'attention');
  checkMask(opts.keyMask, d.B, d.T, 'attention');
  const scale = opts.scale ?? 1 / Math.sqrt(d.D);
  if (!Number.isFinite(scale)) throw new ShapeError(`attention: scale ${scale}`);
  const out = e.empty([d.B, d.T, d.H, d.D]);
  const lse = e.empty([d.B, d.H, d.T]);
  const variant = d.D % 4 === 0 && opts.kernel !== 'scalar' ? '4' : '';
  const km = kernelFor(d.D);
  const p = e.pipeline(km.name, km.code, constants(WG), `forward${variant}`);
  const mask = opts.keyMask ?? dummyMask(e);
  e.dispatch(p, [params(e, d, scale, !!opts.keyMask), q, k, v, mask, out, lse], [Math.ceil(d.T / WG), d.H, d.B]);
  return { out, saved: { out, lse, scale, keyMask: opts.keyMask, variant } };
}

/**
 * Gradients of `attention` (FlashAttention-2 style: probabilities recomputed from lse).
 * dk/dv are summed over the query heads sharing a kv head, in a fixed order (deterministic).
 * Does not free `saved.lse`: the caller owns it.
 */
export function attentionBackward(
  e: Engine,
  dOut: Tensor /* (B,T,H,D) */,
  q: Tensor /* (B,T,H,D) */,
  k: Tensor /* (B,T,Hkv,D) */,
  v: Tensor /* (B,T,Hkv,D) */,
  saved: AttentionSaved,
): { dq: Tensor /* (B,T,H,D) */; dk: Tensor /* (B,T,Hkv,D) */; dv: Tensor /* (B,T,Hkv,D) */ } {
  const d = dimsOf(q, k, v, 'attentionBackward');
  if (dOut.shape.join() !== q.shape.join()) throw new ShapeError(`attentionBackward: dOut ${dOut} vs q ${q}`);
  if (saved.out.shape.join() !== q.shape.join() || saved.lse.shape.join() !== [d.B, d.H, d.T].join())
    throw new ShapeError(`attentionBackward: saved tensors ${saved.out} ${saved.lse} do not match q ${q}`);
  checkMask(saved.keyMask, d.B, d.T, 'attentionBackward');
  const c = constants(WG);
  const mask = saved.keyMask ?? dummyMask(e);
  const u = params(e, d, saved.scale, !!saved.keyMask);
  const delta = e.empty([d.B, d.H, d.T]);
  const km = kernelFor(d.D);
  e.dispatch(e.pipeline(km.name, km.code, c, 'delta'), [u, dOut, saved.out, delta], [Math.ceil(d.T / WG), d.H, d.B]);
  const dq = e.empty(q.shape);
  const dk = e.empty(k.shape);
  const dv = e.empty(v.shape);
  const variant = d.D % 4 === 0 ? (saved.variant ?? '4') : '';
  e.dispatch(e.pipeline(km.name, km.code, c, `backward_dq${variant}`), [u, q, k, v, mask, dOut, saved.lse, delta, dq], [Math.ceil(d.T / WG), d.H, d.B]);
  e.dispatch(e.pipeline(km.name, km.code, c, `backward_dkdv${variant}`), [u, q, k, v, mask, dOut, saved.lse, delta, dk, dv], [
    Math.ceil(d.T / WG),
    d.HKV,
    d.B,
  ]);
  delta.free(); // back to the pool; later work that reuses it is ordered after these dispatches
  return { dq, dk, dv };
}

export interface AttentionDecodeOptions {
  scale?: number;
  /** (B,maxT) u32, 0 = padding key (e.g. left-padded prompts in a batch). */
  keyMask?: Tensor;
  out?: Tensor;
}

/**
 * One generation step: q (B,1,H,D) attends to cache rows 0..pos-1 of kCache/vCache (B,maxT,Hkv,D)
 * (the new token's k/v must already be written at row pos-1). `pos` goes through a uniform, so
 * one pipeline serves every step.
 */
export function attentionDecode(
  e: Engine,
  q: Tensor /* (B,1,H,D) */,
  kCache: Tensor /* (B,maxT,Hkv,D) */,
  vCache: Tensor /* (B,maxT,Hkv,D) */,
  pos: number /* valid cache positions incl. the new one */,
  opts: AttentionDecodeOptions = {},
): Tensor /* (B,1,H,D) */ {
  if (q.shape.length !== 4 || q.shape[1] !== 1) throw new ShapeError(`attentionDecode: q must be (B,1,H,D), got ${q}`);
  if (kCache.shape.length !== 4 || vCache.shape.join() !== kCache.shape.join()) throw new ShapeError(`attentionDecode: caches ${kCache} ${vCache}`);
  const [B, , H, D] = q.shape as [number, number, number, number];
  const [Bk, maxT, HKV, Dk] = kCache.shape as [number, number, number, number];
  if (Bk !== B || Dk !== D || HKV < 1 || H % HKV !== 0) throw new ShapeError(`attentionDecode: q ${q} vs cache ${kCache}`);
  if (D > ATTENTION_MAX_HEAD_DIM) throw new ShapeError(`attentionDecode: head dim ${D} over ${ATTENTION_MAX_HEAD_DIM}`);
  if (!Number.isInteger(pos) || pos < 1 || pos > maxT) throw new ShapeError(`attentionDecode: pos ${pos} outside 1..${maxT}`);
  checkMask(opts.keyMask, B, maxT, 'attentionDecode');
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const out = opts.out ?? e.empty([B, 1, H, D]);
  if (out.numel !== B * H * D) throw new ShapeError(`attentionDecode: out ${out}`);
  const km = kernelFor(D);
  const p = e.pipeline(km.name, km.code, constants(WG_DECODE), 'decode');
  const mask = opts.keyMask ?? dummyMask(e);
  const u = params(e, { B, T: maxT, H, HKV, D }, scale, !!opts.keyMask, pos);
  e.dispatch(p, [u, q, kCache, vCache, mask, out], [H, B]);
  return out;
}
