// The service's files under one root (<dataDir>/store), built once at startup and injected
// (AppDeps.store): routes and use cases touch files only through it.
//
//   <root>/weights/              content-addressed snapshots (SnapshotStore: tensor objects, version
//                                manifests, whole-file versions of before, knot ZIPs, lineage
//                                sidecars), tokenizer copies, merged adapters' ZIPs
//   <root>/files/<id>.jsonl      uploaded training/evaluation files (POST /files)
//   <root>/adapters/<id>/        uploaded PEFT adapters (adapter_config.json + adapter_model.safetensors)
//   <root>/uploads/up-*/         model files of a multipart import, removed after the import
//
// Every file is installed atomically (util/atomic.ts); removal refuses anything outside the root
// (the bundled model under the repository is never the store's to remove).
import { mkdirSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { AsyncAtomicFile, writeFileAtomic } from '../util/atomic.ts';
import { SnapshotStore } from './snapshot-store.ts';

export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';

/** An uploaded adapter's folder while it is checked: install() keeps it, discard() removes it. */
export interface StagedAdapter {
  dir: string;
  weightsPath: string;
  install(config: Record<string, unknown>): Promise<void>;
  discard(): Promise<void>;
}

/** Streams a Blob (an uploaded part) into `p` atomically, never holding it whole a second time. */
async function writeBlob(p: string, blob: Blob): Promise<void> {
  const f = await AsyncAtomicFile.open(p);
  try {
    for await (const chunk of blob.stream()) await f.write(chunk);
    await f.commit();
  } finally {
    await f.abort();
  }
}

export class Store {
  readonly root: string;
  /** Directory the model services write snapshots and tokenizers into (SnapshotStore root). */
  readonly weightsDir: string;

  constructor(root: string) {
    this.root = path.resolve(root);
    this.weightsDir = path.join(this.root, 'weights');
  }

  /** The content-addressed snapshots (a view over weightsDir; creating it makes the folder). */
  objects(): SnapshotStore {
    return new SnapshotStore(this.weightsDir);
  }

  /** A new JSONL data file, written under a temporary name until commit(). */
  newDataFile(id: string): Promise<AsyncAtomicFile> {
    return AsyncAtomicFile.open(path.join(this.root, 'files', `${id}.jsonl`), `.tmp-${id}`);
  }

  /** Writes an uploaded adapter's weights into its own folder; its config is written by install(). */
  async stageAdapter(id: string, weights: Blob): Promise<StagedAdapter> {
    const dir = path.join(this.root, 'adapters', id);
    mkdirSync(dir, { recursive: true });
    const weightsPath = path.join(dir, ADAPTER_WEIGHTS_FILE);
    try {
      await writeBlob(weightsPath, weights);
    } catch (e) {
      await fs.rm(dir, { recursive: true, force: true });
      throw e;
    }
    return {
      dir,
      weightsPath,
      install: (config) => writeFileAtomic(path.join(dir, ADAPTER_CONFIG_FILE), new TextEncoder().encode(JSON.stringify(config, null, 2))),
      discard: () => fs.rm(dir, { recursive: true, force: true }),
    };
  }

  /** Writes uploaded model files into a fresh folder; the caller removes it with discard(). */
  async stageUpload(files: readonly File[]): Promise<string> {
    const root = path.join(this.root, 'uploads');
    await fs.mkdir(root, { recursive: true });
    const dir = await fs.mkdtemp(path.join(root, 'up-'));
    try {
      for (const f of files) await writeBlob(path.join(dir, path.basename(f.name)), f);
    } catch (e) {
      await this.discard(dir);
      throw e;
    }
    return dir;
  }

  /** True when `p` lies inside the store. */
  owns(p: string): boolean {
    return path.resolve(p).startsWith(this.root + path.sep);
  }

  /** Removes a store path (file or folder); paths outside the store are left alone. */
  async discard(p: string): Promise<void> {
    if (this.owns(p)) await fs.rm(path.resolve(p), { recursive: true, force: true });
  }

  /** Removes store paths no row references any more, with a snapshot's lineage sidecar. */
  async free(paths: readonly string[]): Promise<void> {
    for (const p of paths) {
      if (!this.owns(p)) continue;
      await this.discard(p);
      if (/\.(safetensors|manifest)$/.test(p)) await this.discard(p.replace(/\.(safetensors|manifest)$/, '.json'));
    }
  }

  /** Removes tensor objects (by digest) that no version references any more; one already gone is fine. */
  async freeTensors(digests: readonly string[]): Promise<void> {
    if (digests.length === 0) return;
    const objects = this.objects();
    for (const d of digests) await this.discard(objects.pathOf(d, 'tensor'));
  }
}
