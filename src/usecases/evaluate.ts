// POST /evaluate: a version's loss and accuracy on inline examples or an uploaded file, scored by
// the evaluation service (model/service.ts) with the answer tokens of model/answer.ts.
import { MAX_FILE_LIMIT_BYTES } from '../config.ts';
import { getFile, readFileExamples } from '../db/repos/files.ts';
import type { Tenant } from '../db/schema.ts';
import { ProblemError } from '../domain/errors.ts';
import type { Example } from '../services.ts';
import { notWired } from './adapters.ts';
import { resolveVersion, type UseCaseDeps } from './common.ts';

export interface EvaluateInput {
  model: string;
  version?: number;
  /** Inline examples, or `file` (one of the two, checked by the route's schema). */
  examples?: Example[];
  file?: string;
}

export async function evaluate(d: UseCaseDeps, t: Tenant, b: EvaluateInput, signal?: AbortSignal) {
  const r = await resolveVersion(d, t, b.model, b.version ?? null);
  let examples = b.examples;
  if (b.file) {
    const f = await getFile(d.db, t.id, b.file);
    if (!f) throw new ProblemError(404, `file ${b.file} not found`);
    examples = await readFileExamples<Example>(f, MAX_FILE_LIMIT_BYTES);
  }
  if (!d.services.evaluation) throw notWired('evaluation');
  if (!examples) throw new ProblemError(400, 'give "examples" or "file"');
  return d.services.evaluation.evaluate({ tenant: t.id, target: r.resolved, examples, signal });
}
