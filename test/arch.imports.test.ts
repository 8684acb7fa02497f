// Imports go one way (docs/ARCHITECTURE.md): entry → routes → usecases → jobs → cola/eval →
// model → store/db → gpu → util, with src/domain and the port files (services.ts, config.ts)
// below everything that uses them. This test reads every import of src/ (static, type-only,
// re-exports and dynamic import()) with TypeScript's own pre-processor and fails on an import
// against that direction, naming the file and the import.
import { describe, expect, test } from 'bun:test';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';

const SRC = resolve(import.meta.dir, '../src');

/** Layer of a file under src/: its first folder, or a name for the top-level files. */
function layerOf(file: string): string {
  const rel = relative(SRC, file).replaceAll('\\', '/');
  const [head, ...rest] = rel.split('/');
  if (rest.length === 0) {
    if (head === 'services.ts' || head === 'config.ts' || head === 'types.d.ts') return 'ports';
    return 'entry'; // main.ts, app.ts, wiring.ts: assemble everything
  }
  return head!;
}

const BELOW_MODEL = ['store', 'db', 'gpu', 'util', 'domain', 'ports'];
/** What each layer may import (its own folder included). */
export const ALLOWED: Record<string, readonly string[]> = {
  util: ['util'],
  domain: ['domain', 'util'],
  ports: ['ports', 'domain', 'util'],
  gpu: ['gpu', 'util'],
  db: ['db', 'domain', 'util', 'ports'],
  store: ['store', 'domain', 'util', 'ports'],
  model: ['model', ...BELOW_MODEL],
  eval: ['eval', 'model', ...BELOW_MODEL],
  cola: ['cola', 'eval', 'model', ...BELOW_MODEL],
  jobs: ['jobs', 'cola', 'eval', 'model', ...BELOW_MODEL],
  usecases: ['usecases', 'jobs', 'cola', 'eval', 'model', ...BELOW_MODEL],
  routes: ['routes', 'usecases', 'jobs', 'cola', 'eval', 'model', ...BELOW_MODEL],
  entry: ['entry', 'routes', 'usecases', 'jobs', 'cola', 'eval', 'model', ...BELOW_MODEL],
};

function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...tsFiles(p));
    else if (p.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** Every relative import of a file that resolves inside src/ (static, type-only, re-export, dynamic). */
export function importsOf(file: string): string[] {
  const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
  return info.importedFiles.map((f) => f.fileName).filter((s) => s.startsWith('.')).map((s) => resolve(dirname(file), s)).filter((p) => p.startsWith(SRC + '/'));
}

/** "file → import (layer → layer)" for each import against the direction. */
export function violations(files: string[]): string[] {
  const bad: string[] = [];
  for (const f of files) {
    const from = layerOf(f);
    const allowed = ALLOWED[from];
    for (const target of importsOf(f)) {
      const to = layerOf(target);
      if (!allowed || !allowed.includes(to)) bad.push(`${relative(SRC, f)} → ${relative(SRC, target)} (${from} → ${to})`);
    }
  }
  return bad;
}

describe('import direction', () => {
  const files = tsFiles(SRC);

  test('every folder of src/ is a known layer', () => {
    const unknown = [...new Set(files.map(layerOf))].filter((l) => !(l in ALLOWED));
    expect(unknown).toEqual([]);
  });

  test('no import against the direction', () => {
    expect(files.length).toBeGreaterThan(50);
    expect(violations(files)).toEqual([]);
  });

  test('the check sees a wrong-way import (db → jobs, gpu → model, jobs → routes)', () => {
    expect(layerOf(join(SRC, 'db/repos/jobs.ts'))).toBe('db');
    expect(ALLOWED.db!.includes('jobs')).toBe(false);
    expect(ALLOWED.gpu!.includes('model')).toBe(false);
    expect(ALLOWED.jobs!.includes('routes')).toBe(false);
    // and the pre-processor finds type-only, re-exported and dynamic imports
    const src = "import type { A } from '../jobs/x.ts';\nexport { B } from './y.ts';\nconst m = await import('../routes/z.ts');\n";
    expect(ts.preProcessFile(src, true, true).importedFiles.map((f) => f.fileName)).toEqual(['../jobs/x.ts', './y.ts', '../routes/z.ts']);
  });
});
