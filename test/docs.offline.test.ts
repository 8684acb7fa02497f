// /docs works without internet access: the page names no external URL, and every script and
// stylesheet it loads is served by this app from the installed swagger-ui-dist. (Rendering with
// the network blocked is checked in a real browser: test/ui.browser.test.ts.)
import { describe, expect, test } from 'bun:test';
import { createApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import type { Database } from '../src/db/index.ts';

describe('/docs offline', () => {
  // Public routes only: no database is touched.
  const app = createApp({ config: loadConfig({}), db: { db: null } as unknown as Database });

  test('the page has no external URL and its assets come from this server', async () => {
    const res = await app.request('/docs');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/html');
    const html = await res.text();
    expect(html).not.toMatch(/https?:\/\//);
    expect(html).not.toMatch(/src="\/\/|href="\/\//);
    const refs = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!);
    expect(refs).toEqual(['/docs/assets/favicon-32x32.png', '/docs/assets/swagger-ui.css', '/docs/assets/swagger-ui-bundle.js', '/docs/assets/init.js']);
    for (const r of refs) {
      const a = await app.request(r);
      expect(a.status, r).toBe(200);
      expect((await a.arrayBuffer()).byteLength, r).toBeGreaterThan(r.endsWith('.png') ? 100 : r.endsWith('init.js') ? 50 : 10_000);
    }
    expect((await app.request('/docs/assets/swagger-ui.css')).headers.get('content-type')).toContain('text/css');
    expect((await app.request('/docs/assets/swagger-ui-bundle.js')).headers.get('content-type')).toContain('javascript');
    // the page points Swagger UI at this server's document and turns off the external validator
    const init = await (await app.request('/docs/assets/init.js')).text();
    expect(init).toContain("url: '/openapi.json'");
    expect(init).toContain('validatorUrl: null');
  });

  test('/docs and /ui and their assets carry a CSP without inline scripts, no framing, nosniff', async () => {
    const html = await (await app.request('/docs')).text();
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/); // every script is a file (the CSP allows no inline one)
    for (const p of ['/docs', '/docs/assets/swagger-ui-bundle.js', '/docs/assets/init.js', '/ui', '/ui/app.js', '/ui/vendor/uPlot.esm.js', '/ui/style.css']) {
      const r = await app.request(p);
      expect(r.status, p).toBe(200);
      const csp = r.headers.get('content-security-policy') ?? '';
      expect(csp, p).toContain("script-src 'self';");
      expect(csp, p).not.toContain("'unsafe-eval'");
      expect(csp, p).toContain("frame-ancestors 'none'");
      expect(r.headers.get('x-frame-options'), p).toBe('DENY');
      expect(r.headers.get('x-content-type-options'), p).toBe('nosniff');
    }
    const ui = await (await app.request('/ui')).text();
    expect(ui).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    // The API itself is not a page: no page CSP there.
    expect((await app.request('/healthz')).headers.get('content-security-policy')).toBeNull();
  });

  test('only the listed assets are served', async () => {
    for (const p of ['/docs/assets/package.json', '/docs/assets/..%2F..%2Fpackage.json', '/docs/assets/index.html']) {
      const r = await app.request(p);
      expect(r.status, p).toBe(404);
      expect(r.headers.get('content-type')).toContain('application/problem+json');
    }
  });
});
