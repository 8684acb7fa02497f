// Peak memory of a server process while it takes a large JSONL upload (POST /files).
//
//   bun run bench/files-rss.ts [--mb 200] [--root <checkout>]
//
// Starts `bun run src/main.ts` of <checkout> (default: this one) on a Postgres database
// (DATABASE_TEST_URL, default the local test server; a fresh database per run, so PGlite's own
// start-up peak does not hide the upload's) with limits raised to take the file, streams a
// generated JSONL body of --mb megabytes (never held by this client), and reports the server's RSS
// before the upload and its peak (VmHWM) after it. Run it with --root on an older checkout to compare.
import path from 'node:path';
import fs from 'node:fs';
import os from 'node:os';
import pg from 'pg';

const args = process.argv.slice(2);
const arg = (k: string, d: string) => {
  const i = args.indexOf(k);
  return i >= 0 ? args[i + 1]! : d;
};
const mb = Number(arg('--mb', '200'));
const root = path.resolve(arg('--root', path.join(import.meta.dir, '..')));
const server = process.env.DATABASE_TEST_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

const name = `rss_${Date.now()}`;
const admin = new pg.Client({ connectionString: server });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
const u = new URL(server);
u.pathname = `/${name}`;
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cola-rss-'));
const limit = String(2 * mb * 1024 * 1024);
const proc = Bun.spawn(['bun', 'run', 'src/main.ts'], {
  cwd: root,
  env: {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? '/tmp',
    PORT: '0',
    COLA_DATA_DIR: dataDir,
    DATABASE_URL: u.toString(),
    COLA_WORKER: '0',
    COLA_FILE_LIMIT_BYTES: limit, // this checkout's limit for files
    COLA_UPLOAD_LIMIT_BYTES: limit, // older checkouts limited /files with this one
    COLA_MAX_FILE_EXAMPLES: '10000000',
    VK_ICD_FILENAMES: process.env.VK_ICD_FILENAMES ?? '',
  },
  stdout: 'pipe',
  stderr: 'pipe',
});
let out = '';
void (async () => {
  for await (const c of proc.stdout as ReadableStream<Uint8Array>) out += new TextDecoder().decode(c);
})();
void (async () => {
  for await (const c of proc.stderr as ReadableStream<Uint8Array>) out += new TextDecoder().decode(c);
})();
const status = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(fs.readFileSync(`/proc/${proc.pid}/status`, 'utf8'))![1]) * 1024;
try {
  let url = '';
  for (let i = 0; i < 1200 && !url; i++) {
    url = /listening on (http:\/\/[\d.]+:\d+)/.exec(out)?.[1] ?? '';
    await Bun.sleep(50);
  }
  if (!url) throw new Error(`server did not start:\n${out}`);
  const key = fs.readFileSync(path.join(dataDir, 'local.key'), 'utf8').trim();
  await fetch(`${url}/healthz`);
  const rssBefore = status('VmRSS');
  const hwmBefore = status('VmHWM');
  const target = mb * 1_000_000;
  let sent = 0;
  let i = 0;
  const enc = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    pull(c) {
      if (sent >= target) return c.close();
      let s = '';
      while (s.length < 65_536) s += JSON.stringify({ prompt: `Question ${i}: what is ${i} plus one?`, completion: ` It is ${++i}.` }) + '\n';
      const b = enc.encode(s);
      sent += b.length;
      c.enqueue(b);
    },
  });
  const t0 = performance.now();
  const r = await fetch(`${url}/files`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/jsonl' }, body });
  const answer = (await r.text()).slice(0, 160);
  const s = (performance.now() - t0) / 1000;
  const gb = (x: number) => (x / 1e9).toFixed(2);
  console.log(`checkout ${root}`);
  console.log(`POST /files of ${(sent / 1e6).toFixed(0)} MB (${i} lines): ${r.status} in ${s.toFixed(1)} s — ${answer}`);
  console.log(`server RSS before ${gb(rssBefore)} GB (peak so far ${gb(hwmBefore)} GB); peak during the upload ${gb(status('VmHWM'))} GB; RSS after ${gb(status('VmRSS'))} GB`);
} finally {
  proc.kill();
  await proc.exited;
  fs.rmSync(dataDir, { recursive: true, force: true });
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
  await admin.end();
}
