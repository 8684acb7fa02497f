// The OpenAPI document (/openapi.json) and what completes it: the error responses every route can
// give (added from the middleware's rules, so no route forgets one), the SSE event payloads as
// named schemas, and the routes served outside the registry (/openapi.json, /docs) described too.
import path from 'node:path';
import { createRoute, z } from '@hono/zod-openapi';
import type { App } from './deps.ts';
import { fileResponse, packageDir, pageSecurityHeaders } from './assets.ts';
import { problems, ProblemSchema } from './problem.ts';
import { JobStatusSchema } from './schemas.ts';

export const OPENAPI_INFO = {
  openapi: '3.1.0',
  info: { title: 'COLA fine-tune-and-serve service', version: '1' },
  security: [{ bearer: [] as string[] }],
};

/** The data of each event of GET /finetune/{id}/events, by event name (each `data:` line is this JSON). */
export const JobEvents = z
  .object({
    status: z.object({ status: JobStatusSchema, attempt: z.number().int().optional(), reason: z.string().optional(), error: z.object({ type: z.string(), detail: z.string() }).optional() }),
    link_started: z.object({ link: z.number().int(), rank: z.number().int() }),
    step: z.object({
      step: z.number().int(),
      loss: z.number().nullable(),
      lr: z.number().nullable(),
      link: z.number().int(),
      epoch: z.number().int(),
      /** Tokens the step processed (its batch's non-padding tokens; absent when a trainer does not count them). */
      tokens: z.number().int().optional(),
      /** When the step was recorded (ISO 8601): with `tokens`, tokens/s. */
      at: z.string(),
    }),
    knot: z.object({ link: z.number().int(), step: z.number().int(), version: z.number().int(), rank: z.number().int(), val_loss: z.number().nullable() }),
    eval: z.object({ link: z.number().int(), val_loss: z.number() }),
    knot_decision: z.object({
      decision: z.enum(['tie', 'last_link']),
      link: z.number().int(),
      step: z.number().int(),
      steps_in_link: z.number().int(),
      ema_loss: z.number().nullable(),
      rate: z.number().nullable(),
      initial_rate: z.number().nullable(),
      threshold: z.number(),
    }).openapi({ description: 'chain.auto: a knot decision and the signal it was taken on (src/cola/auto.ts)' }),
    done: z.object({ status: JobStatusSchema }),
  })
  .openapi('JobEvents', { description: 'SSE payloads of GET /finetune/{id}/events: the `data` JSON of each event, keyed by the event name' });

/** The data of each event of POST /generate with stream: true. */
export const GenerateEvents = z
  .object({
    token: z.object({ text: z.string(), id: z.number().int().nullable() }),
    done: z.object({}).passthrough().openapi({ description: 'the GenerateResponse of the whole generation' }),
    error: z.object({ detail: z.string() }),
  })
  .openapi('GenerateEvents', { description: 'SSE payloads of POST /generate with stream: true, keyed by the event name; `done` carries a GenerateResponse' });

const PUBLIC_PATHS = new Set(['/healthz', '/readyz', '/metrics', '/openapi.json', '/docs', '/ui']);

type RouteDef = { type: string; route?: { method: string; path: string; request?: { body?: unknown }; responses: Record<string, unknown> } };

/**
 * Adds to every registered route the problem+json responses the middleware in app.ts can give:
 * 401 and 429 (request-rate quota; not on /admin) on authenticated routes, 413 and 415 on routes with a body,
 * 500 everywhere but the public endpoints. A route's own description of a status wins.
 */
export function completeErrorResponses(app: App) {
  for (const d of app.openAPIRegistry.definitions as RouteDef[]) {
    if (d.type !== 'route' || !d.route) continue;
    const r = d.route;
    const add: number[] = [];
    // The request-rate quota (429) is a tenant's: admin routes do not take it.
    if (!PUBLIC_PATHS.has(r.path)) add.push(...(r.path.startsWith('/admin/') ? [401, 500] : [401, 429, 500]));
    if (r.request?.body) add.push(413, 415);
    for (const [s, v] of Object.entries(problems(...add))) if (!(s in r.responses)) r.responses[s] = v;
  }
}

/** /openapi.json and the description of the routes this module serves outside app.openapi. */
export function docsRoutes(app: App) {
  app.openAPIRegistry.registerComponent('securitySchemes', 'bearer', { type: 'http', scheme: 'bearer' });
  app.openAPIRegistry.register('JobEvents', JobEvents);
  app.openAPIRegistry.register('GenerateEvents', GenerateEvents);
  app.openAPIRegistry.register('Problem', ProblemSchema);
  app.openAPIRegistry.registerPath(
    createRoute({
      method: 'get',
      path: '/openapi.json',
      tags: ['ops'],
      security: [],
      summary: 'This document (OpenAPI 3.1)',
      responses: { 200: { description: 'the OpenAPI document', content: { 'application/json': { schema: z.object({}).passthrough() } } } },
    }),
  );
  app.openAPIRegistry.registerPath(
    createRoute({
      method: 'get',
      path: '/docs',
      tags: ['ops'],
      security: [],
      summary: 'The API reference page (Swagger UI, its assets served from this server: works offline)',
      responses: { 200: { description: 'HTML page', content: { 'text/html': { schema: z.string() } } } },
    }),
  );
  app.openAPIRegistry.registerPath(
    createRoute({
      method: 'get',
      path: '/ui',
      tags: ['ops'],
      security: [],
      summary: 'The dashboard (its modules under /ui/…; it signs in with an API key kept in the browser session)',
      responses: { 200: { description: 'HTML page', content: { 'text/html': { schema: z.string() } } } },
    }),
  );
  completeErrorResponses(app);
  app.doc31('/openapi.json', OPENAPI_INFO);
  app.use('/docs', pageSecurityHeaders);
  app.use('/docs/*', pageSecurityHeaders);
  app.get('/docs', (c) => c.html(DOCS_HTML));
  const swagger = packageDir('swagger-ui-dist');
  app.get('/docs/assets/:file', (c) => {
    const f = c.req.param('file');
    // The page's own script (a file, not inline: the CSP allows no inline script).
    if (f === 'init.js') return new Response(DOCS_INIT_JS, { headers: { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': 'no-cache' } });
    if (!DOCS_ASSETS.has(f)) return c.notFound();
    return fileResponse(path.join(swagger, f)) ?? c.notFound();
  });
}

/** What /docs/assets serves from swagger-ui-dist (pinned in package.json). */
const DOCS_ASSETS = new Set(['swagger-ui.css', 'swagger-ui-bundle.js', 'favicon-32x32.png']);

/** Swagger UI with every asset from this server; no validator badge (it would call validator.swagger.io). */
export const DOCS_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>COLA service API</title>
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/init.js"></script>
</body>
</html>
`;

/** Starts Swagger UI on this server's document (served as /docs/assets/init.js). */
export const DOCS_INIT_JS = `window.ui = SwaggerUIBundle({ url: '/openapi.json', dom_id: '#swagger-ui', validatorUrl: null, deepLinking: true, persistAuthorization: false });\n`;
