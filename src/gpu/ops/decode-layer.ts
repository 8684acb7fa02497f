// The fused decode-layer ops (kernels/decode_layer.ts): q/k/v and gate/up products with the RMSNorm
// folded in, o/down products with the residual add, and attention with the KV-cache append.
import { ShapeError, type Engine, type Tensor } from '../engine.ts';
import { attnAppendWGSL, fusedGemvKey, fusedGemvWGSL, GEMV_ROWS_PER_WG, type FusedGemvSpec, type WeightKind } from '../kernels/decode_layer.ts';
import { invFreqKey } from '../kernels/decode_llama.ts';

/** Input rows up to which the fused GEMVs run (partial sums per row live in registers). */
export const FUSED_GEMV_MAX_ROWS = 8;

function kindOf(w: Tensor): WeightKind {
  if (w.dtype === 'f32' || w.dtype === 'f16' || w.dtype === 'bf16') return w.dtype;
  throw new ShapeError(`fused decode: weight ${w} must be f32, f16 or bf16`);
}

/** Whether a (N, K) weight can be read by the fused GEMVs: K a multiple of 8, a whole 2-D tensor. */
export function fusedGemvFits(e: Engine, w: Tensor): boolean {
  return w.shape.length === 2 && w.shape[1]! % 8 === 0 && w.byteLength <= e.limits.maxStorageBufferBindingSize && (w.dtype === 'f32' || w.dtype === 'f16' || w.dtype === 'bf16');
}

function gemv(e: Engine, spec: FusedGemvSpec, x: Tensor, y: Tensor, n: [number, number, number], K: number, eps: number, g: Tensor | null, bias: Tensor | null, ws: Tensor[]): void {
  const M = spec.MR;
  if (x.dtype !== 'f32' || x.numel !== M * K) throw new ShapeError(`fused gemv: x ${x} is not (${M}, ${K}) f32`);
  if (K % 8 !== 0) throw new ShapeError(`fused gemv: K = ${K} must be a multiple of 8`);
  if (M < 1 || M > FUSED_GEMV_MAX_ROWS) throw new ShapeError(`fused gemv: ${M} rows (1..${FUSED_GEMV_MAX_ROWS})`);
  const ntot = spec.mode === 'qkv' ? n[0] + n[1] + n[2] : n[0];
  if (y.dtype !== 'f32' || y.numel !== M * ntot) throw new ShapeError(`fused gemv: y ${y} is not (${M}, ${ntot})`);
  if (y.buffer === x.buffer) throw new ShapeError('fused gemv: y must not alias x');
  ws.forEach((w, i) => {
    if (w.shape.length !== 2 || w.shape[1] !== K || w.shape[0] !== n[i]) throw new ShapeError(`fused gemv: weight ${i} ${w} is not (${n[i]}, ${K})`);
  });
  if (g && (g.numel !== K || g.dtype !== 'f32')) throw new ShapeError(`fused gemv: norm weight ${g} for K = ${K}`);
  if (bias && (bias.numel !== ntot || bias.dtype !== 'f32')) throw new ShapeError(`fused gemv: bias ${bias} for ${ntot} outputs`);
  const p = e.pipeline(fusedGemvKey(spec), () => fusedGemvWGSL(spec));
  const params = new ArrayBuffer(32);
  new Uint32Array(params, 0, 4).set([n[0], n[1], n[2], K / 8]);
  new Float32Array(params, 16, 1)[0] = eps;
  const groups = Math.ceil(ntot / GEMV_ROWS_PER_WG);
  const gy = Math.ceil(groups / e.limits.maxComputeWorkgroupsPerDimension);
  e.dispatch(p, [x, y, e.uniform(new Uint8Array(params)), ...(g ? [g] : []), ...(bias ? [bias] : []), ...ws], [Math.ceil(groups / gy), gy]);
}

/**
 * [q | k | v] (M, NQ+NK+NV) = rmsnorm(x; g, eps)·[Wq; Wk; Wv]ᵀ + bias. x: (M, K); bias: the three
 * biases concatenated (NQ+NK+NV) or null. One dispatch.
 */
export function qkvRmsGemv(e: Engine, x: Tensor, g: Tensor, eps: number, wq: Tensor, wk: Tensor, wv: Tensor, bias: Tensor | null, out?: Tensor): Tensor {
  const K = g.numel;
  const M = x.numel / K;
  const n: [number, number, number] = [wq.shape[0]!, wk.shape[0]!, wv.shape[0]!];
  const y = out ?? e.empty([M, n[0] + n[1] + n[2]]);
  gemv(e, { mode: 'qkv', kinds: [kindOf(wq), kindOf(wk), kindOf(wv)], MR: M, bias: !!bias }, x, y, n, K, eps, g, bias, [wq, wk, wv]);
  return y;
}

/** silu(rmsnorm(x)·Wgᵀ) ⊙ (rmsnorm(x)·Wuᵀ) (M, F) in one dispatch (no biases). */
export function gateUpRmsGemv(e: Engine, x: Tensor, g: Tensor, eps: number, wg: Tensor, wu: Tensor, out?: Tensor): Tensor {
  const K = g.numel;
  const M = x.numel / K;
  const F = wg.shape[0]!;
  if (wu.shape[0] !== F) throw new ShapeError(`gateUpRmsGemv: gate ${wg} and up ${wu} differ`);
  const y = out ?? e.empty([M, F]);
  gemv(e, { mode: 'gateup', kinds: [kindOf(wg), kindOf(wu)], MR: M, bias: false }, x, y, [F, F, 0], K, eps, g, null, [wg, wu]);
  return y;
}

/** acc (M, N) += x·Wᵀ (+ bias): a product with its residual add, in one dispatch. */
export function residGemv(e: Engine, x: Tensor, w: Tensor, acc: Tensor, bias: Tensor | null = null): Tensor {
  const [N, K] = w.shape as [number, number];
  const M = x.numel / K;
  gemv(e, { mode: 'resid', kinds: [kindOf(w)], MR: M, bias: !!bias }, x, acc, [N, 0, 0], K, 0, null, bias, [w]);
  return acc;
}

export interface AttnAppendShape {
  H: number;
  HKV: number;
  D: number;
  /** RoPE: the model's inverse frequencies (D/2) and pairing; null = no rotation. */
  rope: { invFreq: Float32Array; interleaved: boolean } | null;
}

/** Lanes splitting the keys of one head: 32 where the workgroup memory allows, else 16. */
function attnLanes(e: Engine, D: number): number {
  const bytes = (wg: number) => 4 * (3 * D + 2 * wg + wg * D);
  return bytes(32) <= e.limits.maxComputeWorkgroupStorageSize ? 32 : 16;
}

/**
 * One decode step's attention for one layer, batch 1: q, k (RoPE at `pos`) and v from `qkv`
 * (NQ+2·NKV, as qkvRmsGemv writes them); k, v written at cache row pos; softmax(q·kᵀ/√D)·v over
 * rows 0..pos. Caches (1, MAXT, HKV, D) (or any tensor of MAXT·HKV·D values). Returns (1, 1, H, D).
 */
export function attentionAppend(e: Engine, qkv: Tensor, kCache: Tensor, vCache: Tensor, pos: number, s: AttnAppendShape, out?: Tensor): Tensor {
  const { H, HKV, D } = s;
  if (H % HKV !== 0 || D % 2 !== 0) throw new ShapeError(`attentionAppend: H ${H}, HKV ${HKV}, D ${D}`);
  if (qkv.numel !== (H + 2 * HKV) * D) throw new ShapeError(`attentionAppend: qkv ${qkv} for H ${H}, HKV ${HKV}, D ${D}`);
  const maxT = kCache.numel / (HKV * D);
  if (!Number.isInteger(maxT) || vCache.numel !== kCache.numel) throw new ShapeError(`attentionAppend: caches ${kCache} ${vCache}`);
  if (!Number.isInteger(pos) || pos < 0 || pos >= maxT) throw new ShapeError(`attentionAppend: position ${pos} outside the cache (${maxT})`);
  if (s.rope && s.rope.invFreq.length !== D / 2) throw new ShapeError(`attentionAppend: ${s.rope.invFreq.length} inverse frequencies for D = ${D}`);
  const y = out ?? e.empty([1, 1, H, D]);
  const WG = attnLanes(e, D);
  const key = `decode_attn_append.${H}.${HKV}.${D}.${WG}.${s.rope ? `${s.rope.interleaved}.${invFreqKey(s.rope.invFreq)}` : 'norope'}`;
  const p = e.pipeline(key, () => attnAppendWGSL({ H, HKV, D, WG, rope: !!s.rope, interleaved: s.rope?.interleaved ?? false, invFreq: s.rope?.invFreq ?? null }));
  e.dispatch(p, [qkv, kCache, vCache, y, e.uniform(new Uint32Array([pos, 0, 0, 0]))], [H]);
  return y;
}
