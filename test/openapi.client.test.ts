// The OpenAPI document is the contract apps integrate through: it validates under a standard
// validator (swagger-parser), every path parameter is required, every authenticated operation
// documents its problem+json errors, and client/schema.d.ts (the typed client's types) is what
// `bun run client:gen` makes of it now (a drifted route fails here, not in a user's build).
import fs from 'node:fs';
import { describe, expect, test } from 'bun:test';
import SwaggerParser from '@apidevtools/swagger-parser';
import { openapiDocument } from '../src/openapi.ts';
import { generateSchema, SCHEMA_FILE } from '../scripts/client-gen.ts';

type Op = { parameters?: { name: string; in: string; required?: boolean }[]; requestBody?: { content: Record<string, unknown> }; responses: Record<string, { content?: Record<string, unknown> }>; security?: unknown[] };
const METHODS = ['get', 'put', 'post', 'delete', 'patch'];

describe('the OpenAPI document', () => {
  const doc = openapiDocument() as { paths: Record<string, Record<string, Op>>; components: { schemas: Record<string, unknown> } };
  const ops = Object.entries(doc.paths).flatMap(([p, item]) => METHODS.filter((m) => item[m]).map((m) => ({ p, m, op: item[m]! })));

  test('validates under @apidevtools/swagger-parser (OpenAPI 3.1)', async () => {
    await SwaggerParser.validate(structuredClone(doc) as never);
    // and the validator is not a no-op: a path parameter left optional is refused
    const bad = structuredClone(doc);
    bad.paths['/finetune/{id}']!.get!.parameters!.find((x) => x.name === 'id')!.required = false;
    await expect(SwaggerParser.validate(bad as never)).rejects.toThrow(/required/i);
  });

  test('every path parameter is declared and required', () => {
    for (const { p, m, op } of ops) {
      const names = [...p.matchAll(/\{([^}]+)\}/g)].map((x) => x[1]);
      for (const n of names) {
        const prm = op.parameters?.find((x) => x.in === 'path' && x.name === n);
        expect(prm, `${m} ${p} {${n}}`).toBeDefined();
        expect(prm!.required, `${m} ${p} {${n}}`).toBe(true);
      }
    }
  });

  test('every operation has a success schema; authenticated ones their 401/500 problems, bodies 400/413/415', () => {
    const problem = (op: Op, s: string) => op.responses[s]?.content?.['application/problem+json'];
    expect(ops.length).toBeGreaterThan(30);
    for (const { p, m, op } of ops) {
      const ok = Object.keys(op.responses).filter((s) => s.startsWith('2'));
      expect(ok.length, `${m} ${p}`).toBeGreaterThan(0);
      for (const s of ok) expect(op.responses[s]!.content, `${m} ${p} ${s}`).toBeDefined();
      const isPublic = Array.isArray(op.security) && op.security.length === 0;
      if (!isPublic) for (const s of ['401', '500']) expect(problem(op, s), `${m} ${p} ${s}`).toBeDefined();
      if (!isPublic && !p.startsWith('/admin/')) expect(problem(op, '429'), `${m} ${p} 429`).toBeDefined();
      if (op.requestBody) for (const s of ['400', '413', '415']) expect(problem(op, s), `${m} ${p} ${s}`).toBeDefined();
      // (GET /readyz's 503 is its JSON readiness report, not a problem)
      if (!isPublic) for (const [s, r] of Object.entries(op.responses)) if (Number(s) >= 400 && r.content) expect(Object.keys(r.content), `${m} ${p} ${s}`).toEqual(['application/problem+json']);
    }
    // the routes served outside app.openapi are described, and the SSE payloads are named schemas
    expect(doc.paths['/docs']?.get).toBeDefined();
    expect(doc.paths['/openapi.json']?.get).toBeDefined();
    expect(Object.keys(doc.components.schemas)).toEqual(expect.arrayContaining(['Problem', 'Job', 'JobEvents', 'GenerateEvents', 'GenerateResponse']));
  });

  test('client/schema.d.ts is what `bun run client:gen` generates now (no diff)', async () => {
    const fresh = await generateSchema();
    expect(fs.readFileSync(SCHEMA_FILE, 'utf8') === fresh, 'client/schema.d.ts is stale: run `bun run client:gen`').toBe(true);
    expect(fresh).toContain('"/finetune/{id}/events"');
  });
});
