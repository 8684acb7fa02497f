// Start the real server (`bun run src/main.ts`) as a subprocess on a free port with a temp data dir.
import fs from 'node:fs';
import path from 'node:path';
import { tempDir } from './db.fixtures.ts';
import { createApp } from '../src/app.ts';
import { JobWorker } from '../src/jobs/worker.ts';
import type { JobRunner } from '../src/services.ts';
import type { Store } from '../src/store/store.ts';

type AppOptions = Parameters<typeof createApp>[0];

export interface ServerProc {
  url: string;
  dataDir: string;
  proc: ReturnType<typeof Bun.spawn>;
  output: () => string;
  stop(signal?: NodeJS.Signals | number): Promise<number>;
}

const ROOT = path.resolve(import.meta.dir, '..');

export async function startServer(env: Record<string, string> = {}, opts: { dataDir?: string; timeoutMs?: number } = {}): Promise<ServerProc> {
  const dataDir = opts.dataDir ?? tempDir('cola-srv-');
  const proc = Bun.spawn(['bun', 'run', 'src/main.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', PORT: '0', HOST: '127.0.0.1', COLA_DATA_DIR: dataDir, ...env },
    stdout: 'pipe',
    stderr: 'pipe',
  });
  let out = '';
  const pump = async (s: ReadableStream<Uint8Array>) => {
    const dec = new TextDecoder();
    for await (const chunk of s) out += dec.decode(chunk);
  };
  void pump(proc.stdout as ReadableStream<Uint8Array>);
  void pump(proc.stderr as ReadableStream<Uint8Array>);
  const end = Date.now() + (opts.timeoutMs ?? 60_000);
  let url: string | null = null;
  while (Date.now() < end) {
    const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(out);
    if (m) {
      url = m[1]!;
      break;
    }
    if (proc.exitCode !== null) break;
    await Bun.sleep(50);
  }
  if (!url) {
    proc.kill(9);
    throw new Error(`server did not start:\n${out}`);
  }
  return {
    url,
    dataDir,
    proc,
    output: () => out,
    async stop(signal: NodeJS.Signals | number = 'SIGTERM') {
      if (proc.exitCode === null) proc.kill(signal as never);
      const code = await proc.exited;
      return code;
    },
  };
}

export function cleanupDir(d: string) {
  fs.rmSync(d, { recursive: true, force: true });
}

/** Read an SSE stream until it ends (or `max` events); returns events with id, event, data. */
export async function readSSE(res: Response, max = 1000, timeoutMs = 10_000): Promise<{ id?: string; event?: string; data: string }[]> {
  const events: { id?: string; event?: string; data: string }[] = [];
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let buf = '';
  const deadline = Date.now() + timeoutMs;
  while (events.length < max && Date.now() < deadline) {
    const r = await Promise.race([reader.read(), Bun.sleep(Math.max(1, deadline - Date.now())).then(() => null)]);
    if (!r || r.done) break;
    buf += dec.decode(r.value, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const ev: { id?: string; event?: string; data: string } = { data: '' };
      let has = false;
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const [k, ...rest] = line.split(':');
        const v = rest.join(':').replace(/^ /, '');
        if (k === 'id') ev.id = v;
        else if (k === 'event') ev.event = v;
        else if (k === 'data') ev.data += (ev.data ? '\n' : '') + v;
        has = true;
      }
      if (has) events.push(ev);
    }
  }
  await reader.cancel().catch(() => {});
  return events.slice(0, max);
}

/** A minimal valid safetensors file (one F32 tensor). */
export function tinySafetensors(): Uint8Array {
  const header = JSON.stringify({ 'base_model.model.layers.0.attention.wq.lora_A.weight': { dtype: 'F32', shape: [1, 2], data_offsets: [0, 8] } });
  const pad = (8 - (header.length % 8)) % 8;
  const h = new TextEncoder().encode(header + ' '.repeat(pad));
  const buf = new Uint8Array(8 + h.length + 8);
  new DataView(buf.buffer).setBigUint64(0, BigInt(h.length), true);
  buf.set(h, 8);
  return buf;
}

/** A minimal safetensors file from named F32 tensors. */
export function safetensorsOf(tensors: Record<string, { shape: number[]; data: Float32Array }>): Uint8Array {
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [off, off + t.data.byteLength] };
    off += t.data.byteLength;
  }
  let h = JSON.stringify(header);
  h += ' '.repeat((8 - (h.length % 8)) % 8);
  const hb = new TextEncoder().encode(h);
  const buf = new Uint8Array(8 + hb.length + off);
  new DataView(buf.buffer).setBigUint64(0, BigInt(hb.length), true);
  buf.set(hb, 8);
  let p = 8 + hb.length;
  for (const t of Object.values(tensors)) {
    buf.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), p);
    p += t.data.byteLength;
  }
  return buf;
}

/** A valid rank-1 PEFT LoRA adapter for stories260K (dim 64, 5 layers): q_proj of every layer, B = 0. */
export function stories260kAdapter(): { config: string; weights: Uint8Array } {
  const a = new Float32Array(64).map((_, i) => ((i % 7) - 3) / 100);
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (let l = 0; l < 5; l++) {
    tensors[`base_model.model.model.layers.${l}.self_attn.q_proj.lora_A.weight`] = { shape: [1, 64], data: a };
    tensors[`base_model.model.model.layers.${l}.self_attn.q_proj.lora_B.weight`] = { shape: [64, 1], data: new Float32Array(64) };
  }
  return {
    config: JSON.stringify({ peft_type: 'LORA', r: 1, lora_alpha: 2, target_modules: ['q_proj'], bias: 'none' }),
    weights: safetensorsOf(tensors),
  };
}

/**
 * The real app and a job worker in this process, over real HTTP on a free port: the queue runs a job
 * as soon as it is enqueued. One Store serves both, as in main.ts.
 */
export function serveWithWorker(o: { config: AppOptions['config']; db: AppOptions['db']; services: AppOptions['services']; store: Store; runner: JobRunner }) {
  const worker = new JobWorker({ db: o.db.db, config: o.config, store: o.store, runner: o.runner, log: () => {} });
  const app = createApp({ config: o.config, db: o.db, services: o.services, store: o.store, queue: { enqueue: async (id) => void worker.process(id) } });
  const server = Bun.serve({ port: 0, hostname: '127.0.0.1', fetch: app.fetch });
  return {
    app,
    worker,
    url: `http://127.0.0.1:${server.port}`,
    /** Waits up to `ms` for the running job, then closes the server. */
    stop: async (ms = 5000) => {
      await worker.stop(ms);
      server.stop(true);
    },
  };
}
