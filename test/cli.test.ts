// The command-line client (`bun run cola …`, cli/cola.ts) as a user runs it: the real binary in a
// subprocess against the real server (PGlite, the bundled model, the real trainer): fine-tune from
// a JSONL file watching a progress line per link and the knots, jobs, versions, streamed
// generation, export of weights and adapter, model import and adapter upload, and the server's
// problem detail with a non-zero exit on errors.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { createClient } from '../client/index.ts';
import { cleanupDir, startServer, stories260kAdapter, type ServerProc } from './service.fixtures.ts';
import { tempDir } from './db.fixtures.ts';

const ROOT = path.resolve(import.meta.dir, '..');

async function cola(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = Bun.spawn(['bun', 'run', '--silent', 'cola', ...args], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', ...env }, stdout: 'pipe', stderr: 'pipe' });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout as ReadableStream).text(), new Response(p.stderr as ReadableStream).text(), p.exited]);
  return { code, stdout, stderr };
}

describe('cola CLI against the real server', () => {
  let s: ServerProc;
  let env: Record<string, string>;
  let key: string;
  let dir: string;
  beforeAll(async () => {
    s = await startServer({});
    key = fs.readFileSync(path.join(s.dataDir, 'local.key'), 'utf8').trim();
    env = { COLA_URL: s.url, COLA_API_KEY: key };
    dir = tempDir('cola-cli-');
    const lines = [
      { prompt: 'Once upon a time', completion: ' there was a cat.' },
      { text: 'Lily liked to play in the park.' },
      { text: 'Tom had a big red ball.' },
      { prompt: 'The sun', completion: ' was warm and bright.' },
    ];
    fs.writeFileSync(path.join(dir, 'train.jsonl'), lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
  }, 60_000);
  afterAll(async () => {
    await s?.stop();
    cleanupDir(s.dataDir);
    cleanupDir(dir);
  });

  test('finetune … --links 2 --watch: a line per link with the loss and its knot; exit 0 on success', async () => {
    const r = await cola(['finetune', path.join(dir, 'train.jsonl'), '--model', 'stories260K', '--output', 'cli-bot', '--links', '2', '--rank', '4', '--epochs', '1', '--batch-size', '2', '--max-seq-len', '32', '--lr', '0.005', '--watch'], env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^job job_\S+ queued → model cli-bot$/m);
    expect(r.stderr).toMatch(/uploaded .*train\.jsonl: file_\S+ \(4 examples/);
    expect(r.stderr).toMatch(/^link 1\/2 █+ step \d+\/\d+ {2}loss \d+\.\d{4} {2}→ knot: cli-bot@1 \(rank 4\)$/m);
    expect(r.stderr).toMatch(/^link 2\/2 █+ step (\d+)\/\1 {2}loss \d+\.\d{4} {2}→ knot: cli-bot@2 \(rank 4\)$/m);
    expect(r.stderr).toContain('status: succeeded');
  }, 240_000);

  test('jobs, versions, models', async () => {
    const jobs = await cola(['jobs'], env);
    expect(jobs.code).toBe(0);
    expect(jobs.stdout).toMatch(/^job_\S+\s+succeeded\s+stories260K@0\s+cli-bot\s+\d+\/\d+\s+v1,v2\s+\d+\.\d+/m);
    const id = /^(job_\S+)/m.exec(jobs.stdout)![1]!;
    const one = await cola(['jobs', id], env);
    expect(one.stdout).toContain('knot link 2 at step');
    const vs = await cola(['versions', 'cli-bot', '--json'], env);
    const rows = JSON.parse(vs.stdout) as { version: number; kind: string; rank: number }[];
    expect(rows.map((v) => [v.version, v.kind, v.rank])).toEqual([[1, 'knot', 4], [2, 'knot', 4]]);
    const table = await cola(['versions', 'cli-bot'], env);
    expect(table.stdout.split('\n')[0]).toMatch(/^VERSION\s+KIND\s+PARENT/);
    expect(table.stdout).toMatch(/^2\s+knot\s+cli-bot@1\s+job_\S+\s+2\s+4\s/m); // link 2 of the chain (1-based, as watch prints it)
    const models = await cola(['models'], env);
    expect(models.stdout).toMatch(/^stories260K\s+shared\s+llama/m);
    expect(models.stdout).toMatch(/^cli-bot\s+tenant\s+llama\s+\d+\s+2$/m);
  });

  test('generate streams the same text the API returns; export writes the version the server holds', async () => {
    const g = await cola(['generate', 'cli-bot@1', 'Once upon a time', '--max-tokens', '10', '--seed', '2'], env);
    expect(g.code, g.stderr).toBe(0);
    const api = await createClient(s.url, key).generate({ model: 'cli-bot', version: 1, prompt: 'Once upon a time', max_tokens: 10, seed: 2 });
    expect(g.stdout).toBe(api.text + '\n');
    expect(g.stderr).toMatch(/^cli-bot@1: \d+ tokens, [\d.]+ tokens\/s, (length|stop)$/m);

    const out = path.join(dir, 'w.safetensors');
    const e = await cola(['export', 'cli-bot@2', '-o', out], env);
    expect(e.code, e.stderr).toBe(0);
    const v2 = (await createClient(s.url, key).ok(createClient(s.url, key).api.GET('/models/{name}', { params: { path: { name: 'cli-bot' } } }))).versions.find((v) => v.version === 2)!;
    const buf = fs.readFileSync(out);
    expect(buf.length).toBe(v2.bytes);
    expect(crypto.createHash('sha256').update(buf).digest('hex')).toBe(v2.sha256);
    const zip = path.join(dir, 'a.zip');
    expect((await cola(['export', 'cli-bot', '--adapter', '-o', zip], env)).code).toBe(0);
    expect(fs.readFileSync(zip).subarray(0, 2).toString()).toBe('PK');
  });

  test('import uploads a model; adapters upload takes a PEFT folder', async () => {
    const imp = await cola(['import', 'uploaded', path.join(ROOT, 'models/stories260K/stories260K.bin'), path.join(ROOT, 'models/stories260K/tok512.bin')], env);
    expect(imp.code, imp.stderr).toBe(0);
    expect(imp.stdout.trim()).toBe('imported uploaded@0');
    const srv = await cola(['import', 'from-server', '--server-path', 'models/stories260K'], env);
    expect(srv.code, srv.stderr).toBe(0);
    const ad = path.join(dir, 'adapter');
    fs.mkdirSync(ad);
    const a = stories260kAdapter();
    fs.writeFileSync(path.join(ad, 'adapter_config.json'), a.config);
    fs.writeFileSync(path.join(ad, 'adapter_model.safetensors'), a.weights);
    const up = await cola(['adapters', 'upload', ad], env);
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout).toMatch(/^adapter adp_\S+$/m);
  });

  test('knot ties a knot in a running job, cancel stops it, watch exits 1 for a job that did not succeed', async () => {
    const start = await cola(['finetune', path.join(dir, 'train.jsonl'), '--model', 'stories260K', '--output', 'cli-long', '--links', '1', '--rank', '2', '--epochs', '300', '--batch-size', '2', '--max-seq-len', '32', '--json'], env);
    expect(start.code, start.stderr).toBe(0);
    const id = (JSON.parse(start.stdout) as { id: string }).id;
    const api = createClient(s.url, key);
    const end = Date.now() + 120_000;
    while (Date.now() < end) {
      const j = await api.ok(api.api.GET('/finetune/{id}', { params: { path: { id } } }));
      if (j.status === 'running' && (j.progress?.step ?? 0) >= 2) break;
      await Bun.sleep(100);
    }
    const knot = await cola(['knot', id], env);
    expect(knot.code, knot.stderr).toBe(0);
    const after = await api.ok(api.api.GET('/finetune/{id}', { params: { path: { id } } }));
    expect(after.knots.map((k) => k.version)).toEqual([1]);
    const cancel = await cola(['cancel', id], env);
    expect(cancel.code, cancel.stderr).toBe(0);
    expect(cancel.stdout).toContain(`job ${id}:`);
    const w = await cola(['watch', id], env);
    expect(w.code).toBe(1);
    expect(w.stderr).toContain('status: cancelled');
    expect(w.stderr).toMatch(/→ knot: cli-long@1 \(rank 2\)/);
    const again = await cola(['cancel', id], env);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('error: 409 Conflict: job is already cancelled');
  }, 240_000);

  test("errors: the server's problem detail and exit 1; bad usage exit 2", async () => {
    const nf = await cola(['generate', 'nope', 'Once'], env);
    expect(nf.code).toBe(1);
    expect(nf.stderr).toContain('error: 404 Not Found: model "nope" not found');
    const bad = await cola(['generate', 'stories260K', 'Once', '--max-tokens', '0'], env);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/error: 400 Bad Request: .*\n {2}max_tokens: /);
    const dup = await cola(['import', 'stories260K', '--server-path', 'models/stories260K'], env);
    expect(dup.code).toBe(1);
    expect(dup.stderr).toContain('409');
    const unauth = await cola(['models'], { ...env, COLA_API_KEY: 'cola_not_a_key_at_all_0000' });
    expect(unauth.code).toBe(1);
    expect(unauth.stderr).toContain('error: 401 Unauthorized: invalid or revoked API key');
    const flagKey = await cola(['models', '--url', s.url, '--key', key], {});
    expect(flagKey.code).toBe(0);
    expect((await cola(['finetune', 'x.jsonl', '--model', 'stories260K', '--links', 'three'], env)).code).toBe(2);
    expect((await cola(['frobnicate'], env)).code).toBe(2);
    expect((await cola(['models'], {})).stderr).toContain('no API key');
  });
});
