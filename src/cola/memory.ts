// Device memory of a training run, estimated before it starts: at admission (a run that could never
// fit this server's training memory is refused with 400) and by the runner, which reserves it
// before uploading anything (src/gpu/reservations.ts). Jobs running side by side then never meet
// the engine's budget mid-run, where a MemoryBudgetError would fail a job after minutes of work.
//
// The estimate is an upper bound of the engine's peak bytes for a run (pool size classes
// included), checked against measured peaks in test/cola.memory.test.ts:
//   weights (as stored on the device)
//   + LoRA per adapted module: rank·(in + out) floats × 4 (parameters, gradients, Adam m and v)
//   + per token of a batch (B·T): 2V (logits and their gradient)
//       + L·(12·D + 3·F + 2·(Dq + 2·Dkv) + 2·r·modules)  (saved activations and their gradients)
//   all in f32, plus a quarter for the pool's size classes and 4 MiB of small buffers.
import type { ModelConfig } from '../model/config.ts';
import { expectedTensors } from '../model/weights.ts';
import { archConfigOf } from './lora.ts';
import { resolveTargets } from './modules.ts';

export interface TrainingShape {
  batchSize: number;
  maxSeqLen: number;
  /** Adapted module short names (lora.targets resolved). */
  targets: readonly string[];
  /** The largest rank of any link. */
  maxRank: number;
}

/** Bytes of the model's weights in f32 (what an upload of an f32 checkpoint holds). */
export function weightBytesF32(c: ModelConfig): number {
  let n = 0;
  for (const shape of expectedTensors(c).values()) n += shape.reduce((a, b) => a * b, 1);
  return 4 * n;
}

/** Upper bound of the device bytes a training run of `s` on a model `c` holds at its peak. */
export function trainingDeviceBytes(c: ModelConfig, s: TrainingShape, weightBytes = weightBytesF32(c)): number {
  const mods = resolveTargets(archConfigOf(c), s.targets);
  const loraFloats = c.nLayers * mods.reduce((a, m) => a + s.maxRank * (m.in + m.out), 0);
  const Dq = c.nHeads * c.headDim;
  const Dkv = c.nKvHeads * c.headDim;
  const perToken = 2 * c.vocabSize + c.nLayers * (12 * c.dim + 3 * c.hiddenDim + 2 * (Dq + 2 * Dkv) + 2 * s.maxRank * mods.length);
  const tokens = s.batchSize * s.maxSeqLen;
  const floats = 4 * loraFloats + tokens * perToken;
  return Math.ceil(weightBytes + 1.25 * 4 * floats + 4 * 1024 * 1024);
}
