// Small helpers shared by the GPU op tests.
import { getGpu } from '../../src/gpu/context.ts';
import { Engine, type Tensor } from '../../src/gpu/engine.ts';
import { Rng } from '../../src/util/rng.ts';

let engine: Engine | null = null;
/**
 * One engine for the op tests of a process (pipelines are cached on it), renewed when the device
 * changed: bun runs all test files in one process, and the context test recreates the device.
 */
export async function testEngine(): Promise<Engine> {
  const ctx = await getGpu();
  if (!engine || engine.ctx !== ctx) engine = await Engine.create();
  return engine;
}

export async function readF64(e: Engine, t: Tensor): Promise<Float64Array> {
  return Float64Array.from(await e.read(t));
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

export function randn(rng: Rng, n: number, std = 1): Float32Array {
  return rng.normalArray(n, std);
}

export function bitsEqual(a: Float32Array | ArrayLike<number>, b: Float32Array | ArrayLike<number>): boolean {
  const x = new Uint32Array(Float32Array.from(a).buffer);
  const y = new Uint32Array(Float32Array.from(b).buffer);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}
