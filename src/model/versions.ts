// Loading a stored model version (base checkpoint or snapshot) and keeping a few on the GPU.
import { isAbsolute, join } from 'node:path';
import type { Engine } from '../gpu/engine.ts';
import type { ResolvedVersion } from '../services.ts';
import { loadModelFromPath, type LoadedModel } from './registry.ts';
import { TransformerModel } from './transformer.ts';
import { Generator } from './generate.ts';

/** Absolute path of a stored file: relative paths (bundled models) are under the repository root. */
export function resolvePath(repoRoot: string, p: string): string {
  return isAbsolute(p) ? p : join(repoRoot, p);
}

/** The tokenizer file named by a model's registration config, if any. */
export function tokenizerPathOf(repoRoot: string, config: Record<string, unknown>): string | undefined {
  const t = config.tokenizer ?? config.tokenizer_path;
  return typeof t === 'string' ? resolvePath(repoRoot, t) : undefined;
}

/** CPU weights and tokenizer of a version. */
export function loadVersion(repoRoot: string, v: ResolvedVersion): LoadedModel {
  return loadModelFromPath(resolvePath(repoRoot, v.path), { tokenizerPath: tokenizerPathOf(repoRoot, v.config) });
}

export interface LiveModel {
  key: string;
  loaded: LoadedModel;
  model: TransformerModel;
  generator: Generator;
}

/** Serialises GPU work of requests so one request's read-backs are not delayed by another's. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();
  async run<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.tail;
    let release!: () => void;
    this.tail = new Promise((r) => (release = r));
    await prev;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

/**
 * Uploaded models by content hash (a version is immutable), least recently used first out.
 * Generation from a knot uploads its merged weights: the same shapes and cost as the base model.
 */
export class ModelCache {
  private live = new Map<string, LiveModel>();
  constructor(
    readonly e: Engine,
    readonly repoRoot: string,
    readonly capacity = 4,
  ) {}

  get(v: ResolvedVersion): LiveModel {
    const key = v.sha256;
    const hit = this.live.get(key);
    if (hit) {
      this.live.delete(key);
      this.live.set(key, hit);
      return hit;
    }
    const loaded = loadVersion(this.repoRoot, v);
    while (this.live.size >= this.capacity) {
      const [k, old] = this.live.entries().next().value as [string, LiveModel];
      old.generator.free();
      old.model.free();
      this.live.delete(k);
    }
    const model = TransformerModel.upload(this.e, loaded.weights);
    const entry = { key, loaded, model, generator: new Generator(this.e, model, loaded.tokenizer) };
    this.live.set(key, entry);
    return entry;
  }

  clear(): void {
    for (const m of this.live.values()) {
      m.generator.free();
      m.model.free();
    }
    this.live.clear();
  }
}
