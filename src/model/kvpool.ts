// A paged KV cache pool for one model shape (vLLM-style blocks of BS positions).
//
// Why blocks and not one slot per sequence sized to the model's context: a slot must hold the
// longest context the model allows (2,048–131,072 positions for current checkpoints) although most
// requests use a few hundred; with blocks a sequence holds ⌈(prompt + max_tokens) / BS⌉ blocks, so
// the same bytes serve many more concurrent sequences. Blocks are reserved for a sequence's whole
// length when it is admitted, so a running sequence never runs out of cache (no preemption): a
// request that does not fit waits for blocks to free up (or is refused by the admission queue).
//
// Layout: one tensor (L, NB, 2, BS, HKV·D); layer l's slab (NB, 2, BS, HKV, D) is a row view, bound
// by the paged kernels (src/gpu/kernels/paged.wgsl). Memory comes from the engine's budget.
import type { Engine, Tensor } from '../gpu/engine.ts';

export interface KvShape {
  L: number;
  HKV: number;
  D: number;
}

export const KV_BLOCK = 16;

export class KvPool {
  readonly tensor: Tensor;
  readonly blocks: number;
  private free: number[];
  private readonly slabs: Tensor[];

  constructor(
    readonly e: Engine,
    readonly shape: KvShape,
    /** Bytes to give the pool; rounded down to whole blocks (at least one). */
    bytes: number,
    readonly blockSize = KV_BLOCK,
  ) {
    const perBlock = KvPool.bytesPerBlock(shape, blockSize);
    this.blocks = Math.max(1, Math.floor(bytes / perBlock));
    // Each slab's byte offset must be a multiple of 256 to be bound as a view: NB·2·BS·HKV·D·4 is,
    // for BS = 16 and any HKV·D ≥ 2.
    const rowsPerLayer = this.blocks * 2 * blockSize;
    this.tensor = e.empty([shape.L * rowsPerLayer, shape.HKV * shape.D]);
    this.slabs = Array.from({ length: shape.L }, (_, l) => this.tensor.rows(l * rowsPerLayer, (l + 1) * rowsPerLayer));
    // Lowest ids first: the same request mix reuses the same blocks (stable bind groups, see engine).
    this.free = Array.from({ length: this.blocks }, (_, i) => this.blocks - 1 - i);
  }

  static bytesPerBlock(s: KvShape, blockSize = KV_BLOCK): number {
    return s.L * 2 * blockSize * s.HKV * s.D * 4;
  }

  /** Layer l's cache (NB·2·BS rows of HKV·D floats). */
  layer(l: number): Tensor {
    return this.slabs[l]!;
  }

  blocksFor(positions: number): number {
    return Math.ceil(positions / this.blockSize);
  }

  get freeBlocks(): number {
    return this.free.length;
  }

  /** n block ids, or null when fewer are free. */
  alloc(n: number): number[] | null {
    if (n > this.free.length) return null;
    return this.free.splice(this.free.length - n, n).reverse();
  }

  release(ids: number[]): void {
    for (const id of ids) this.free.push(id);
    this.free.sort((a, b) => b - a);
  }

  dispose(): void {
    this.tensor.free();
  }
}
