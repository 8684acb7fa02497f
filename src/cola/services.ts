// The CPU model services (src/services.ts ports) assembled from where each lives: model import
// and weights export in src/model/import-export.ts; adapter validation, merge and the adapter
// archive in src/cola/adapter.ts.
import { join, resolve } from 'node:path';
import type { AdapterValidator, ExportService, MergeService, ModelImporter } from '../services.ts';
import { createModelImporter, createWeightsExporter, GiB } from '../model/import-export.ts';
import { createAdapterExporter, createAdapterValidator, createMergeService, MAX_ADAPTER_BYTES } from './adapter.ts';

export { archConfigOf } from './adapter.ts';

export interface ModelServicesOptions {
  /** Repository root: relative version paths (the bundled model) are resolved against it. */
  repoRoot: string;
  /** Where converted safetensors exports are cached (default `<repoRoot>/data/exports`). */
  exportDir?: string;
  /** Largest model checkpoint file accepted by import (default 16 GiB). */
  maxModelFileBytes?: number;
  /** Largest adapter_model.safetensors (or adapter ZIP) accepted (default 2 GiB). */
  maxAdapterBytes?: number;
}

export interface ModelServices {
  importer: ModelImporter;
  adapterValidator: AdapterValidator;
  merge: MergeService;
  exporter: ExportService;
}

/**
 * The CPU model services. Wire as
 * `createModelServices({ repoRoot: config.repoRoot, exportDir: path.join(config.dataDir, 'exports') })`.
 */
export function createModelServices(opts: ModelServicesOptions): ModelServices {
  const repoRoot = resolve(opts.repoRoot);
  const exportDir = resolve(opts.exportDir ?? join(repoRoot, 'data', 'exports'));
  const maxModelFileBytes = opts.maxModelFileBytes ?? 16 * GiB;
  const maxAdapterBytes = opts.maxAdapterBytes ?? MAX_ADAPTER_BYTES;
  return {
    importer: createModelImporter({ maxModelFileBytes }),
    adapterValidator: createAdapterValidator({ maxAdapterBytes }),
    merge: createMergeService({ repoRoot, maxAdapterBytes }),
    exporter: {
      weightsFile: createWeightsExporter({ repoRoot, exportDir, maxModelFileBytes }),
      adapterFile: createAdapterExporter({ repoRoot, exportDir, maxAdapterBytes }),
    },
  };
}
