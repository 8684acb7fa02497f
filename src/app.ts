// createApp({config, db, engine?, store?, services, queue?}) → the Hono app. Everything it uses is
// passed in; nothing is a module-level singleton.
import path from 'node:path';
import { OpenAPIHono } from '@hono/zod-openapi';
import { bodyLimit } from 'hono/body-limit';
import { HTTPException } from 'hono/http-exception';
import type { MiddlewareHandler } from 'hono';
import { findTenantByKey } from './db/repos/tenants.ts';
import { hashKey, sameHash } from './db/ids.ts';
import { Metrics } from './routes/metrics.ts';
import { TokenBuckets } from './routes/limits.ts';
import { ProblemError, problemResponse, validationHook } from './routes/problem.ts';
import type { App, AppDeps, AppEnv, AppOptions } from './routes/deps.ts';
import { Store } from './store/store.ts';
import { DeviceUnavailableError, ServiceBusyError, UserInputError } from './services.ts';
import { StaleLeaseError } from './jobs/transitions.ts';
import { publicMessage } from './util/redact.ts';
import { adminRoutes } from './routes/admin.ts';
import { opsRoutes } from './routes/ops.ts';
import { finetuneRoutes } from './routes/finetune.ts';
import { modelRoutes } from './routes/models.ts';
import { generateRoutes } from './routes/generate.ts';
import { openaiRoutes } from './routes/openai.ts';
import { chatRoutes } from './routes/chat.ts';
import { fileRoutes } from './routes/files.ts';
import { mergeRoutes } from './routes/merge.ts';
import { deleteRoutes } from './routes/delete.ts';
import { docsRoutes } from './routes/docs.ts';
import { uiRoutes } from './routes/ui.ts';

export type { AppOptions, AppDeps } from './routes/deps.ts';

const PUBLIC = new Set(['/healthz', '/readyz', '/metrics', '/openapi.json', '/docs']);

/** Body media types accepted per route (method + path prefix); others answer 415. */
function acceptedBodyTypes(method: string, p: string): string[] | null {
  if (method !== 'POST' && method !== 'PUT' && method !== 'PATCH') return null;
  if (p === '/files') return ['application/jsonl', 'application/x-ndjson', 'application/json', 'text/plain', 'multipart/form-data'];
  if (p === '/adapters') return ['multipart/form-data'];
  if (p === '/models') return ['application/json', 'multipart/form-data'];
  return ['application/json'];
}

function isUpload(method: string, p: string): boolean {
  return method === 'POST' && (p === '/adapters' || p === '/models');
}

export function createApp(opts: AppOptions): App {
  const deps: AppDeps = {
    config: opts.config,
    database: opts.db,
    db: opts.db.db,
    engine: opts.engine,
    store: opts.store instanceof Store ? opts.store : new Store(opts.store?.root ?? path.join(opts.config.dataDir, 'store')),
    services: opts.services ?? {},
    queue: opts.queue,
    metrics: new Metrics(),
    rate: new TokenBuckets(),
  };
  const app: App = new OpenAPIHono<AppEnv>({ defaultHook: validationHook as never });

  // Timing and request metrics (route = the matched pattern, so ids do not explode label sets).
  app.use('*', async (c, next) => {
    const t0 = performance.now();
    c.set('deps', deps);
    await next();
    const route = c.req.routePath && c.req.routePath !== '*' && c.req.routePath !== '/*' ? c.req.routePath : 'unmatched';
    deps.metrics.observeRequest(c.req.method, route, c.res.status, (performance.now() - t0) / 1000);
    if (deps.config.logRequests) console.log(`${c.req.method} ${c.req.path} ${c.res.status} ${(performance.now() - t0).toFixed(1)}ms`);
  });

  // Auth: admin key for /admin, tenant keys elsewhere, nothing for the public endpoints.
  const auth: MiddlewareHandler<AppEnv> = async (c, next) => {
    const p = c.req.path;
    // The API reference and the dashboard's files are public; the calls they make carry a key.
    if (PUBLIC.has(p) || p.startsWith('/docs/assets/') || p === '/ui' || p.startsWith('/ui/')) return next();
    const h = c.req.header('authorization') ?? '';
    const m = /^Bearer\s+(\S{1,512})\s*$/i.exec(h);
    const challenge = { 'www-authenticate': 'Bearer' };
    if (!m) return problemResponse(401, 'missing or malformed Authorization header: expected "Bearer <api key>"', { headers: challenge });
    const key = m[1]!;
    if (p === '/admin' || p.startsWith('/admin/')) {
      const admin = deps.config.adminKey;
      if (!admin) return problemResponse(401, 'no admin key is configured on this server (set COLA_ADMIN_KEY)', { headers: challenge });
      if (!sameHash(hashKey(key), hashKey(admin))) return problemResponse(401, 'invalid admin key', { headers: challenge });
      return next();
    }
    const tenant = await findTenantByKey(deps.db, key);
    if (!tenant) return problemResponse(401, 'invalid or revoked API key', { headers: challenge });
    c.set('tenant', tenant);
    const rpm = tenant.quotas.requests_per_minute ?? deps.config.defaultQuotas.requests_per_minute;
    const r = deps.rate.take(tenant.id, rpm);
    if (!r.ok) {
      return problemResponse(429, `request rate quota of ${rpm} per minute exceeded`, {
        headers: { 'retry-after': String(r.retryAfterS) },
        type: 'quota-exceeded',
      });
    }
    return next();
  };
  app.use('*', auth);

  // Content type (415) and body size (413).
  const limitJson = bodyLimit({
    maxSize: deps.config.bodyLimitBytes,
    onError: () => problemResponse(413, `request body exceeds the limit of ${deps.config.bodyLimitBytes} bytes (COLA_BODY_LIMIT_BYTES)`),
  });
  const limitUpload = bodyLimit({
    maxSize: deps.config.uploadLimitBytes,
    onError: () => problemResponse(413, `upload exceeds the limit of ${deps.config.uploadLimitBytes} bytes (COLA_UPLOAD_LIMIT_BYTES)`),
  });
  const limitFile = bodyLimit({
    maxSize: deps.config.fileLimitBytes,
    onError: () => problemResponse(413, `the file exceeds the limit of ${deps.config.fileLimitBytes} bytes (COLA_FILE_LIMIT_BYTES)`),
  });
  app.use('*', async (c, next) => {
    const accepted = acceptedBodyTypes(c.req.method, c.req.path);
    if (accepted) {
      const ct = (c.req.header('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
      const len = c.req.header('content-length');
      const hasBody = ct !== '' || (len !== undefined && len !== '0') || c.req.header('transfer-encoding') !== undefined;
      if (hasBody && !accepted.includes(ct)) {
        return problemResponse(415, `content type "${ct || '(none)'}" is not accepted here; use ${accepted.join(' or ')}`);
      }
    }
    if (c.req.method === 'POST' && c.req.path === '/files') {
      // A raw JSONL body is streamed and limited by the handler (Hono's bodyLimit would buffer a
      // chunked body whole); a multipart one is parsed by the runtime, so it is limited here.
      const ct = (c.req.header('content-type') ?? '').toLowerCase();
      return ct.startsWith('multipart/form-data') ? limitFile(c, next) : next();
    }
    return (isUpload(c.req.method, c.req.path) ? limitUpload : limitJson)(c, next);
  });

  /** A problem whose detail and messages are safe to show: paths and errno text replaced, the original logged. */
  const safeProblem = (
    c: { req: { method: string; path: string } },
    status: number,
    detail: string,
    opts: { errors?: { path: string; message: string }[]; headers?: Record<string, string>; type?: string } = {},
  ) => {
    const d2 = publicMessage(detail);
    const errors = opts.errors?.map((e) => ({ path: publicMessage(e.path), message: publicMessage(e.message) }));
    if (d2 !== detail || JSON.stringify(errors) !== JSON.stringify(opts.errors)) {
      console.error(`${c.req.method} ${c.req.path} → ${status}: ${detail}${opts.errors ? ` ${JSON.stringify(opts.errors)}` : ''}`);
    }
    return problemResponse(status, d2, { ...opts, ...(errors ? { errors } : {}) });
  };

  app.onError((err, c) => {
    if (err instanceof ProblemError) return safeProblem(c, err.status, err.detail, err.opts);
    if (err instanceof UserInputError) return safeProblem(c, 400, err.message, { errors: err.errors });
    if (err instanceof ServiceBusyError) {
      deps.metrics.generateRejected++;
      return problemResponse(429, err.message, { headers: { 'retry-after': String(err.retryAfterS) }, type: 'overloaded' });
    }
    if (err instanceof DeviceUnavailableError) return safeProblem(c, 503, err.message, { headers: { 'retry-after': '30' } });
    if (err instanceof HTTPException) {
      const s = err.status;
      if (s === 400) return safeProblem(c, 400, err.message || 'malformed request');
      if (s === 413) return problemResponse(413, 'request body too large');
      return safeProblem(c, s, err.message || 'request failed');
    }
    if (err instanceof StaleLeaseError) return problemResponse(409, err.message);
    // Never leak internals: log server-side, answer a generic 500.
    console.error(`unhandled error on ${c.req.method} ${c.req.path}:`, err);
    return problemResponse(500, 'internal error; the incident was logged');
  });
  app.notFound((c) => problemResponse(404, `no route ${c.req.method} ${c.req.path}`));

  adminRoutes(app, deps);
  opsRoutes(app, deps);
  finetuneRoutes(app, deps);
  modelRoutes(app, deps);
  generateRoutes(app, deps);
  openaiRoutes(app, deps);
  chatRoutes(app, deps);
  fileRoutes(app, deps);
  mergeRoutes(app, deps);
  deleteRoutes(app, deps);

  docsRoutes(app);
  uiRoutes(app, deps);
  return app;
}
