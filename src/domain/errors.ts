// The service's error with an HTTP status (RFC 9457 problem details). Use cases (src/usecases)
// and routes throw it; app.onError turns it into an application/problem+json response. It lives in
// src/domain so that the use-case layer needs nothing from routes.
/** Thrown by a use case or a handler; app.onError turns it into a problem response. */
export class ProblemError extends Error {
  constructor(
    public readonly status: number,
    public readonly detail: string,
    public readonly opts: { errors?: { path: string; message: string }[]; headers?: Record<string, string>; type?: string } = {},
  ) {
    super(detail);
    this.name = 'ProblemError';
  }
}

/** zod issues → [{path, message}] with a JSON-pointer-like dotted path. */
export function zodErrors(issues: readonly { path: readonly PropertyKey[]; message: string }[]) {
  return issues.slice(0, 50).map((i) => ({ path: i.path.map(String).join('.') || '(body)', message: i.message }));
}
