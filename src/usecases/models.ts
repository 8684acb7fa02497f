// Model use cases: import a model (POST /models, from a server path under an import root or from
// uploaded files staged in the store) and the files a version exports. The base version row is
// written in one transaction that also guards the store files it references against a concurrent
// delete.
import fs from 'node:fs';
import path from 'node:path';
import { tenantStoredBytes } from '../db/repos/files.ts';
import { createModel, findModel, guardStorePaths, guardTensorObjects, insertBaseVersion } from '../db/repos/models.ts';
import { isManifestPath, manifestStream } from '../model/snapshots.ts';
import type { Tenant } from '../db/schema.ts';
import { ProblemError } from '../domain/errors.ts';
import { notWired } from './adapters.ts';
import { absPath, quotaExceeded, quotasOf, refuseSharedName, resolveVersion, tensorPaths, type UseCaseDeps } from './common.ts';

/** Server paths a tenant may import from: the repository's models/ and <data dir>/imports/. */
export function importRoots(d: Pick<UseCaseDeps, 'config'>): string[] {
  return [path.join(d.config.repoRoot, 'models'), path.join(d.config.dataDir, 'imports')];
}

/** Weight precision of an import: the checkpoint's own, or every tensor converted. */
export type WeightsDtype = 'auto' | 'f32' | 'f16' | 'bf16';

/** A model to import: a folder or file on the server (`sourcePath`) or uploaded files (names already checked). */
export type ImportInput = { name: string; dtype: WeightsDtype } & ({ sourcePath: string; uploads?: undefined } | { uploads: readonly File[]; sourcePath?: undefined });

export async function importModel(d: UseCaseDeps, t: Tenant, input: ImportInput): Promise<{ name: string; version: 0 }> {
  const { name } = input;
  let source: string | null = null;
  if (input.sourcePath !== undefined) {
    const p = path.resolve(input.sourcePath);
    if (!importRoots(d).some((root) => p === root || p.startsWith(root + path.sep))) {
      throw new ProblemError(400, "source.path must lie under the repository's models/ folder or <data dir>/imports/ on the server");
    }
    source = p;
  }
  const importer = d.services.importer;
  if (!importer) throw notWired('model import');
  const own = async () => (await findModel(d.db, t.id, name))?.tenantId === t.id;
  if (await own()) throw new ProblemError(409, `model "${name}" already exists`);
  await refuseSharedName(d, name, 'name');
  const q = quotasOf(d, t);
  const uploadBytes = (input.uploads ?? []).reduce((n, f) => n + f.size, 0);
  const stored = await tenantStoredBytes(d.db, t.id);
  if (stored >= q.stored_bytes || stored + uploadBytes > q.stored_bytes) throw quotaExceeded(q.stored_bytes);
  // Everything is checked before a byte is written; an upload then goes into a fresh folder of the
  // store that is removed on every path out (the importer copies what it keeps).
  let staged: string | null = null;
  try {
    if (source === null) source = staged = await d.store.stageUpload(input.uploads ?? []);
    const imp = await importer.import({ source, storeDir: d.store.weightsDir, dtype: input.dtype });
    const tok = [imp.config['tokenizer'], imp.config['tokenizer_model']].filter((x): x is string => typeof x === 'string').map((p) => path.dirname(p));
    await d.db
      .transaction(async (tx) => {
        // A concurrent delete must not remove the (shared, content-addressed) files this row will reference.
        await guardStorePaths(tx, [imp.weights.path, ...tok], fs.existsSync);
        await guardTensorObjects(tx, tensorPaths(d, imp.weights), fs.existsSync);
        const m = await createModel(tx, { tenantId: t.id, name, architecture: imp.architecture, params: imp.params, config: imp.config });
        const w = imp.weights;
        await insertBaseVersion(tx, m.id, { sha256: w.sha256, bytes: w.bytes, path: w.path, addedBytes: w.addedBytes ?? null, tensors: w.tensors ?? [] });
      })
      .catch(async (e) => {
        if (await own()) throw new ProblemError(409, `model "${name}" already exists`);
        throw e;
      });
    return { name, version: 0 };
  } finally {
    if (staged) await d.store.discard(staged);
  }
}

/** A file a version exports, for the route to stream. */
import type { ExportedFile } from '../services.ts';
export type { ExportedFile };

/** The merged weights of a version as one safetensors file (converted once when stored otherwise). */
export async function exportWeights(d: UseCaseDeps, t: Tenant, name: string, version: number): Promise<ExportedFile> {
  const r = await resolveVersion(d, t, name, version);
  if (d.services.exporter) return d.services.exporter.weightsFile(r.resolved);
  if (isManifestPath(r.resolved.path)) {
    const s = manifestStream(r.resolved.path);
    return { size: s.size, stream: s.stream, contentType: 'application/octet-stream', filename: `${name}-v${version}.safetensors` };
  }
  if (r.resolved.path.endsWith('.safetensors') && fs.existsSync(r.resolved.path)) {
    return { path: r.resolved.path, contentType: 'application/octet-stream', filename: `${name}-v${version}.safetensors` };
  }
  throw notWired('safetensors export of this version (stored in another format)');
}

/** The PEFT adapter (ZIP) that made a knot or merge version from its parent. */
export async function exportAdapter(d: UseCaseDeps, t: Tenant, name: string, version: number): Promise<ExportedFile> {
  const r = await resolveVersion(d, t, name, version);
  if (r.version.kind === 'base') throw new ProblemError(404, `version ${version} of "${name}" is a base version: it has no adapter`);
  const p = r.version.adapterPath ? absPath(d, r.version.adapterPath) : null;
  if (d.services.exporter) {
    const f = await d.services.exporter.adapterFile({ ...r.resolved, adapterPath: p });
    if (!f) throw new ProblemError(404, `no adapter was kept for version ${version} of "${name}"`);
    return f;
  }
  if (p && p.endsWith('.zip') && fs.existsSync(p)) return { path: p, contentType: 'application/zip', filename: `${name}-v${version}-adapter.zip` };
  throw notWired('adapter export');
}
