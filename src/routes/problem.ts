// RFC 9457 problem details: every error the service answers is application/problem+json.
import type { Context } from 'hono';
import { z } from '@hono/zod-openapi';
import { ProblemError, zodErrors } from '../domain/errors.ts';

export const ProblemSchema = z
  .object({
    type: z.string(),
    title: z.string(),
    status: z.number().int(),
    detail: z.string(),
    errors: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
  })
  .openapi('Problem');

export type Problem = z.infer<typeof ProblemSchema>;

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  501: 'Not Implemented',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

const TYPES: Record<number, string> = {
  400: 'invalid-request',
  401: 'unauthorized',
  404: 'not-found',
  405: 'method-not-allowed',
  409: 'conflict',
  413: 'body-too-large',
  415: 'unsupported-media-type',
  429: 'rate-limited',
  500: 'internal',
  501: 'not-implemented',
  503: 'unavailable',
  504: 'timeout',
};

export { ProblemError, zodErrors } from '../domain/errors.ts';

export function problemBody(status: number, detail: string, errors?: { path: string; message: string }[], type?: string): Problem {
  return {
    type: `https://cola.dev/problems/${type ?? TYPES[status] ?? 'error'}`,
    title: TITLES[status] ?? 'Error',
    status,
    detail,
    ...(errors && errors.length ? { errors } : {}),
  };
}

export function problemResponse(
  status: number,
  detail: string,
  opts: { errors?: { path: string; message: string }[]; headers?: Record<string, string>; type?: string } = {},
): Response {
  return new Response(JSON.stringify(problemBody(status, detail, opts.errors, opts.type)), {
    status,
    headers: { 'content-type': 'application/problem+json', ...(opts.headers ?? {}) },
  });
}

export const notFound = (what: string) => new ProblemError(404, `${what} not found`);
export const notImplemented = (what: string) =>
  new ProblemError(501, `${what} is not available in this build yet: the service that implements it is not wired into the server`);

/** Hook for every OpenAPI route: a failed zod validation answers 400 problem+json. */
export function validationHook(
  result: { success: boolean; error?: { issues: readonly { path: readonly PropertyKey[]; message: string }[] }; target?: string },
  _c: Context,
): Response | undefined {
  if (!result.success) {
    const where = result.target === 'json' || result.target === 'form' ? 'body' : (result.target ?? 'request');
    return problemResponse(400, `the request ${where} is invalid`, { errors: zodErrors(result.error!.issues) });
  }
  return undefined;
}

/** Standard error responses to attach to every route's OpenAPI description. */
export function problems(...statuses: number[]) {
  const out: Record<number, { description: string; content: { 'application/problem+json': { schema: typeof ProblemSchema } } }> = {};
  for (const s of statuses) out[s] = { description: TITLES[s] ?? 'Error', content: { 'application/problem+json': { schema: ProblemSchema } } };
  return out;
}
