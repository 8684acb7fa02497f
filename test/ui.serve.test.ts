// /ui is served by the app itself, without a build step and without internet: the page and every
// module it imports come from this server (ui/*.ts transpiled, uPlot and openapi-fetch from
// node_modules, the typed client from client/index.ts), and ui/*.ts type-check against the typed
// client's shapes (ui/tsconfig.json: DOM types).
import path from 'node:path';
import { describe, expect, test } from 'bun:test';
import { createApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import type { Database } from '../src/db/index.ts';
import { toBrowserModule } from '../src/routes/ui.ts';

const ROOT = path.resolve(import.meta.dir, '..');

describe('/ui', () => {
  const app = createApp({ config: loadConfig({}), db: { db: null } as unknown as Database });

  test('the page and the module graph it loads are all served here, with no external URL', async () => {
    const html = await (await app.request('/ui')).text();
    expect(html).not.toMatch(/https?:\/\//);
    const seen = new Set<string>();
    const queue = [...html.matchAll(/(?:src|href)="(\/ui\/[^"]+)"/g)].map((m) => m[1]!);
    expect(queue).toEqual(expect.arrayContaining(['/ui/app.js', '/ui/style.css', '/ui/vendor/uPlot.min.css']));
    while (queue.length) {
      const u = queue.shift()!;
      if (seen.has(u)) continue;
      seen.add(u);
      const r = await app.request(u);
      expect(r.status, u).toBe(200);
      const text = await r.text();
      if (u.endsWith('.js')) {
        expect(r.headers.get('content-type'), u).toContain('javascript');
        for (const { path: spec } of new Bun.Transpiler({ loader: 'js' }).scanImports(text)) {
          expect(spec, `${u} imports ${spec}`).toStartWith('/ui/');
          queue.push(spec);
        }
      }
    }
    expect([...seen]).toEqual(expect.arrayContaining(['/ui/api.js', '/ui/chart.js', '/ui/lineage.js', '/ui/client.js', '/ui/vendor/uPlot.esm.js', '/ui/vendor/openapi-fetch.js']));
  });

  test('only import statements are rewritten, and an import /ui does not serve is refused', () => {
    const js = toBrowserModule('import uPlot from "uplot";\nexport const k = (x: string) => (x === "import" ? "import" : "base");\nvoid uPlot;');
    expect(js).toContain('from "/ui/vendor/uPlot.esm.js"');
    expect(js).toContain('"import" ? "import" : "base"');
    expect(() => toBrowserModule('import x from "left-pad";\nvoid x;')).toThrow('left-pad');
  });

  test('unknown files are 404 problems; nothing outside ui/ is reachable', async () => {
    for (const p of ['/ui/nope.js', '/ui/tsconfig.json', '/ui/..%2Fpackage.json', '/ui/vendor/uPlot.d.ts']) {
      const r = await app.request(p);
      expect(r.status, p).toBe(404);
    }
  });

  test('ui/*.ts type-check (tsc -p ui)', () => {
    const p = Bun.spawnSync(['bunx', 'tsc', '--noEmit', '-p', 'ui'], { cwd: ROOT, stdout: 'pipe', stderr: 'pipe' });
    expect(p.stdout.toString() + p.stderr.toString()).toBe('');
    expect(p.exitCode).toBe(0);
  }, 60_000);
});
