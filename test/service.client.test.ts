// The typed client (client/index.ts, generated from the OpenAPI document) against the real server
// over real HTTP: a COLA job started and watched through its events, its knots as versions,
// generation from the last knot streamed and not, and the server's problem detail as a ColaError.
// Every call here is typed by client/schema.d.ts, so a route that drifts from the document breaks
// `tsc` or these assertions.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { ColaError, createClient, type ColaClient, type JobEvent } from '../client/index.ts';
import { cleanupDir, startServer, type ServerProc } from './service.fixtures.ts';

const TRAIN = [
  { prompt: 'Once upon a time', completion: ' there was a cat.' },
  { text: 'Lily liked to play in the park.' },
  { text: 'Tom had a big red ball.' },
  { prompt: 'The sun', completion: ' was warm and bright.' },
];

describe('typed client against the real server', () => {
  let s: ServerProc;
  let cola: ColaClient;
  beforeAll(async () => {
    s = await startServer({});
    cola = createClient(s.url, fs.readFileSync(path.join(s.dataDir, 'local.key'), 'utf8').trim());
  }, 60_000);
  afterAll(async () => {
    await s?.stop();
    cleanupDir(s.dataDir);
  });

  test('fine-tune, watch the events, generate from the last knot (streamed = not streamed)', async () => {
    const models = await cola.ok(cola.api.GET('/models'));
    expect(models.data.map((m) => m.name)).toContain('stories260K');
    const job = await cola.ok(
      cola.api.POST('/finetune', {
        body: { model: 'stories260K', output_model: 'client-bot', train: TRAIN, chain: { links: 2 }, epochs: 1, batch_size: 2, max_seq_len: 32, seed: 5 },
      }),
    );
    expect(job.status).toBe('queued');
    const events: JobEvent[] = [];
    for await (const e of cola.jobEvents(job.id)) events.push(e);
    expect(events.at(-1)).toMatchObject({ event: 'done', data: { status: 'succeeded' } });
    const knots = events.flatMap((e) => (e.event === 'knot' ? [e.data] : []));
    expect(knots.map((k) => k.version)).toEqual([1, 2]);
    expect(events.filter((e) => e.event === 'step').every((e) => e.event === 'step' && typeof e.data.loss === 'number')).toBe(true);
    // ids increase, so a watcher can resume after any of them
    const ids = events.map((e) => e.id);
    expect([...ids].sort((a, b) => a - b)).toEqual(ids);
    const resumed: JobEvent[] = [];
    for await (const e of cola.jobEvents(job.id, { lastEventId: ids.at(-3)! })) resumed.push(e);
    expect(resumed.map((e) => e.id)).toEqual(ids.slice(-2));

    const view = await cola.ok(cola.api.GET('/finetune/{id}', { params: { path: { id: job.id } } }));
    expect(view.status).toBe('succeeded');
    expect(view.knots.map((k) => k.version)).toEqual([1, 2]);
    const model = await cola.ok(cola.api.GET('/models/{name}', { params: { path: { name: 'client-bot' } } }));
    expect(model.latest_version).toBe(2);
    expect(model.versions.map((v) => [v.version, v.kind])).toEqual([[1, 'knot'], [2, 'knot']]);

    const req = { model: 'client-bot', prompt: 'Once upon a time', max_tokens: 12, seed: 1 };
    const plain = await cola.generate(req);
    expect(plain.version).toBe(2);
    let text = '';
    let done: unknown;
    for await (const e of cola.generateStream(req)) {
      if (e.event === 'token') text += e.data.text;
      if (e.event === 'done') done = e.data;
    }
    expect(text).toBe(plain.text);
    expect(done).toMatchObject({ model: 'client-bot', version: 2, text: plain.text });
  }, 240_000);

  test("errors carry the server's problem detail", async () => {
    const err = await cola.ok(cola.api.GET('/finetune/{id}', { params: { path: { id: 'job_nope' } } })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ColaError);
    expect((err as ColaError).status).toBe(404);
    expect((err as ColaError).problem.detail).toBe('job not found');
    const bad = await cola.ok(cola.api.POST('/generate', { body: { model: 'stories260K', prompt: 'x', max_tokens: 0 } })).catch((e: unknown) => e);
    expect((bad as ColaError).status).toBe(400);
    expect((bad as ColaError).problem.errors?.[0]?.path).toBe('max_tokens');
    const streamErr = await (async () => {
      for await (const _ of cola.generateStream({ model: 'nope', prompt: 'x' })) void _;
    })().catch((e: unknown) => e);
    expect((streamErr as ColaError).status).toBe(404);
    const unauth = await createClient(s.url, 'cola_wrongwrongwrongwrong').ok(createClient(s.url, 'cola_wrongwrongwrongwrong').api.GET('/models')).catch((e: unknown) => e);
    expect((unauth as ColaError).status).toBe(401);
    // @ts-expect-error a path the document does not have does not type-check (never called)
    const typeOnly = () => cola.api.GET('/no/such/route');
    void typeOnly;
  });
});
