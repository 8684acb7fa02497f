// Composition root for the ML side: builds the services of src/services.ts from the GPU engine,
// the model layer and the COLA trainer. The engine is created on first use, so the server starts
// (and answers /healthz, auth, metadata) on a machine whose GPU is missing; requests that need the
// device then answer 503. A lost device is recreated on the next request.
import path from 'node:path';
import type { Config } from './config.ts';
import { DeviceLostError, NoGpuError, recreateDevice } from './gpu/context.ts';
import { Engine } from './gpu/engine.ts';
import { DeviceUnavailableError, type EngineHealth, type Services } from './services.ts';
import { createMlServices, type MlServices } from './model/service.ts';
import { GpuScheduler } from './gpu/scheduler.ts';
import { createJobRunner } from './cola/runner.ts';
import { MemoryReservations } from './gpu/reservations.ts';
import { createModelServices } from './cola/services.ts';
import type { JobRunner } from './services.ts';

interface Live {
  engine: Engine;
  /** The one owner of the device's time in this process (src/gpu/scheduler.ts). */
  sched: GpuScheduler;
  ml: MlServices;
  runner: JobRunner;
}

export function createServices(config: Config): { services: Services; engine: EngineHealth } {
  // Per process, across device re-creation: jobs running when the device is lost still hold theirs.
  const trainMemory = new MemoryReservations(config.trainMemoryBytes);
  let live: Promise<Live> | null = null;
  let lost = false;
  let current: Live | null = null; // for synchronous gauges
  const get = (): Promise<Live> =>
    (live ??= (async () => {
      if (lost) {
        await recreateDevice();
        lost = false;
      }
      const engine = await Engine.create({ memoryBudget: config.gpuMemoryBudgetBytes });
      const sched = new GpuScheduler(engine, { trainShare: config.trainShare });
      const ml = createMlServices(engine, sched, config.repoRoot, {
        maxLive: config.generateConcurrency,
        maxQueued: config.generateQueue,
        kvBytes: config.kvCacheBytes,
        prefillChunk: config.prefillChunk,
        modelCacheBytes: config.modelCacheBytes,
      });
      current = { engine, sched, ml, runner: createJobRunner(engine, config.repoRoot, sched, trainMemory) };
      return current;
    })().catch((err) => {
      live = null;
      if (err instanceof NoGpuError || err instanceof DeviceLostError) throw new DeviceUnavailableError(err.message);
      throw err;
    }));
  /** Runs fn on the live services; a device loss drops them so the next call recreates the device. */
  const use = async <T>(fn: (l: Live) => Promise<T>): Promise<T> => {
    const l = await get();
    try {
      return await fn(l);
    } catch (err) {
      if (err instanceof DeviceLostError || (err instanceof DeviceUnavailableError && l.engine.ctx.lost)) {
        l.ml.serving.clear();
        live = null;
        lost = true;
        throw new DeviceUnavailableError(`GPU device lost; it is being recreated: ${err.message}`);
      }
      throw err;
    }
  };
  const model = createModelServices({ repoRoot: config.repoRoot, exportDir: path.join(config.dataDir, 'exports') });
  const services: Services = {
    ...model,
    generation: {
      admissible: (tenant) => current?.ml.generation.admissible?.(tenant) ?? { ok: true },
      generate: (req, onToken) => use((l) => l.ml.generation.generate(req, onToken)),
    },
    evaluation: { evaluate: (req) => use((l) => l.ml.evaluation.evaluate(req)) },
    runner: { run: (job, ctx) => use((l) => l.runner.run(job, ctx)) },
  };
  const engine: EngineHealth = {
    async health() {
      try {
        const l = await get();
        if (l.engine.ctx.lost) return { ok: false, detail: `GPU device lost: ${l.engine.ctx.lost.message}` };
        return { ok: true };
      } catch (e) {
        return { ok: false, detail: e instanceof Error ? e.message : String(e) };
      }
    },
    memoryInUse: () => current?.engine.allocatedBytes ?? 0,
    load: () => (current ? { serving: current.ml.serving.stats(), scheduler: current.sched.stats(), bindGroups: { ...current.engine.bindGroupStats }, trainMemory: trainMemory.stats() } : null),
  };
  return { services, engine };
}
