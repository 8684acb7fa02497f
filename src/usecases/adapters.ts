// Adapter use cases: upload a PEFT adapter (POST /adapters) and merge one into a version
// (POST /merge {model, version, adapter}). The config is parsed once by the one PEFT config
// parser (cola/peft.ts parsePeftConfig), the weights' header by the one safetensors header parser;
// files go through the injected store; the merged version is written in one transaction.
import fs from 'node:fs';
import crypto from 'node:crypto';
import { createAdapter, getAdapter, tenantStoredBytes } from '../db/repos/files.ts';
import { ensureTenantModel, guardStorePaths, guardTensorObjects, insertVersion } from '../db/repos/models.ts';
import { newId } from '../db/ids.ts';
import type { Tenant } from '../db/schema.ts';
import { ProblemError } from '../domain/errors.ts';
import { UserInputError } from '../services.ts';
import { parsePeftConfig, PeftError, storedPeftConfig, type ParsedPeftConfig } from '../cola/peft.ts';
import { readSafetensorsHeader, SafetensorsError, type SafetensorsHeader } from '../model/safetensors.ts';
import { quotaExceeded, quotasOf, refuseSharedName, resolveVersion, tensorPaths, type UseCaseDeps } from './common.ts';

/** Largest adapter_config.json accepted. */
export const MAX_ADAPTER_CONFIG_BYTES = 1024 * 1024;

/** Size of a file the merge wrote (0 when it is gone): counted in the tenant's stored bytes. */
function fileSize(p: string): number {
  try {
    return fs.statSync(p).size;
  } catch {
    return 0;
  }
}

/** Structural check of an uploaded adapter's safetensors file (the one header parser, model/safetensors.ts). */
export async function checkSafetensors(p: string): Promise<{ tensors: Record<string, { dtype: string; shape: number[] }> }> {
  let h: SafetensorsHeader;
  try {
    h = await readSafetensorsHeader(p);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new UserInputError(`adapter_model.safetensors: ${e.message}`);
    throw e;
  }
  if (h.entries.length === 0) throw new UserInputError('adapter_model.safetensors: no tensors');
  return { tensors: Object.fromEntries(h.entries.map((t) => [t.name, { dtype: t.dtype, shape: t.shape }])) };
}

/** adapter_config.json text → its parsed PEFT LoRA config, or a 400 naming the field. */
export function parseAdapterConfig(text: string): { json: unknown; config: ParsedPeftConfig } {
  if (text.length > MAX_ADAPTER_CONFIG_BYTES) throw new ProblemError(400, 'adapter_config.json over 1 MiB');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ProblemError(400, 'adapter_config.json is not JSON', { errors: [{ path: 'adapter_config.json', message: 'not JSON' }] });
  }
  try {
    return { json, config: parsePeftConfig(json) };
  } catch (e) {
    if (!(e instanceof PeftError)) throw e;
    throw new ProblemError(400, `adapter_config.json is not a usable PEFT LoRA config: ${e.message}`, { errors: [{ path: e.path, message: e.message }] });
  }
}

/** Stores an uploaded adapter after checking both files; returns its id. */
export async function uploadAdapter(d: UseCaseDeps, t: Tenant, input: { configText: string; weights: File }): Promise<{ id: string }> {
  const { json, config: cfg } = parseAdapterConfig(input.configText);
  const q = quotasOf(d, t);
  if ((await tenantStoredBytes(d.db, t.id)) + input.weights.size > q.stored_bytes) throw quotaExceeded(q.stored_bytes, 3600, `stored bytes quota of ${q.stored_bytes} would be exceeded`);
  const id = newId('adp');
  const staged = await d.store.stageAdapter(id, input.weights);
  try {
    await checkSafetensors(staged.weightsPath);
    let config: Record<string, unknown> = { ...storedPeftConfig(cfg) };
    if (d.services.adapterValidator) config = (await d.services.adapterValidator.validate({ config: json, safetensorsPath: staged.weightsPath })).config;
    await staged.install(config);
    const bytes = fs.statSync(staged.weightsPath).size;
    const sha256 = crypto.createHash('sha256').update(new Uint8Array(await Bun.file(staged.weightsPath).arrayBuffer())).digest('hex');
    await createAdapter(d.db, { id, tenantId: t.id, config, path: staged.dir, sha256, bytes });
    return { id };
  } catch (e) {
    await staged.discard();
    throw e;
  }
}

export interface MergeAdapterInput {
  model: string;
  version: number;
  adapter: string;
  scale: number;
  output_model?: string;
}

/** Merges an uploaded adapter into a version: a new 'merge' version of the tenant's model. */
export async function mergeAdapter(d: UseCaseDeps, t: Tenant, b: MergeAdapterInput): Promise<{ model: string; version: number }> {
  const target = await resolveVersion(d, t, b.model, b.version);
  const adapter = await getAdapter(d.db, t.id, b.adapter);
  if (!adapter) throw new ProblemError(404, `adapter ${b.adapter} not found`);
  const outName = b.output_model ?? (target.model.tenantId === t.id ? target.model.name : null);
  if (!outName) throw new ProblemError(409, `"${b.model}" is a shared model: name your own model in "output_model" for the merged version`);
  if (b.output_model) await refuseSharedName(d, b.output_model, 'output_model');
  if (!d.services.merge) throw notWired('adapter merge');
  const q = quotasOf(d, t);
  if ((await tenantStoredBytes(d.db, t.id)) >= q.stored_bytes) throw quotaExceeded(q.stored_bytes, 3600, `stored bytes quota of ${q.stored_bytes} reached`);
  const res = await d.services.merge.mergeAdapter({
    target: target.resolved,
    adapter: { config: adapter.config, path: adapter.path },
    scale: b.scale,
    storeDir: d.store.weightsDir,
  });
  const rank = adapter.config['r'];
  const v = await d.db.transaction(async (tx) => {
    // A concurrent delete must not remove the (shared, content-addressed) files this row will reference.
    await guardStorePaths(tx, [res.weights.path, ...(res.adapterPath ? [res.adapterPath] : [])], fs.existsSync);
    await guardTensorObjects(tx, tensorPaths(d, res.weights), fs.existsSync);
    const out = await ensureTenantModel(tx, { tenantId: t.id, name: outName, architecture: target.model.architecture, params: target.model.params, config: target.model.config });
    const v = await insertVersion(tx, {
      modelId: out.id,
      parentModelId: target.model.id,
      parentVersion: target.version.version,
      kind: 'merge',
      jobId: null,
      link: null,
      rank: typeof rank === 'number' ? rank : null,
      sha256: res.weights.sha256,
      bytes: res.weights.bytes,
      path: res.weights.path,
      addedBytes: res.weights.addedBytes ?? null,
      tensors: res.weights.tensors ?? [],
      adapterPath: res.adapterPath ?? null,
      adapterBytes: res.adapterPath ? fileSize(res.adapterPath) : 0,
      metrics: { adapter: adapter.id, scale: b.scale },
    });
    return { model: out.name, version: v.version };
  });
  return v;
}

/** 501: the service behind a use case is not wired into this server. */
export const notWired = (what: string) =>
  new ProblemError(501, `${what} is not available in this build yet: the service that implements it is not wired into the server`);
