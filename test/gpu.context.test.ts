import { describe, expect, test } from 'bun:test';
import { getGpu, recreateDevice, destroyDeviceForTest, DeviceLostError } from '../src/gpu/context.ts';
import { Engine, MemoryBudgetError } from '../src/gpu/engine.ts';
import { add } from '../src/gpu/ops/elementwise.ts';

describe('gpu context', () => {
  test('one context per process, on globalThis', async () => {
    const a = await getGpu();
    const b = await getGpu();
    expect(a).toBe(b);
    expect((globalThis as any)[Symbol.for('cola.gpu.context')].ctx).toBe(a);
    expect(a.info.vendor.length + a.info.description.length).toBeGreaterThan(0);
    // Limits are the adapter's, not WebGPU's defaults.
    expect(a.limits.maxStorageBufferBindingSize).toBe(a.adapter.limits.maxStorageBufferBindingSize);
  });

  test('survives a forced GC while a long dispatch is awaited (Dawn lifetime regression)', async () => {
    const e = await Engine.create();
    const n = 1 << 20;
    const x = e.upload(new Float32Array(n).fill(1), [n]);
    let acc = e.upload(new Float32Array(n), [n]);
    for (let i = 0; i < 200; i++) {
      const next = add(e, acc, x);
      acc.free();
      acc = next;
    }
    e.flush();
    const done = e.device.queue.onSubmittedWorkDone();
    for (let i = 0; i < 5; i++) Bun.gc(true);
    await done;
    Bun.gc(true);
    const out = (await e.read(acc)) as Float32Array;
    expect(out[0]).toBe(200);
    expect(out[n - 1]).toBe(200);
  });

  test('memory budget: an allocation over budget throws a clear error', async () => {
    const e = await Engine.create({ memoryBudget: 1 << 20 });
    const t = e.empty([128 * 1024]); // 512 KiB
    expect(() => e.empty([256 * 1024])).toThrow(MemoryBudgetError);
    t.free();
    // A freed buffer is reused from the pool without counting twice.
    const u = e.empty([128 * 1024]);
    expect(e.allocatedBytes).toBe(512 * 1024);
    u.free();
    expect(() => e.empty([300 * 1024])).toThrow(/budget/); // 1.2 MiB: over even after the pool is trimmed
    expect(e.allocatedBytes).toBe(0);
  });

  test('device loss is reported as a clear error and the device can be recreated', async () => {
    const ctx = await getGpu();
    destroyDeviceForTest(ctx);
    await ctx.device.lost;
    await expect(getGpu()).rejects.toThrow(DeviceLostError);
    const fresh = await recreateDevice();
    expect(fresh.generation).toBe(ctx.generation + 1);
    expect(await getGpu()).toBe(fresh);
    const e = await Engine.create();
    const x = e.upload(new Float32Array([1, 2, 3]), [3]);
    expect(Array.from((await e.read(add(e, x, x))) as Float32Array)).toEqual([2, 4, 6]);
  });
});

describe('tensor views', () => {
  test('a reshape view frees its base once; a row slice never frees the base', async () => {
    const e = await Engine.create({ memoryBudget: 1 << 24 });
    const base = e.upload(new Float32Array(256 * 4).map((_, i) => i), [256, 4]);
    const v = base.view([4, 256]);
    v.free();
    expect(base.isFreed).toBe(true);
    base.free(); // no double return to the pool
    const t = e.upload(new Float32Array(256 * 4).map((_, i) => i), [256, 4]);
    const s = t.rows(64, 128); // 64 rows × 16 B = 1024 B offset: aligned
    expect(Array.from(((await e.read(s)) as Float32Array).slice(0, 3))).toEqual([256, 257, 258]);
    s.free();
    expect(t.isFreed).toBe(false);
    expect(() => t.rows(1, 2)).toThrow(/multiple of/);
  });
});

describe('uniform blocks', () => {
  test('a flush between taking a uniform block and dispatching it does not hand its slot to another dispatch', async () => {
    const e = await Engine.create();
    const p = e.pipeline('test.uniform', () => `
      struct U { v: u32, a: u32, b: u32, c: u32 }
      @group(0) @binding(0) var<storage, read_write> out: array<u32>;
      @group(0) @binding(1) var<uniform> u: U;
      @compute @workgroup_size(1) fn main() { out[0] = u.v; }`);
    const out1 = e.zeros([1], 'u32');
    const out2 = e.zeros([1], 'u32');
    const u1 = e.uniform(new Uint32Array([7, 0, 0, 0]));
    e.upload(new Uint32Array([1]), [1], 'u32'); // flushes, like a lazily created tensor would
    e.dispatch(p, [out2, e.uniform(new Uint32Array([9, 0, 0, 0]))], [1]);
    e.dispatch(p, [out1, u1], [1]);
    expect((await e.read(out1))[0]).toBe(7);
    expect((await e.read(out2))[0]).toBe(9);
  });
});
