// Loading a stored model version (base checkpoint or snapshot) and keeping a few on the GPU.
import { dirname, isAbsolute, join } from 'node:path';
import type { Engine } from '../gpu/engine.ts';
import type { ResolvedVersion } from '../services.ts';
import { chatOf, loadModelFromPath, type LoadedModel } from './registry.ts';
import { TransformerModel } from './transformer.ts';
import { Generator } from './generate.ts';
import { weightBytes } from './weights.ts';

/** Absolute path of a stored file: relative paths (bundled models) are under the repository root. */
export function resolvePath(repoRoot: string, p: string): string {
  return isAbsolute(p) ? p : join(repoRoot, p);
}

/** The tokenizer file named by a model's registration config, if any. */
export function tokenizerPathOf(repoRoot: string, config: Record<string, unknown>): string | undefined {
  const t = config.tokenizer ?? config.tokenizer_path;
  return typeof t === 'string' ? resolvePath(repoRoot, t) : undefined;
}

/**
 * The chat template beside the tokenizer a model's registration config names (without loading the
 * weights): for admission checks. null when there is none.
 */
export function chatTemplateOf(repoRoot: string, config: Record<string, unknown>): LoadedModel['chat'] {
  const t = tokenizerPathOf(repoRoot, config);
  return t ? chatOf(dirname(t)) : null;
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
  /** Device bytes of the weights (what the cache counts). */
  bytes: number;
}

/** Serialises work of a caller-owned section (tests and tools; the service uses the GPU scheduler). */
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
 * Models resident on the device by content hash (a version is immutable), least recently used
 * first out, bounded by the bytes of their weights. A model in use (pinned by a running sequence,
 * an evaluation, a batch) is never evicted; the cache may then exceed its bound until it is
 * unpinned (the engine's memory budget stays the hard limit). Generation from a knot uploads its
 * merged weights: the same shapes and cost as the base model.
 */
export class ModelCache {
  private live = new Map<string, LiveModel>();
  private pins = new Map<string, number>();
  private held = 0;
  /** Called before a model is freed (e.g. to drop a batch bound to it). */
  onEvict: ((m: LiveModel) => void) | null = null;

  constructor(
    readonly e: Engine,
    readonly repoRoot: string,
    /** Bytes of resident weights kept when unpinned. */
    readonly capacityBytes = 1 << 30,
  ) {}

  get residentBytes(): number {
    return this.held;
  }
  get size(): number {
    return this.live.size;
  }

  /** The version's resident model, uploaded if needed, pinned until `unpin`. */
  pin(v: ResolvedVersion): LiveModel {
    const m = this.get(v);
    this.pins.set(m.key, (this.pins.get(m.key) ?? 0) + 1);
    return m;
  }

  unpin(m: LiveModel): void {
    const n = (this.pins.get(m.key) ?? 0) - 1;
    if (n <= 0) this.pins.delete(m.key);
    else this.pins.set(m.key, n);
    this.evict(0);
  }

  /** The resident model if it is resident (no upload, no change of LRU order). */
  peek(v: ResolvedVersion): LiveModel | undefined {
    return this.live.get(v.sha256);
  }

  /** The resident model (most recently used now); not pinned. */
  get(v: ResolvedVersion): LiveModel {
    const key = v.sha256;
    const hit = this.live.get(key);
    if (hit) {
      this.live.delete(key);
      this.live.set(key, hit);
      return hit;
    }
    const loaded = loadVersion(this.repoRoot, v);
    this.evict(weightBytes(loaded.weights)); // 16-bit tensors at 2 bytes a value
    const model = TransformerModel.upload(this.e, loaded.weights);
    const bytes = model.weightBytes; // what the device holds (norms and biases stay f32)
    const entry: LiveModel = { key, loaded, model, generator: new Generator(this.e, model, loaded.tokenizer), bytes };
    this.live.set(key, entry);
    this.held += bytes;
    return entry;
  }

  /** Frees unpinned models, oldest first, until `incoming` more bytes fit the capacity. */
  private evict(incoming: number): void {
    for (const [k, m] of this.live) {
      if (this.held + incoming <= this.capacityBytes) break;
      if (this.pins.has(k)) continue;
      this.drop(k, m);
    }
  }

  private drop(k: string, m: LiveModel): void {
    this.onEvict?.(m);
    m.generator.free();
    m.model.free();
    this.live.delete(k);
    this.held -= m.bytes;
  }

  /** Frees every model (device loss: the tensors are gone anyway). */
  clear(): void {
    for (const [k, m] of [...this.live]) this.drop(k, m);
    this.pins.clear();
  }
}
