// The service's OpenAPI document built in-process (no server, no database opened): what
// `bun run client:gen` turns into client/schema.d.ts and what the document tests validate.
import { createApp } from './app.ts';
import { loadConfig } from './config.ts';
import { OPENAPI_INFO } from './routes/docs.ts';
import type { Database } from './db/index.ts';

export function openapiDocument(): Record<string, unknown> {
  // Only route registration runs (no handler), so no database is needed.
  const app = createApp({ config: loadConfig({}), db: { db: null } as unknown as Database });
  return JSON.parse(JSON.stringify(app.getOpenAPI31Document(OPENAPI_INFO))) as Record<string, unknown>;
}
