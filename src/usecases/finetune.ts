// Fine-tune use cases: submit a job (POST /finetune) and tie a knot now in a running one
// (POST /merge {job}). The request arrives validated by its zod schema (FinetuneRequestBody); the
// model-dependent checks the runner would make are made here, at admission (admitFinetune), so a
// request the service cannot run is a 400 with the field, never a 202 and a failed job. The job
// and its first event are written in one transaction (jobs/transitions.ts submit).
import { getAdapter, getFile, tenantStoredBytes } from '../db/repos/files.ts';
import { countActiveJobs, getJob } from '../db/repos/jobs.ts';
import { findModel } from '../db/repos/models.ts';
import { newId } from '../db/ids.ts';
import type { Tenant } from '../db/schema.ts';
import { ProblemError } from '../domain/errors.ts';
import type { FinetuneRequestBody } from '../domain/schemas.ts';
import { admitFinetune } from '../cola/runner.ts';
import { ChatTemplate } from '../model/chat.ts';
import { configFromRegistration } from '../model/config.ts';
import { chatTemplateOf } from '../model/versions.ts';
import { requestCancel, requestKnot as markKnotRequested, submit } from '../jobs/transitions.ts';
import type { Job } from '../db/schema.ts';
import { absPath, quotaExceeded, quotasOf, refuseSharedName, resolveVersion, type UseCaseDeps } from './common.ts';

export async function submitFinetune(d: UseCaseDeps, t: Tenant, body: FinetuneRequestBody): Promise<{ id: string; status: 'queued'; output_model: string }> {
  const base = await resolveVersion(d, t, body.model, body.version ?? null);
  const trainFile = body.training_file ? await getFile(d.db, t.id, body.training_file) : null;
  if (body.training_file && !trainFile) throw new ProblemError(404, `file ${body.training_file} not found`);
  if (body.validation_file && !(await getFile(d.db, t.id, body.validation_file))) throw new ProblemError(404, `file ${body.validation_file} not found`);
  const adapter = body.init_adapter ? await getAdapter(d.db, t.id, body.init_adapter) : null;
  if (body.init_adapter && !adapter) throw new ProblemError(404, `adapter ${body.init_adapter} not found`);
  if (body.output_model) await refuseSharedName(d, body.output_model, 'output_model');
  // Chat examples need the base model's chat template.
  const chatAt = [...(body.train ?? []).map((x, i) => ['train', i, x] as const), ...(body.validation ?? []).map((x, i) => ['validation', i, x] as const)].find(([, , x]) => 'messages' in x);
  if (chatAt) {
    const tpl = chatTemplateOf(d.config.repoRoot, base.model.config);
    if (!(tpl instanceof ChatTemplate)) {
      const why = tpl ? `its chat template is unusable: ${tpl.message}` : 'it has no chat template (tokenizer_config.json "chat_template")';
      const path = `${chatAt[0]}[${chatAt[1]}].messages`;
      throw new ProblemError(400, `${path}: model "${base.model.name}" cannot train on chat examples: ${why}`, { errors: [{ path, message: why }] });
    }
  }
  // What the runner would refuse is refused now (400 with the field), not after a 202.
  admitFinetune(
    body,
    configFromRegistration(base.model.config),
    body.train?.length ?? trainFile?.examples ?? 0,
    adapter ? { config: adapter.config, path: absPath(d, adapter.path) } : undefined,
    { trainMemoryBytes: d.config.trainMemoryBytes },
  );
  const q = quotasOf(d, t);
  if ((await countActiveJobs(d.db, t.id)) >= q.concurrent_jobs) {
    throw quotaExceeded(q.concurrent_jobs, 30, `concurrent job quota of ${q.concurrent_jobs} reached; wait for a job to finish or cancel one`);
  }
  if ((await tenantStoredBytes(d.db, t.id)) >= q.stored_bytes) throw quotaExceeded(q.stored_bytes, 3600, `stored bytes quota of ${q.stored_bytes} reached; delete data first`);
  const id = newId('job');
  const outputModel = body.output_model ?? `${base.model.name}-${id}`;
  // Created with the job's first knot (jobs/transitions.ts recordKnot), never empty.
  const out = await findModel(d.db, t.id, outputModel);
  if (out && out.tenantId === t.id && out.architecture !== base.model.architecture) {
    throw new ProblemError(409, `output model "${outputModel}" exists with architecture ${out.architecture}, not ${base.model.architecture}`);
  }
  const job = await submit(d.db, {
    id,
    tenantId: t.id,
    request: body,
    baseModelId: base.model.id,
    baseModelName: base.model.name,
    baseVersion: base.version.version,
    outputModel,
  });
  if (d.queue) await d.queue.enqueue(job.id);
  return { id: job.id, status: 'queued', output_model: outputModel };
}

/**
 * Ties a knot in a running job now: marks the request (the worker ties it at its next step) and
 * waits up to `timeout_s` for the knot's version. 409 when the job is not running, 504 on timeout
 * (the request stays pending).
 */
export async function requestKnot(d: UseCaseDeps, t: Tenant, input: { job: string; timeout_s: number }): Promise<{ model: string; version: number }> {
  const j = await getJob(d.db, t.id, input.job);
  if (!j) throw new ProblemError(404, 'job not found');
  if (j.status !== 'running') throw new ProblemError(409, `job is ${j.status}, not running: a knot can only be tied in a running job`);
  const knotsBefore = j.knots.length;
  if (!(await markKnotRequested(d.db, t.id, j.id))) throw new ProblemError(409, 'job is no longer running');
  const deadline = Date.now() + input.timeout_s * 1000;
  while (Date.now() < deadline) {
    await Bun.sleep(200);
    const cur = await getJob(d.db, t.id, j.id);
    if (!cur) throw new ProblemError(404, 'job not found');
    if (cur.knots.length > knotsBefore) return { model: cur.outputModel, version: cur.knots[cur.knots.length - 1]!.version };
    if (cur.status !== 'running') throw new ProblemError(409, `job became ${cur.status} before the knot was tied`);
  }
  throw new ProblemError(504, `the job did not tie the knot within ${input.timeout_s} s; the request stays pending and the job ties it at its next step`);
}

/** Cancels a job: a queued one at once, a running one at its next step (knots already tied stay). 409 when it already finished. */
export async function cancelFinetune(d: UseCaseDeps, t: Tenant, id: string): Promise<Job> {
  const j = await getJob(d.db, t.id, id);
  if (!j) throw new ProblemError(404, 'job not found');
  const r = await requestCancel(d.db, t.id, id);
  if (!r) throw new ProblemError(409, `job is already ${(await getJob(d.db, t.id, id))?.status ?? j.status}`);
  return (await getJob(d.db, t.id, id))!;
}
