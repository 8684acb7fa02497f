// The GPU memory budget is split between the resident-model cache, a KV pool, a margin and training
// (src/config.ts trainMemoryOf): defaults fit, and settings that cannot fit stop the server at startup.
import { describe, expect, test } from 'bun:test';
import { ConfigError, GPU_MEMORY_MARGIN_BYTES, loadConfig } from '../src/config.ts';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

function configError(env: Record<string, string>): string {
  try {
    loadConfig(env);
  } catch (e) {
    if (e instanceof ConfigError) return e.message;
    throw e;
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(env)}`);
}

describe('GPU memory budget shares', () => {
  test('defaults: training gets what the model cache, one KV pool and the margin leave of the budget', () => {
    const c = loadConfig({});
    expect(c.gpuMemoryBudgetBytes).toBe(2 * GiB);
    expect(c.trainMemoryBytes).toBe(2 * GiB - c.modelCacheBytes - c.kvCacheBytes - GPU_MEMORY_MARGIN_BYTES);
    expect(c.trainMemoryBytes + c.modelCacheBytes + c.kvCacheBytes).toBeLessThanOrEqual(c.gpuMemoryBudgetBytes);
    expect(c.trainMemoryBytes).toBeGreaterThan(512 * MiB);
  });

  test('the default follows the other settings', () => {
    const c = loadConfig({ COLA_GPU_MEMORY_BUDGET_BYTES: String(8 * GiB), COLA_MODEL_CACHE_BYTES: String(2 * GiB), COLA_KV_CACHE_BYTES: String(256 * MiB) });
    expect(c.trainMemoryBytes).toBe(8 * GiB - 2 * GiB - 256 * MiB - GPU_MEMORY_MARGIN_BYTES);
  });

  test('an explicit training memory that fits is kept', () => {
    expect(loadConfig({ COLA_TRAIN_MEMORY_BYTES: String(256 * MiB) }).trainMemoryBytes).toBe(256 * MiB);
    const exact = 2 * GiB - GiB - 64 * MiB - GPU_MEMORY_MARGIN_BYTES;
    expect(loadConfig({ COLA_TRAIN_MEMORY_BYTES: String(exact) }).trainMemoryBytes).toBe(exact);
  });

  test('an explicit training memory that does not fit beside the others is refused, naming the variables', () => {
    const m = configError({ COLA_TRAIN_MEMORY_BYTES: String(GiB) }); // the old default, budget/2
    expect(m).toContain('COLA_GPU_MEMORY_BUDGET_BYTES 2048 MiB (default)');
    expect(m).toContain('COLA_TRAIN_MEMORY_BYTES 1024 MiB');
    expect(m).toContain('COLA_MODEL_CACHE_BYTES 1024 MiB (default)');
    expect(m).toContain('COLA_KV_CACHE_BYTES 64 MiB (default)');
  });

  test('a budget that leaves nothing for training is refused', () => {
    const m = configError({ COLA_GPU_MEMORY_BUDGET_BYTES: String(GiB) });
    expect(m).toContain('COLA_GPU_MEMORY_BUDGET_BYTES 1024 MiB cannot hold');
    expect(m).toContain('leave memory for training');
    // Lowering the model cache makes room.
    expect(loadConfig({ COLA_GPU_MEMORY_BUDGET_BYTES: String(GiB), COLA_MODEL_CACHE_BYTES: String(256 * MiB) }).trainMemoryBytes).toBe(GiB - 256 * MiB - 64 * MiB - GPU_MEMORY_MARGIN_BYTES);
  });
});
