// The typed client of the COLA service: openapi-fetch over the types `bun run client:gen` writes
// from the service's OpenAPI document (client/schema.d.ts), plus SSE readers for job events and
// streamed generation. Runs in Bun, Node ≥ 18 and browsers (the dashboard imports it).
//
//   const cola = createClient('http://localhost:8080', key);
//   const job = await cola.ok(cola.api.POST('/finetune', { body: { model: 'stories260K', train, chain: { links: 3 } } }));
//   for await (const e of cola.jobEvents(job.id)) if (e.event === 'knot') console.log(e.data.version);
import createFetchClient from 'openapi-fetch';
import type { components, paths } from './schema';

export type { components, paths } from './schema';
export type Schemas = components['schemas'];
export type Problem = Schemas['Problem'];
export type Job = Schemas['Job'];
export type GenerateRequest = Schemas['GenerateRequest'];
export type GenerateResponse = Schemas['GenerateResponse'];
/** GET /models/{name}: a model with its versions (kind, parent, link, rank, sha256, bytes). */
export type ModelDetail = paths['/models/{name}']['get']['responses'][200]['content']['application/json'];

/** One event of GET /finetune/{id}/events, its data typed by its name. */
export type JobEvent = { [K in keyof Schemas['JobEvents']]: { id: number; event: K; data: Schemas['JobEvents'][K] } }[keyof Schemas['JobEvents']];
/** One event of a streamed POST /generate (`done` carries the whole GenerateResponse). */
export type GenerateEvent =
  | { event: 'token'; data: Schemas['GenerateEvents']['token'] }
  | { event: 'done'; data: GenerateResponse }
  | { event: 'error'; data: Schemas['GenerateEvents']['error'] };

/** An error answer of the service (RFC 9457 problem+json), thrown by `ok` and the stream helpers. */
export class ColaError extends Error {
  constructor(
    public readonly status: number,
    public readonly problem: Problem,
  ) {
    super(`${status} ${problem.title}: ${problem.detail}`);
    this.name = 'ColaError';
  }
}

async function problemOf(res: Response, body?: unknown): Promise<ColaError> {
  let p = body as Problem | undefined;
  if (!p || typeof p !== 'object' || typeof (p as Problem).detail !== 'string') {
    const text = body === undefined ? await res.text().catch(() => '') : JSON.stringify(body);
    try {
      p = JSON.parse(text) as Problem;
    } catch {
      p = undefined;
    }
    if (!p || typeof p.detail !== 'string') p = { type: 'about:blank', title: res.statusText || 'Error', status: res.status, detail: text.slice(0, 500) || `HTTP ${res.status}` };
  }
  return new ColaError(res.status, p);
}

/** Server-Sent Events of a response body, as {id, event, data} blocks (data lines joined). */
export async function* readEvents(res: Response, signal?: AbortSignal): AsyncGenerator<{ id?: string; event: string; data: string }> {
  if (!res.body) return;
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  const onAbort = () => void reader.cancel().catch(() => {});
  signal?.addEventListener('abort', onAbort);
  try {
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      buf += dec.decode(r.value, { stream: true }).replace(/\r\n?/g, '\n');
      let i: number;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let id: string | undefined;
        let event = 'message';
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue; // comment (keep-alive)
          const c = line.indexOf(':');
          const field = c < 0 ? line : line.slice(0, c);
          const value = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
          if (field === 'id') id = value;
          else if (field === 'event') event = value;
          else if (field === 'data') data.push(value);
        }
        if (data.length) yield { id, event, data: data.join('\n') };
      }
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
    reader.releaseLock();
  }
}

export interface ClientOptions {
  /** A fetch to use instead of the global one (tests, proxies). */
  fetch?: typeof fetch;
}

/** A client for the service at `baseUrl` ("http://host:port") with the API key `key` (or the admin key). */
export function createClient(baseUrl: string, key: string, opts: ClientOptions = {}) {
  const base = baseUrl.replace(/\/+$/, '');
  const doFetch = opts.fetch ?? ((input: Request) => fetch(input));
  const auth = { authorization: `Bearer ${key}` };
  const api = createFetchClient<paths>({ baseUrl: base, headers: auth, fetch: doFetch });

  /** The data of a successful call, or a ColaError with the server's problem detail. */
  async function ok<T>(call: Promise<{ data?: T; error?: unknown; response: Response }>): Promise<T> {
    const r = await call;
    if (r.response.ok && r.error === undefined) return r.data as T;
    throw await problemOf(r.response, r.error);
  }

  async function openStream(path: string, init: RequestInit): Promise<Response> {
    const res = await doFetch(new Request(`${base}${path}`, { ...init, headers: { ...auth, accept: 'text/event-stream', ...(init.headers as Record<string, string>) } }));
    if (!res.ok) throw await problemOf(res);
    return res;
  }

  return {
    /** openapi-fetch: api.GET('/finetune/{id}', { params: { path: { id } } }) → { data, error, response }, all typed. */
    api,
    ok,
    baseUrl: base,
    /** The events of a job until its `done` (resumes after `lastEventId`). */
    async *jobEvents(id: string, o: { lastEventId?: number; signal?: AbortSignal } = {}): AsyncGenerator<JobEvent> {
      const res = await openStream(`/finetune/${encodeURIComponent(id)}/events`, {
        headers: o.lastEventId !== undefined ? { 'last-event-id': String(o.lastEventId) } : {},
        signal: o.signal,
      });
      for await (const e of readEvents(res, o.signal)) {
        yield { id: Number(e.id), event: e.event, data: JSON.parse(e.data) } as JobEvent;
      }
    },
    /** POST /generate as JSON (the document's 200 is JSON or SSE; this is the JSON one). */
    async generate(body: Omit<GenerateRequest, 'stream'>): Promise<GenerateResponse> {
      return (await ok(api.POST('/generate', { body: { ...body, stream: false } }))) as GenerateResponse;
    },
    /** POST /generate with stream: true: token events, then `done` with the whole response. */
    async *generateStream(body: Omit<GenerateRequest, 'stream'>, o: { signal?: AbortSignal } = {}): AsyncGenerator<GenerateEvent> {
      const res = await openStream('/generate', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ ...body, stream: true }),
        signal: o.signal,
      });
      for await (const e of readEvents(res, o.signal)) yield { event: e.event, data: JSON.parse(e.data) } as GenerateEvent;
    },
  };
}

export type ColaClient = ReturnType<typeof createClient>;
