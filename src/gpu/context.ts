// The one GPU context of this process.
//
// Dawn's async machinery keeps only a raw pointer to the object returned by `create()`; if that
// object (or the device) is garbage-collected while work is pending the process segfaults. So the
// context lives on `globalThis` under a `Symbol.for` key for the life of the process, and every
// module gets the device from here (the `webgpu` package's Dawn bindings do not keep that object
// alive for their callbacks).
import { create, globals } from 'webgpu';

const KEY = Symbol.for('cola.gpu.context');

export class DeviceLostError extends Error {
  override name = 'DeviceLostError';
  constructor(readonly reason: string, message: string) {
    super(`GPU device lost (${reason}): ${message}. Call recreateDevice() to continue.`);
  }
}

export class NoGpuError extends Error {
  override name = 'NoGpuError';
}

export interface GpuFeatures {
  f16: boolean; // 'shader-f16': f16 arithmetic and storage in WGSL
  subgroups: boolean; // 'subgroups': subgroupBroadcast/Add etc.
}

export interface GpuInfo {
  vendor: string;
  architecture: string;
  description: string;
  isFallbackAdapter: boolean;
  /** True for CPU drivers (lavapipe, SwiftShader): kernels pick CPU-friendly tilings. */
  isSoftware: boolean;
  subgroupMinSize: number;
  subgroupMaxSize: number;
}

export interface GpuContext {
  readonly gpu: GPU;
  adapter: GPUAdapter;
  device: GPUDevice;
  features: GpuFeatures;
  info: GpuInfo;
  limits: GPUSupportedLimits;
  /** Incremented on every (re)creation; engines compare it to drop stale pipelines and buffers. */
  generation: number;
  lost: GPUDeviceLostInfo | null;
}

type Holder = { ctx?: GpuContext; pending?: Promise<GpuContext>; gpu?: GPU };

function holder(): Holder {
  const g = globalThis as unknown as Record<symbol, Holder>;
  return (g[KEY] ??= {});
}

// Limits worth raising from the WebGPU defaults to what the adapter allows.
const RAISED_LIMITS = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBuffersPerShaderStage',
] as const;

async function createContext(h: Holder, generation: number): Promise<GpuContext> {
  if (!h.gpu) {
    Object.assign(globalThis, globals);
    h.gpu = create([]) as unknown as GPU;
  }
  const gpu = h.gpu;
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) {
    throw new NoGpuError(
      'No WebGPU adapter found. Without a GPU install a CPU Vulkan driver: Mesa >= 25 lavapipe ' +
        '(Debian 12: mesa-vulkan-drivers from bookworm-backports; see README).',
    );
  }
  const wanted: GPUFeatureName[] = [];
  const f16 = adapter.features.has('shader-f16');
  const subgroups = adapter.features.has('subgroups');
  if (f16) wanted.push('shader-f16');
  if (subgroups) wanted.push('subgroups' as GPUFeatureName);
  if (adapter.features.has('timestamp-query')) wanted.push('timestamp-query');
  const requiredLimits: Record<string, number> = {};
  for (const k of RAISED_LIMITS) requiredLimits[k] = (adapter.limits as unknown as Record<string, number>)[k]!;
  const device = await adapter.requestDevice({ requiredFeatures: wanted, requiredLimits });
  const ai = adapter.info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number; isFallbackAdapter?: boolean };
  const info: GpuInfo = {
    vendor: ai.vendor,
    architecture: ai.architecture,
    description: ai.description,
    isFallbackAdapter: !!ai.isFallbackAdapter,
    isSoftware: !!ai.isFallbackAdapter || /llvmpipe|lavapipe|swiftshader|software/i.test(`${ai.architecture} ${ai.description}`),
    subgroupMinSize: ai.subgroupMinSize ?? 0,
    subgroupMaxSize: ai.subgroupMaxSize ?? 0,
  };
  const ctx: GpuContext = {
    gpu,
    adapter,
    device,
    features: { f16, subgroups },
    info,
    limits: device.limits,
    generation,
    lost: null,
  };
  device.lost.then((lost) => {
    // A deliberate destroy() during recreateDevice() is not a loss to report.
    if (h.ctx === ctx) ctx.lost = lost;
  });
  return ctx;
}

/** The process's GPU context, created on first use. Throws NoGpuError when there is no adapter. */
export async function getGpu(): Promise<GpuContext> {
  const h = holder();
  if (h.ctx) {
    if (h.ctx.lost) throw new DeviceLostError(h.ctx.lost.reason, h.ctx.lost.message);
    return h.ctx;
  }
  h.pending ??= createContext(h, 1).then(
    (ctx) => ((h.ctx = ctx), (h.pending = undefined), ctx),
    (err) => {
      h.pending = undefined;
      throw err;
    },
  );
  return h.pending;
}

/** Throws DeviceLostError if the device has been lost since it was handed out. */
export function checkDevice(ctx: GpuContext): void {
  if (ctx.lost) throw new DeviceLostError(ctx.lost.reason, ctx.lost.message);
}

/**
 * Destroys the current device (if any) and creates a new one on the same Dawn instance.
 * Everything allocated on the old device (tensors, pipelines) is gone; engines rebuild lazily.
 */
export async function recreateDevice(): Promise<GpuContext> {
  const h = holder();
  const old = h.ctx;
  h.ctx = undefined;
  if (old && !old.lost) old.device.destroy();
  const ctx = await createContext(h, (old?.generation ?? 0) + 1);
  h.ctx = ctx;
  return ctx;
}

/** For tests: simulate a loss by destroying the device (Dawn reports reason 'destroyed'). */
export function destroyDeviceForTest(ctx: GpuContext): void {
  ctx.device.destroy();
}
