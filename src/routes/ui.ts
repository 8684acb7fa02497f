// The dashboard at /ui: plain ES modules, no build step. ui/*.ts are TypeScript checked by `tsc`
// with the rest of the repository (they use the typed client's shapes) and served as JavaScript
// transpiled by Bun on first request; uPlot and openapi-fetch come from node_modules, the client
// from client/index.ts. Nothing is loaded from outside this server.
import fs from 'node:fs';
import path from 'node:path';
import type { App, AppDeps } from './deps.ts';
import { fileResponse, packageDir, pageSecurityHeaders } from './assets.ts';

/** Bare and relative imports of the ui modules → the URLs this route serves them at. */
const IMPORTS: Record<string, string> = {
  uplot: '/ui/vendor/uPlot.esm.js',
  'openapi-fetch': '/ui/vendor/openapi-fetch.js',
  '../client/index.ts': '/ui/client.js',
  './api.ts': '/ui/api.js',
  './chart.ts': '/ui/chart.js',
  './lineage.ts': '/ui/lineage.js',
};

const transpiler = new Bun.Transpiler({ loader: 'ts', target: 'browser' });

/** A TypeScript module as browser JavaScript with its imports pointed at /ui URLs. */
export function toBrowserModule(source: string): string {
  let js = transpiler.transformSync(source);
  // Only import/export statements (at a line start, as the transpiler prints them), never string literals.
  js = js.replace(/^(\s*(?:import|export)\b[^;"'`]*?(?:from\s*|import\s*))"([^"]+)"/gm, (m, pre: string, spec: string) => {
    if (IMPORTS[spec]) return `${pre}"${IMPORTS[spec]}"`;
    if (spec.startsWith('/ui/')) return m;
    throw new Error(`ui module imports "${spec}", which /ui does not serve`);
  });
  const imports = new Bun.Transpiler({ loader: 'js' }).scanImports(js).map((i) => i.path);
  const stray = imports.find((p) => !p.startsWith('/ui/'));
  if (stray) throw new Error(`ui module imports "${stray}", which /ui does not serve`);
  return js;
}

export function uiRoutes(app: App, d: AppDeps) {
  const uiDir = path.join(d.config.repoRoot, 'ui');
  const modules = new Map<string, string>(); // built once per process (the sources do not change under a running server)
  const js = (file: string) => {
    let m = modules.get(file);
    if (m === undefined) {
      m = toBrowserModule(fs.readFileSync(file, 'utf8'));
      modules.set(file, m);
    }
    return new Response(m, { headers: { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': 'no-cache' } });
  };
  const vendor: Record<string, string> = {
    'uPlot.esm.js': path.join(packageDir('uplot'), 'dist/uPlot.esm.js'),
    'uPlot.min.css': path.join(packageDir('uplot'), 'dist/uPlot.min.css'),
    'openapi-fetch.js': path.join(packageDir('openapi-fetch'), 'dist/index.mjs'),
  };
  app.use('/ui', pageSecurityHeaders);
  app.use('/ui/*', pageSecurityHeaders);
  app.get('/ui', (c) => fileResponse(path.join(uiDir, 'index.html')) ?? c.notFound());
  app.get('/ui/', (c) => c.redirect('/ui'));
  app.get('/ui/client.js', () => js(path.join(d.config.repoRoot, 'client/index.ts')));
  app.get('/ui/vendor/:file', (c) => {
    const f = vendor[c.req.param('file')];
    return (f && fileResponse(f)) || c.notFound();
  });
  app.get('/ui/:file', (c) => {
    const name = c.req.param('file');
    // Only plain names of files in ui/ (no path from the request reaches the file system).
    const listed = fs.readdirSync(uiDir);
    if (name.endsWith('.js') && listed.includes(name.replace(/\.js$/, '.ts'))) return js(path.join(uiDir, name.replace(/\.js$/, '.ts')));
    if (listed.includes(name) && /\.(css|png|svg)$/.test(name)) return fileResponse(path.join(uiDir, name)) ?? c.notFound();
    return c.notFound();
  });
}
