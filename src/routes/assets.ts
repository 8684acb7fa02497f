// Files served from installed packages (node_modules) and the repository's ui/ folder, so /docs and
// /ui work without internet access. Only names listed here are served (no path from the request
// reaches the file system).
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

/** The installed folder of a package (found through its package.json, as Node resolves it). */
export function packageDir(name: string): string {
  return path.dirname(require.resolve(`${name}/package.json`));
}

const TYPES: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.html': 'text/html; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.json': 'application/json',
};

/**
 * Headers of the HTML pages (/ui, /docs) and their assets: a Content-Security-Policy that allows
 * scripts, styles, images and fetches from this server only (no inline script; inline styles stay
 * allowed because Swagger UI and uPlot set element styles), and no framing (clickjacking).
 * `data:` images: Swagger UI's icons are data: URIs in its stylesheet.
 */
export const PAGE_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; " +
  "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

export async function pageSecurityHeaders(c: { res: Response }, next: () => Promise<void>): Promise<void> {
  await next();
  c.res.headers.set('content-security-policy', PAGE_CSP);
  c.res.headers.set('x-frame-options', 'DENY');
  c.res.headers.set('x-content-type-options', 'nosniff');
}

/** A file as a response with its type; null when it is missing. Cached an hour (versions are pinned). */
export function fileResponse(file: string, transform?: (text: string) => string): Response | null {
  if (!fs.existsSync(file)) return null;
  const type = TYPES[path.extname(file)] ?? 'application/octet-stream';
  const body = transform ? transform(fs.readFileSync(file, 'utf8')) : Bun.file(file);
  return new Response(body, { headers: { 'content-type': type, 'cache-control': 'public, max-age=3600' } });
}
