// POST /finetune through an in-process app with the real model services, the real COLA runner
// on the WebGPU device (lavapipe is fine) and a worker on PGlite:
// - admission refuses what the runner cannot do with 400 and the field's path (no job, no model);
// - a job that fails before its first knot leaves no empty output model;
// - init_adapter from an uploaded adapter (stored as a folder) starts the first link from its A, B
//   with the adapter's own scale (lora_alpha/√r with use_rslora), not the request's alpha;
// - a crash after a requested knot (POST /merge {job}) resumes with the same link numbers and the
//   same sha256 for every version as an uninterrupted run.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, spyOn, test } from 'bun:test';
import { sql } from 'drizzle-orm';
import { makePglite, type TestDb } from './db.fixtures.ts';
import { stories260kAdapter, serveWithWorker } from './service.fixtures.ts';
import { loadConfig } from '../src/config.ts';
import { createTenant } from '../src/db/repos/tenants.ts';
import { registerBaseModel } from '../src/main.ts';
import { createModelServices } from '../src/cola/services.ts';
import { createJobRunner } from '../src/cola/runner.ts';
import { archConfigOf } from '../src/cola/lora.ts';
import { encodePeftWeights, unpackAdapter, type AdapterWeights } from '../src/cola/peft.ts';
import { StaleLeaseError } from '../src/jobs/transitions.ts';
import { jobEvents, jobs } from '../src/db/schema.ts';
import { OPTIMIZER_STATE_FILE, unpackExtra } from '../src/cola/peft.ts';
import { Engine } from '../src/gpu/engine.ts';
import { GpuScheduler } from '../src/gpu/scheduler.ts';
import { MemoryReservations } from '../src/gpu/reservations.ts';
import { loadBundledModel } from '../src/model/registry.ts';
import * as versions from '../src/model/versions.ts';
import { parseSafetensors, toFloat32 } from '../src/model/safetensors.ts';
import type { JobContext, JobRunner, Services } from '../src/services.ts';
import { Rng } from '../src/util/rng.ts';
import { Store } from '../src/store/store.ts';

const STORIES = [{ text: 'Lily liked to play in the park.' }, { text: 'Tom had a big red ball.' }, { prompt: 'The sun', completion: ' was warm and bright.' }];

let T: TestDb;
let srv: ReturnType<typeof serveWithWorker>;
let url: string;
let key: string;
let real: JobRunner;
/** The real runner with a training-memory budget that a test can hold full (jobs then wait in it). */
let reserving: JobRunner;
const trainMemory = new MemoryReservations(2 ** 40);
/** How the next run behaves: the real runner, possibly with a knot requested at the first link's start, a crash, or a failure. */
let mode: { mergeAtStart?: boolean; dieAfterKnots?: number; fail?: boolean; reserving?: boolean } = {};
let lastRun: Promise<unknown> = Promise.resolve();
const h = () => ({ authorization: `Bearer ${key}`, 'content-type': 'application/json' });

/** The real runner, with the test's interventions on the job context. */
const runner: JobRunner = {
  run(spec, ctx) {
    const m = mode;
    let knots = 0;
    const dead = () => m.dieAfterKnots !== undefined && knots >= m.dieAfterKnots;
    // A dead process writes nothing more: every later write fails as a fenced-out worker's would.
    const guard = <A extends unknown[], R>(f: (...a: A) => Promise<R>) => async (...a: A): Promise<R> => {
      if (dead()) throw new StaleLeaseError(spec.id, -1);
      return f(...a);
    };
    const wrapped: JobContext = {
      ...ctx,
      resumeFrom: ctx.resumeFrom,
      onStep: guard(ctx.onStep),
      onEval: guard(ctx.onEval),
      onLinkStarted: guard(async (e) => {
        await ctx.onLinkStarted(e);
        // What POST /merge {job} does: count a merge-now request on the running job.
        if (m.mergeAtStart && e.link === 0 && !ctx.resumeFrom) await T.database.db.update(jobs).set({ mergeRequests: sql`${jobs.mergeRequests} + 1` }).where(sql`${jobs.id} = ${spec.id}`);
      }),
      onKnot: guard(async (k) => {
        const r = await ctx.onKnot(k);
        knots++;
        return r;
      }),
    };
    const p = m.fail ? Promise.reject(new Error('boom: the trainer failed')) : (m.reserving ? reserving : real).run(spec, wrapped);
    lastRun = p.catch(() => {});
    return p;
  },
};

async function waitJob(id: string, pred: (j: any) => boolean, ms = 120_000): Promise<any> {
  const end = Date.now() + ms;
  let j: any;
  while (Date.now() < end) {
    j = await (await fetch(`${url}/finetune/${id}`, { headers: h() })).json();
    if (pred(j)) return j;
    await Bun.sleep(100);
  }
  throw new Error(`timed out waiting for job ${id}: ${JSON.stringify(j)}`);
}
const finished = (j: any) => j.status !== 'queued' && j.status !== 'running';

async function post(body: object): Promise<Response> {
  return fetch(`${url}/finetune`, { method: 'POST', headers: h(), body: JSON.stringify(body) });
}

async function upload(config: object | string, weights: Uint8Array): Promise<string> {
  const form = new FormData();
  form.append('adapter_config.json', typeof config === 'string' ? config : JSON.stringify(config));
  form.append('adapter_model.safetensors', new Blob([weights]), 'adapter_model.safetensors');
  const r = await fetch(`${url}/adapters`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: form });
  if (r.status !== 201) throw new Error(`upload answered ${r.status}: ${await r.text()}`);
  return ((await r.json()) as { id: string }).id;
}

async function tensorsOf(model: string, version: number): Promise<Map<string, Float32Array>> {
  const r = await fetch(`${url}/models/${model}/versions/${version}/weights`, { headers: h() });
  expect(r.status).toBe(200);
  const p = parseSafetensors(new Uint8Array(await r.arrayBuffer()));
  return new Map([...p.tensors].map(([k, t]) => [k, toFloat32(t, { copy: true })]));
}

beforeAll(async () => {
  T = await makePglite();
  const config = loadConfig({ COLA_DATA_DIR: T.dataDir, COLA_QUOTA_RPM: '100000', COLA_QUOTA_CONCURRENT_JOBS: '100' });
  key = (await createTenant(T.database.db, { name: 'ft' })).apiKey;
  await registerBaseModel(T.database.db, config, () => {});
  {
    const eng = await Engine.create();
    const sched = new GpuScheduler(eng, { trainShare: 0.3 });
    real = createJobRunner(eng, config.repoRoot, sched);
    reserving = createJobRunner(eng, config.repoRoot, sched, trainMemory);
  }
  const services: Services = { ...createModelServices({ repoRoot: config.repoRoot, exportDir: path.join(T.dataDir, 'exports') }), runner };
  srv = serveWithWorker({ config, db: T.database, services, store: new Store(path.join(T.dataDir, 'store')), runner });
  url = srv.url;
}, 60_000);
afterAll(async () => {
  await srv?.stop();
  await T?.cleanup();
});

describe('admission', () => {
  // 3 examples, batch 1, 1 epoch: 3 steps.
  const ok = { model: 'stories260K', train: STORIES, epochs: 1, batch_size: 1, max_seq_len: 32 };
  const cases: [string, object, number, string][] = [
    ['max_steps (not implemented)', { max_steps: 2 }, 400, 'max_steps'],
    ['LoRA dropout (not implemented)', { lora: { dropout: 0.1 } }, 400, 'lora.dropout'],
    ['a target the model does not have', { lora: { targets: ['q', 'c_attn'] } }, 400, 'lora.targets[1]'],
    ['a LoRA bias on a model without biases', { lora: { bias: true } }, 400, 'lora.bias'],
    ['per-link steps that do not add up to the run', { chain: { links: [{ steps: 2, rank: 8 }, { steps: 2, rank: 4 }] } }, 400, 'chain.links'],
    ['more links than steps', { chain: { links: 4 } }, 400, 'chain.links'],
    ['a knot at or after the last step', { chain: { knots: [1, 3] } }, 400, 'chain.knots[1]'],
    ['init_adapter of another rank than the first link', { init_adapter: 'ADAPTER', lora: { rank: 4 } }, 400, 'init_adapter'],
    ['init_adapter on modules outside lora.targets', { init_adapter: 'ADAPTER', lora: { rank: 1, targets: ['v'] } }, 400, 'init_adapter'],
    ['an output model named like a shared one', { output_model: 'stories260K' }, 409, 'output_model'],
    ['automatic knots with no room for a knot', { chain: { auto: { min_link_steps: 2 } } }, 400, 'chain.auto.min_link_steps'],
    ['a partial optimizer reset across ranks (step-down)', { optimizer: { reset_keep: 0.1 }, chain: { links: [{ steps: 2, rank: 8 }, { steps: 1, rank: 4 }] } }, 400, 'optimizer.reset_keep'],
    ['reset_keep 1 (keeps everything)', { optimizer: { reset_keep: 1 } }, 400, 'optimizer.reset_keep'],
    ['a knot re-warm-up longer than the run', { schedule: { knot_warmup_steps: 4 } }, 400, 'schedule.knot_warmup_steps'],
    // 256 × 512 tokens a step need ~5.6 GiB of activations; training gets 832 MiB of the default 2 GiB budget (src/config.ts).
    ['a batch that needs more device memory than training may reserve', { batch_size: 256, max_seq_len: 512, chain: { links: 1 } }, 400, 'batch_size'],
  ];
  for (const [name, over, status, at] of cases) test(`${name} → ${status} at ${at}, no job and no model`, async () => {
    const adapter = await upload(stories260kAdapter().config, stories260kAdapter().weights); // rank 1, q_proj
    const body = JSON.parse(JSON.stringify({ ...ok, ...over, output_model: 'adm-out', ...('output_model' in over ? { output_model: over.output_model } : {}) }).replace('"ADAPTER"', JSON.stringify(adapter)));
    const before = ((await (await fetch(`${url}/finetune`, { headers: h() })).json()) as any).data.length;
    const r = await post(body);
    expect(r.status).toBe(status);
    expect(r.headers.get('content-type')).toContain('application/problem+json');
    const p = (await r.json()) as any;
    expect(p.errors.map((e: any) => e.path)).toEqual([at]);
    expect(((await (await fetch(`${url}/finetune`, { headers: h() })).json()) as any).data.length).toBe(before);
    expect((await fetch(`${url}/models/adm-out`, { headers: h() })).status).toBe(404);
  });

  test('the same request without the defect is accepted (the cases differ by one field)', async () => {
    mode = { fail: true };
    const adapter = await upload(stories260kAdapter().config, stories260kAdapter().weights);
    const r = await post({ ...ok, output_model: 'adm-ok', lora: { rank: 1, targets: ['q', 'v'] }, chain: { links: [{ steps: 2, rank: 1 }, { steps: 1, rank: 1 }] }, init_adapter: adapter });
    expect(r.status).toBe(202);
    await waitJob(((await r.json()) as any).id, finished);
    await lastRun;
  });

  test('a job that fails before its first knot leaves no empty output model', async () => {
    mode = { fail: true };
    const r = await post({ ...ok, output_model: 'never-made' });
    expect(r.status).toBe(202);
    const j = await waitJob(((await r.json()) as any).id, finished);
    expect(j.status).toBe('failed');
    expect(j.output_model).toBe('never-made');
    expect((await fetch(`${url}/models/never-made`, { headers: h() })).status).toBe(404);
    const names = ((await (await fetch(`${url}/models`, { headers: h() })).json()) as any).data.map((m: any) => m.name);
    expect(names).not.toContain('never-made');
  });
});

describe('training memory', () => {
  test('a job waiting for training memory behind a full budget has loaded nothing, and is cancelled through POST /finetune/{id}/cancel', async () => {
    mode = { reserving: true };
    const hold = await trainMemory.reserve(trainMemory.capacity); // the budget is full
    const loads = spyOn(versions, 'loadVersion'); // the runner's only load of the base weights
    try {
      const r = await post({ model: 'stories260K', train: STORIES, epochs: 1, batch_size: 1, max_seq_len: 32, output_model: 'waits' });
      expect(r.status).toBe(202);
      const id = ((await r.json()) as any).id;
      await waitJob(id, (j) => j.status === 'running');
      for (let i = 0; i < 600 && trainMemory.stats().waiting === 0; i++) await Bun.sleep(50);
      expect(trainMemory.stats().waiting).toBe(1);
      expect(loads).not.toHaveBeenCalled(); // the base weights are loaded only once the memory is granted
      const c = await fetch(`${url}/finetune/${id}/cancel`, { method: 'POST', headers: h() });
      expect(c.status).toBeLessThan(300);
      // The cancel reaches the worker with its next heartbeat (COLA_HEARTBEAT_MS, 5 s); before the
      // fix the job waited until the budget freed, here never.
      const j = await waitJob(id, finished, 60_000);
      expect(j.status).toBe('cancelled');
      expect(j.knots).toEqual([]);
      expect(trainMemory.stats()).toMatchObject({ waiting: 0, reserved: trainMemory.capacity });
      await lastRun;
      expect(loads).not.toHaveBeenCalled();
    } finally {
      loads.mockRestore();
      hold();
    }
    expect(trainMemory.stats()).toMatchObject({ waiting: 0, reserved: 0 });
  }, 120_000);
});

describe('init_adapter', () => {
  test('an uploaded adapter (a folder) is where the first link starts, at its own rsLoRA scale', async () => {
    mode = {};
    const base = loadBundledModel().weights;
    const arch = archConfigOf(base.config);
    const rng = new Rng(5);
    const r = 2;
    const w: AdapterWeights = { rank: r, alpha: 4, rslora: true, modules: new Map() };
    for (let l = 0; l < base.config.nLayers; l++) {
      for (const [short, out] of [['q', 64], ['v', 32]] as const) w.modules.set(`${l}.${short}`, { in: 64, out, a: rng.normalArray(r * 64, 0.1), b: rng.normalArray(out * r, 0.1) });
    }
    const id = await upload({ peft_type: 'LORA', r, lora_alpha: 4, use_rslora: true, target_modules: ['q_proj', 'v_proj'], bias: 'none' }, encodePeftWeights(arch, w));
    // lr 1e-9: one step moves A and B by ~1e-9, so the knot is the adapter merged, W + s·B·A.
    const body = { model: 'stories260K', train: STORIES.slice(0, 2), epochs: 1, batch_size: 2, max_seq_len: 32, chain: { links: 1 }, lora: { rank: r, alpha: 16, targets: ['q', 'v'] }, optimizer: { lr: 1e-9 } };
    const res = await post({ ...body, output_model: 'init-out', init_adapter: id });
    expect(res.status).toBe(202);
    const j = await waitJob(((await res.json()) as any).id, finished);
    if (j.status !== 'succeeded') throw new Error(`job ${j.status}: ${JSON.stringify(j.error)}`);
    expect(j.knots.map((k: any) => [k.link, k.version, k.rank])).toEqual([[0, 1, r]]);
    const before = await tensorsOf('stories260K', 0);
    const after = await tensorsOf('init-out', 1);
    const worst = (scale: number) => {
      let m = 0;
      for (const [key, mod] of w.modules) {
        const [l, short] = key.split('.') as [string, string];
        const name = `model.layers.${l}.self_attn.${short}_proj.weight`;
        const W0 = before.get(name)!;
        const W1 = after.get(name)!;
        for (let o = 0; o < mod.out; o++) {
          for (let i = 0; i < mod.in; i++) {
            let ba = 0;
            for (let k = 0; k < r; k++) ba += mod.b[o * r + k]! * mod.a[k * mod.in + i]!;
            m = Math.max(m, Math.abs(W1[o * mod.in + i]! - (W0[o * mod.in + i]! + scale * ba)));
          }
        }
      }
      return m;
    };
    // f32 merge on the GPU of |s·B·A| ≲ 0.2 onto |W| ≲ 1: rounding ~1e-7; training moved it ~1e-9.
    expect(worst(4 / Math.sqrt(r))).toBeLessThan(1e-5);
    // ...and neither alpha/r nor the request's alpha would give these weights (the test can fail).
    expect(worst(4 / r)).toBeGreaterThan(1e-2);
    expect(worst(16 / r)).toBeGreaterThan(1e-2);
    // The knot's adapter says how to scale it.
    const zip = new Uint8Array(await (await fetch(`${url}/models/init-out/versions/1/adapter`, { headers: h() })).arrayBuffer());
    expect(unpackAdapter(zip).config).toMatchObject({ r, lora_alpha: 4, use_rslora: true });
    // The loss of the first step is the adapted model's, not the base model's.
    const plain = await post({ ...body, output_model: 'no-init-out' });
    const pj = await waitJob(((await plain.json()) as any).id, finished);
    expect(pj.status).toBe('succeeded');
    expect(Math.abs(j.losses[0].loss - pj.losses[0].loss)).toBeGreaterThan(1e-3);
  }, 180_000);
});

describe('resume after a requested knot', () => {
  test('a crash after the knot that follows POST /merge {job} resumes with the same links and versions', async () => {
    // 3 examples, batch 1, 3 epochs: 9 steps in 3 links; a knot is requested at step 1.
    const body = { model: 'stories260K', train: STORIES, epochs: 3, batch_size: 1, max_seq_len: 32, chain: { links: 3 }, seed: 4 };
    mode = { mergeAtStart: true, dieAfterKnots: 2 };
    const c = await post({ ...body, output_model: 'crashy' });
    expect(c.status).toBe(202);
    const id = ((await c.json()) as any).id;
    await waitJob(id, (j) => j.knots.length >= 2);
    await lastRun; // the "dead" run has stopped writing
    const mid = await waitJob(id, () => true);
    expect(mid.status).toBe('running');
    expect(mid.knots.map((k: any) => [k.link, k.step])).toEqual([[0, 1], [1, 3]]);
    // Its lease runs out; another worker takes the job over and resumes from the last knot.
    mode = {};
    await T.database.db.update(jobs).set({ leaseExpiresAt: sql`now() - interval '1 second'` }).where(sql`${jobs.id} = ${id}`);
    expect(await srv.worker.reclaimOnce()).toBe(1);
    const a = await waitJob(id, finished);
    expect(a.status).toBe('succeeded');
    expect(a.attempts).toBe(2);
    // The same request with the same knot request, uninterrupted.
    mode = { mergeAtStart: true };
    const u = await post({ ...body, output_model: 'calm' });
    const b = await waitJob(((await u.json()) as any).id, finished);
    expect(b.status).toBe('succeeded');
    expect(b.knots.map((k: any) => [k.link, k.step])).toEqual([[0, 1], [1, 3], [2, 6], [3, 9]]);
    expect(a.knots.map((k: any) => [k.link, k.step, k.version])).toEqual(b.knots.map((k: any) => [k.link, k.step, k.version]));
    const shas = async (m: string) => (((await (await fetch(`${url}/models/${m}`, { headers: h() })).json()) as any).versions as any[]).map((v) => v.sha256);
    const sa = await shas('crashy');
    expect(sa).toEqual(await shas('calm'));
    expect(new Set(sa).size).toBe(4);
  }, 240_000);
});

describe('automatic knots and a partial optimizer reset', () => {
  test('decisions are job events; a crash after the first automatic knot resumes to the same sha256s as an uninterrupted run and as a rerun', async () => {
    // 3 examples, batch 1, 6 epochs: 18 steps; knots where the loss-improvement rate says, each link ≥ 4 steps.
    const body = {
      model: 'stories260K', train: STORIES, epochs: 6, batch_size: 1, max_seq_len: 32, seed: 5,
      chain: { auto: { min_link_steps: 4, max_links: 3, threshold: 0.5, ema: 0.5, window: 2 } },
      optimizer: { lr: 5e-3, reset_keep: 0.2 }, schedule: { knot_warmup_steps: 2 },
    };
    mode = {};
    const u = await post({ ...body, output_model: 'auto-calm' });
    expect(u.status).toBe(202);
    const uid = ((await u.json()) as any).id;
    const b = await waitJob(uid, finished);
    expect(b.status).toBe('succeeded');
    expect(b.knots.length).toBeGreaterThanOrEqual(2);
    const decisions = (await T.database.db.select().from(jobEvents).where(sql`${jobEvents.jobId} = ${uid} and ${jobEvents.type} = 'knot_decision'`)).map((r) => r.data as any);
    const ties = decisions.filter((d) => d.decision === 'tie');
    expect(ties.map((d) => d.step)).toEqual(b.knots.slice(0, -1).map((k: any) => k.step));
    for (const d of ties) expect(d.rate).toBeLessThanOrEqual(d.threshold * d.initial_rate);
    // The knot ZIPs before the last carry the kept optimizer state; the last one does not.
    const zips = await Promise.all(b.knots.map(async (k: any) => new Uint8Array(await (await fetch(`${url}/models/auto-calm/versions/${k.version}/adapter`, { headers: h() })).arrayBuffer())));
    expect(zips.map((z) => unpackExtra(z, OPTIMIZER_STATE_FILE) !== null)).toEqual(b.knots.map((_: any, i: number) => i < b.knots.length - 1));
    // The same request, crashing after its first knot; another worker resumes it.
    mode = { dieAfterKnots: 1 };
    const c = await post({ ...body, output_model: 'auto-crashy' });
    const id = ((await c.json()) as any).id;
    await waitJob(id, (j) => j.knots.length >= 1);
    await lastRun;
    mode = {};
    await T.database.db.update(jobs).set({ leaseExpiresAt: sql`now() - interval '1 second'` }).where(sql`${jobs.id} = ${id}`);
    expect(await srv.worker.reclaimOnce()).toBe(1);
    const a = await waitJob(id, finished);
    expect(a.status).toBe('succeeded');
    expect(a.attempts).toBe(2);
    expect(a.knots.map((k: any) => [k.link, k.step])).toEqual(b.knots.map((k: any) => [k.link, k.step]));
    // And a plain rerun.
    const r = await post({ ...body, output_model: 'auto-again' });
    expect((await waitJob(((await r.json()) as any).id, finished)).status).toBe('succeeded');
    const shas = async (m: string) => (((await (await fetch(`${url}/models/${m}`, { headers: h() })).json()) as any).versions as any[]).map((v) => v.sha256);
    const sb = await shas('auto-calm');
    expect(await shas('auto-crashy')).toEqual(sb);
    expect(await shas('auto-again')).toEqual(sb);
    expect(new Set(sb).size).toBe(b.knots.length);
  }, 300_000);
});
