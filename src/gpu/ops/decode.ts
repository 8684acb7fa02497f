// One-dispatch decode step for small Llama models (see ../kernels/decode_llama.ts for why).
import { ShapeError, type Engine, type Tensor } from '../engine.ts';
import { decodeLlamaWGSL, invFreqKey, packedLayout, type DecodeSpec, type PackedLayout } from '../kernels/decode_llama.ts';
import { decodeLlamaBatchWGSL } from '../kernels/decode_llama_batch.ts';

export type { DecodeSpec, PackedLayout };
export { packedLayout };

/** Parameters (floats) up to which one workgroup decodes faster than the layer-by-layer path. */
export const FUSED_DECODE_MAX_PARAMS = 2_000_000;

/** Workgroup memory the fused kernel needs (bytes). */
export function fusedDecodeWorkgroupBytes(s: DecodeSpec): number {
  return 4 * (2 * s.D + 2 * s.H * s.DH + s.F + s.H * s.MAXT + Math.max(s.WG, s.H));
}

/** Whether this device and these sizes can run the fused kernel (vec4 rows need multiples of 4). */
export function canFuseDecode(e: Engine, s: DecodeSpec, lay: PackedLayout): boolean {
  const m4 = (x: number) => x % 4 === 0;
  return (
    lay.params <= FUSED_DECODE_MAX_PARAMS &&
    lay.total * 4 <= e.limits.maxStorageBufferBindingSize &&
    m4(s.D) && m4(s.F) && m4(s.H * s.DH) && m4(s.HKV * s.DH) && s.DH % 2 === 0 && s.H % s.HKV === 0 &&
    fusedDecodeWorkgroupBytes(s) <= e.limits.maxComputeWorkgroupStorageSize &&
    s.WG <= e.limits.maxComputeInvocationsPerWorkgroup
  );
}

/**
 * Records one decode step: token at position `pos` (its k/v are written at cache row pos), reading
 * cache rows 0..pos; writes logits (V).
 */
export function fusedDecodeStep(e: Engine, s: DecodeSpec, lay: PackedLayout, packed: Tensor, kv: Tensor, logits: Tensor, token: number, pos: number, cacheT: number): void {
  if (!(cacheT >= 1 && cacheT <= s.MAXT)) throw new ShapeError(`fusedDecodeStep: cache length ${cacheT} over the kernel's capacity ${s.MAXT}`);
  if (!(pos >= 0 && pos < cacheT)) throw new ShapeError(`fusedDecodeStep: position ${pos} outside the cache (${cacheT})`);
  if (kv.numel !== s.L * 2 * cacheT * s.HKV * s.DH || logits.numel !== s.V || packed.numel !== lay.total) throw new ShapeError('fusedDecodeStep: buffer sizes do not match the spec');
  // One pipeline per model: the cache length and positions are uniform values.
  const key = `decode_llama.${s.D}.${s.L}.${s.H}.${s.HKV}.${s.DH}.${s.F}.${s.V}.${s.MAXT}.${s.EPS}.${invFreqKey(s.INV_FREQ)}.${s.INTERLEAVED}.${s.WG}.${lay.cls === lay.emb}.${lay.half ?? 'f32'}`;
  const p = e.pipeline(key, () => decodeLlamaWGSL(s, lay));
  e.dispatch(p, [packed, packed, kv, logits, e.uniform(new Uint32Array([token, pos, s.L, cacheT, s.D, s.H * s.DH, s.F, 0]))], [1]);
}

// ---------------------------------------------------------------- batched (continuous batching)

/**
 * Sequences per workgroup for M decode rows. Two variants only: compiling one costs seconds on
 * lavapipe with a cold shader cache (measured under load: G = 1 7 s, 2 11–18 s, 4 39 s, 8 49–67 s),
 * and G = 4 already pays the weight loads once per 4 tokens. M ≤ 2 runs one workgroup (one CPU
 * thread) per sequence.
 */
export function batchGroupSize(M: number): 1 | 4 {
  return M <= 2 ? 1 : 4;
}

/** Workgroup memory of the batched kernel for G sequences (bytes). */
export function fusedBatchWorkgroupBytes(s: DecodeSpec, G: number): number {
  return 4 * G * (2 * s.D + 2 * s.H * s.DH + s.F + s.WG + 1 + 4);
}

/** Whether the batched kernel can serve this model with groups of up to 8 sequences. */
export function canFuseDecodeBatch(e: Engine, s: DecodeSpec, lay: PackedLayout): boolean {
  return canFuseDecode(e, s, lay) && s.DH <= 128 && fusedBatchWorkgroupBytes(s, 8) <= e.limits.maxComputeWorkgroupStorageSize;
}

/**
 * Records one decode iteration of M sequences over the paged cache: `seqs` (M, 4) u32 = (token,
 * position, table row, 0); k/v of each token are written at its position; logits (M, V).
 */
export function fusedDecodeBatch(
  e: Engine, s: DecodeSpec, lay: PackedLayout, packed: Tensor,
  pool: Tensor /* (L·NB·2·BS, HKV·DH) */, nb: number, BS: number, MAXB: number,
  seqs: Tensor, tables: Tensor, logits: Tensor, M: number,
): void {
  if (pool.numel !== s.L * nb * 2 * BS * s.HKV * s.DH) throw new ShapeError(`fusedDecodeBatch: pool ${pool} is not (L·${nb}·2·${BS}, ${s.HKV * s.DH})`);
  if (seqs.numel < 4 * M || logits.numel < M * s.V || packed.numel !== lay.total) throw new ShapeError('fusedDecodeBatch: buffer sizes do not match');
  const G = batchGroupSize(M);
  const key = `decode_llama_batch.${G}.${BS}.${MAXB}.${s.D}.${s.L}.${s.H}.${s.HKV}.${s.DH}.${s.F}.${s.V}.${s.EPS}.${invFreqKey(s.INV_FREQ)}.${s.INTERLEAVED}.${s.WG}.${lay.cls === lay.emb}.${lay.half ?? 'f32'}`;
  const p = e.pipeline(key, () => decodeLlamaBatchWGSL(s, lay, G, BS, MAXB));
  const u = new Uint32Array([0, M, s.L, nb, s.D / 4, (s.H * s.DH) / 4, s.F / 4, G]);
  e.dispatch(p, [packed, packed, pool, seqs, tables, logits, e.uniform(u)], [Math.ceil(M / G)]);
}
