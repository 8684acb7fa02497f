// The dashboard (/ui) and the API reference (/docs) in a real browser: playwright-core driving
// Debian's Chromium against the real server (PGlite, the bundled model, the real trainer), with
// every request to a host other than this server aborted (offline). The admin signs in and creates
// a tenant; the tenant signs in, starts a small COLA job from a JSONL upload, watches it succeed
// with its knots drawn on the loss curve, opens the lineage, generates in the playground and
// compares two versions on the same prompt and seed. Screenshots go to test/artifacts/
// (COLA_SCREENSHOT_DIR=docs/img for the README's pictures: `bun run screenshots`).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { createClient } from '../client/index.ts';
import { cleanupDir, startServer, stories260kAdapter, type ServerProc } from './service.fixtures.ts';
import { tempDir } from './db.fixtures.ts';

const CHROMIUM = process.env.COLA_CHROMIUM ?? '/usr/bin/chromium';
const ADMIN = 'admin-key-for-ui-tests-0123456789';
const SHOTS = path.resolve(import.meta.dir, '..', process.env.COLA_SCREENSHOT_DIR ?? 'test/artifacts');
/** `bun run screenshots` writes only the README's pictures (docs/img); the tests write all of them to test/artifacts. */
const README_ONLY = process.env.COLA_SCREENSHOT_DIR !== undefined;
const haveChromium = fs.existsSync(CHROMIUM);
if (!haveChromium && process.env.CI) throw new Error(`${CHROMIUM} is missing: scripts/install-system.sh installs chromium`);
if (!haveChromium) console.warn(`ui.browser: ${CHROMIUM} not found, browser tests skipped (apt-get install chromium)`);

const VALIDATION = [{ text: 'Tom and Lily played with the ball.' }, { prompt: 'Once upon a time', completion: ' there was a dog.' }];
const jsonl = (name: string, xs: object[]) => ({ name, mimeType: 'application/jsonl', buffer: Buffer.from(xs.map((x) => JSON.stringify(x)).join('\n') + '\n') });
const TRAIN = [
  { prompt: 'Once upon a time', completion: ' there was a cat.' },
  { text: 'Lily liked to play in the park.' },
  { text: 'Tom had a big red ball.' },
  { prompt: 'The sun', completion: ' was warm and bright.' },
  { text: 'The dog ran to the park with Tom.' },
  { prompt: 'One day', completion: ' Lily saw a bird.' },
];

describe.skipIf(!haveChromium)('dashboard and /docs in Chromium, offline', () => {
  let s: ServerProc;
  let ctx: BrowserContext;
  let page: Page;
  let profile: string;
  let tenantKey = '';
  let jobId = '';
  const blocked: string[] = [];
  const pageErrors: string[] = [];

  beforeAll(async () => {
    s = await startServer({ COLA_ADMIN_KEY: ADMIN });
    profile = tempDir('cola-chromium-');
    fs.mkdirSync(SHOTS, { recursive: true });
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
      viewport: { width: 1180, height: 820 },
    });
    // Offline: only this server is reachable.
    await ctx.route('**/*', (route) => {
      const u = new URL(route.request().url());
      if ((u.hostname === '127.0.0.1' || u.hostname === 'localhost') && u.port === new URL(s.url).port) return route.continue();
      if (u.protocol === 'blob:' || u.protocol === 'data:') return route.continue();
      blocked.push(route.request().url());
      return route.abort();
    });
    page = ctx.pages()[0] ?? (await ctx.newPage());
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    // A Content-Security-Policy violation is a console error, not a page error.
    page.on('console', (m) => {
      if (/Content Security Policy/i.test(m.text())) pageErrors.push(m.text());
    });
    page.setDefaultTimeout(60_000);
  }, 90_000);
  afterAll(async () => {
    await ctx?.close();
    await s?.stop();
    cleanupDir(s.dataDir);
    cleanupDir(profile);
  });

  const shot = async (name: string, el?: string, readme = false) => {
    if (README_ONLY && !readme) return;
    await (el ? page.locator(el).screenshot({ path: path.join(SHOTS, name) }) : page.screenshot({ path: path.join(SHOTS, name) }));
  };

  test('the admin signs in, sees tenants with usage, creates a tenant', async () => {
    await page.goto(`${s.url}/ui`);
    await page.getByTestId('key').fill('wrong-key-wrong-key');
    await page.getByTestId('signin').click();
    await expect(page.getByTestId('error').textContent()).resolves.toContain('401');
    await page.getByTestId('key').fill(ADMIN);
    await page.getByTestId('signin').click();
    await page.getByTestId('tenant-name').fill('ui-tenant');
    await page.getByRole('button', { name: 'Create' }).click();
    tenantKey = (await page.getByTestId('new-key').textContent())!.trim();
    expect(tenantKey).toMatch(/^cola_/);
    await page.locator('tr[data-tenant="ui-tenant"]').waitFor();
    expect(await page.locator('tr[data-tenant="ui-tenant"] td').nth(3).textContent()).toBe('0 / 2');
    // the key is in this tab's sessionStorage only
    expect(await page.evaluate(() => [sessionStorage.getItem('cola.key'), localStorage.length])).toEqual([ADMIN, 0]);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByTestId('key').waitFor();
  });

  test('the tenant starts a job from a JSONL upload and watches it succeed with its knots drawn', async () => {
    await page.getByTestId('key').fill(tenantKey);
    await page.getByTestId('signin').click();
    await page.getByTestId('jobs').waitFor();
    await page.getByRole('link', { name: 'New fine-tune', exact: true }).click();
    await page.getByTestId('ft-file').setInputFiles(jsonl('train.jsonl', TRAIN));
    await page.getByTestId('ft-val-file').setInputFiles(jsonl('val.jsonl', VALIDATION));
    await page.getByTestId('ft-output').fill('ui-bot');
    await page.getByTestId('ft-links').fill('3');
    await page.getByTestId('ft-rank').fill('4');
    await page.getByTestId('ft-lr').fill('0.01');
    await page.getByTestId('ft-epochs').fill('4');
    await page.getByTestId('ft-batch').fill('2');
    await page.getByTestId('ft-seqlen').fill('32');
    await page.getByTestId('ft-start').click();
    await page.waitForURL(/#\/jobs\/job_/);
    jobId = /#\/jobs\/(job_[^?]+)/.exec(page.url())![1]!;
    await page.locator('[data-testid="loss-chart"][data-done="true"]').waitFor({ timeout: 180_000 });
    expect(await page.getByTestId('job-status').textContent()).toBe('succeeded');
    // three knots: in the table and painted on the curve
    expect(await page.locator('[data-testid="knots"] tbody tr').count()).toBe(3);
    expect(await page.getByTestId('loss-chart').getAttribute('data-knots-drawn')).toBe('3');
    const api = createClient(s.url, tenantKey);
    const job = await api.ok(api.api.GET('/finetune/{id}', { params: { path: { id: jobId } } }));
    expect(await page.getByTestId('stat-step').textContent()).toBe(`${job.progress!.total_steps}/${job.progress!.total_steps}`);
    expect(Number(await page.getByTestId('stat-loss').textContent())).toBeCloseTo(job.losses.at(-1)!.loss!, 3);
    expect(Number(await page.getByTestId('stat-tps').textContent())).toBeGreaterThan(0);
    expect(await page.getByTestId('cancel').isDisabled()).toBe(true);
    // the validation loss of each knot, as the API has it
    const vals = await page.locator('[data-testid="knots"] tbody tr td:nth-child(5)').allTextContents();
    expect(vals.map(Number)).toEqual(job.knots.map((k) => expect.closeTo(k.val_loss!, 3)));
    await shot('job.png', 'main', true);
    // the jobs list shows it
    await page.getByRole('link', { name: 'Jobs', exact: true }).click();
    await page.locator(`tr[data-job="${jobId}"]`).waitFor();
    expect(await page.locator(`tr[data-job="${jobId}"]`).textContent()).toContain('v1, v2, v3');
  }, 240_000);

  test('the lineage graph: base → knots → merge, an import, with sha256 and sizes', async () => {
    const api = createClient(s.url, tenantKey);
    // a merge of an uploaded adapter onto ui-bot@3, and an imported model
    const form = new FormData();
    const a = stories260kAdapter();
    form.append('adapter_config.json', new Blob([a.config]), 'adapter_config.json');
    form.append('adapter_model.safetensors', new Blob([a.weights as Uint8Array<ArrayBuffer>]), 'adapter_model.safetensors');
    const adapter = await api.ok(api.api.POST('/adapters', { body: {} as never, bodySerializer: () => form }));
    const merged = await api.ok(api.api.POST('/merge', { body: { model: 'ui-bot', version: 3, adapter: adapter.id, output_model: 'ui-merged' } }));
    expect(merged).toBeDefined();
    await api.ok(api.api.POST('/models', { body: { name: 'ui-imported', source: { path: 'models/stories260K' } } }));
    await page.goto(`${s.url}/ui#/models?select=ui-bot@3`);
    await page.getByTestId('selected-version').waitFor();
    for (const n of ['stories260K@0', 'ui-bot@1', 'ui-bot@2', 'ui-bot@3', 'ui-imported@0']) expect(await page.locator(`[data-node="${n}"]`).count()).toBe(1);
    for (const e of ['stories260K@0->ui-bot@1', 'ui-bot@1->ui-bot@2', 'ui-bot@2->ui-bot@3']) expect(await page.locator(`[data-edge="${e}"]`).count()).toBe(1);
    expect(await page.locator('[data-kind="merge"]').count()).toBe(1);
    expect(await page.locator('[data-edge^="ui-bot@3->ui-merged@"]').count()).toBe(1);
    expect(await page.locator('[data-node="ui-imported@0"]').getAttribute('data-kind')).toBe('import');
    const m = await api.ok(api.api.GET('/models/{name}', { params: { path: { name: 'ui-bot' } } }));
    expect(await page.getByTestId('sha256').textContent()).toBe(m.versions.find((v) => v.version === 3)!.sha256);
    const dl = page.waitForEvent('download');
    await page.getByTestId('download-adapter').click();
    const file = await (await dl).path();
    expect(fs.readFileSync(file!).subarray(0, 2).toString()).toBe('PK');
    await shot('lineage.png', 'main', true);
  }, 60_000);

  test('a page still loading when the user navigates away never renders over the new page', async () => {
    // A job's page waits for a slow GET /finetune/{id}; the user goes to the models page meanwhile.
    const api = createClient(s.url, tenantKey);
    const id = (await api.ok(api.api.GET('/finetune', {}))).data[0]!.id;
    const slowUrl = new RegExp(`/finetune/${id}$`);
    let release!: () => void;
    const slow = new Promise<void>((r) => (release = r));
    let held = 0;
    await page.route(slowUrl, async (r) => {
      held++;
      await slow;
      await r.continue();
    });
    try {
      await page.goto(`${s.url}/ui#/jobs/${id}`); // a hash change: same document, no reload
      for (let i = 0; i < 600 && held === 0; i++) await Bun.sleep(50);
      expect(held).toBeGreaterThan(0);
      await page.goto(`${s.url}/ui#/models`);
      await page.locator('h1', { hasText: 'Models and versions' }).waitFor();
      release();
      await page.waitForResponse(slowUrl);
      // The job page's work finishes now; give it its chance to render (bounded poll: it must not).
      for (let i = 0; i < 30; i++) {
        await Bun.sleep(100);
        expect(await page.locator('h1', { hasText: 'Models and versions' }).count()).toBe(1);
        expect(await page.getByTestId('job-status').count()).toBe(0);
      }
    } finally {
      release();
      await page.unroute(slowUrl);
    }
  }, 60_000);

  test('the playground streams, and compares two versions on the same prompt and seed', async () => {
    await page.getByRole('link', { name: 'Playground', exact: true }).click();
    await page.getByTestId('pg-a').selectOption('ui-bot@1');
    await page.getByTestId('pg-compare').check();
    await page.getByTestId('pg-b').selectOption('ui-bot@3');
    await page.getByTestId('pg-max').fill('24');
    await page.getByTestId('pg-generate').click();
    await page.locator('[data-testid="pg-out-a"][data-done="true"]').waitFor();
    await page.locator('[data-testid="pg-out-b"][data-done="true"]').waitFor();
    const api = createClient(s.url, tenantKey);
    for (const [v, id] of [[1, 'pg-out-a'], [3, 'pg-out-b']] as const) {
      const r = await api.generate({ model: 'ui-bot', version: v, prompt: 'Once upon a time', max_tokens: 24, temperature: 0.8, seed: 7 });
      expect(await page.getByTestId(id).textContent()).toBe(r.text);
    }
    expect(await page.getByTestId('pg-info-b').textContent()).toMatch(/^ui-bot@3 · \d+ tokens/);
    await shot('playground.png', 'main');
  }, 60_000);

  test('"tie a knot now" ties a knot in a running job; cancel stops it', async () => {
    const api = createClient(s.url, tenantKey);
    const long = await api.ok(
      api.api.POST('/finetune', { body: { model: 'stories260K', output_model: 'ui-long', train: TRAIN, chain: { links: 1 }, lora: { rank: 2 }, epochs: 200, batch_size: 2, max_seq_len: 32 } }),
    );
    await page.goto(`${s.url}/ui#/jobs/${long.id}`);
    await page.locator('[data-testid="job-status"]', { hasText: 'running' }).waitFor({ timeout: 120_000 });
    // (a string: the test's tsconfig has no DOM types)
    // Polled from here: a string predicate would be evaluated in the page, which its CSP forbids.
    for (let i = 0; i < 1200 && !(Number((await page.locator('[data-testid="stat-step"]').textContent())?.split('/')[0]) >= 3); i++) await Bun.sleep(50);
    await page.getByTestId('tie-knot').click();
    await page.locator('[data-testid="knots"] tbody tr').first().waitFor({ timeout: 120_000 });
    expect(await page.locator('[data-testid="knots"] tbody tr').first().textContent()).toContain('ui-long@1');
    expect(await page.getByTestId('job-status').textContent()).toBe('running');
    await page.getByTestId('cancel').click();
    await page.locator('[data-testid="job-status"]', { hasText: 'cancelled' }).waitFor({ timeout: 120_000 });
    const j = await api.ok(api.api.GET('/finetune/{id}', { params: { path: { id: long.id } } }));
    expect(j.status).toBe('cancelled');
    expect(j.knots.length).toBeGreaterThanOrEqual(1);
    expect(j.progress!.step).toBeLessThan(j.progress!.total_steps);
    expect(await page.getByTestId('loss-chart').getAttribute('data-knots-drawn')).toBe(String(j.knots.length));
  }, 240_000);

  test('/docs renders the API reference with the network blocked', async () => {
    await page.goto(`${s.url}/docs`);
    await page.locator('.swagger-ui .opblock').first().waitFor();
    expect(await page.locator('.swagger-ui .opblock').count()).toBeGreaterThan(25);
    expect(await page.locator('.swagger-ui .info .title').textContent()).toContain('COLA');
    await shot('docs.png');
  }, 60_000);

  test('nothing outside this server was requested, and no page error', () => {
    expect(blocked).toEqual([]);
    expect(pageErrors).toEqual([]);
  });
});
