// The LoRA adapters of one link: creation with reproducible initial values, upload, read-back.
//
// Initialisation (MISSION.md): A Gaussian, B zero, so a fresh link leaves the model unchanged.
// A ~ N(0, σ²) with σ = 1/r, the variance PEFT uses for init_lora_weights="gaussian". The values
// come from a stream seeded by (seed, link index, layer, module), so a run, and a run resumed at a
// knot, draws exactly the same A for every link whatever happened before.
import type { Engine, Tensor } from '../gpu/engine.ts';
import type { LoraModule, LoraWeights } from '../model/transformer.ts';
import type { ModelConfig } from '../model/config.ts';
import { hasBias } from '../model/names.ts';
import { Rng, mixSeed } from '../util/rng.ts';
import { ColaConfigError } from './errors.ts';
import { layerModules, resolveTargets, type ArchConfig } from './modules.ts';

const LORA_INIT_STREAM = 0x4c4f5241; // "LORA": keeps A's stream apart from data shuffling

export interface LoraSpec {
  /** Short module names (src/cola/modules.ts), already resolved for the architecture. */
  targets: string[];
  rank: number;
  alpha: number;
  /** A trainable bias on each adapted module (merged into the module's bias). */
  bias: boolean;
}

/** CPU values of one link's adapters, keyed `${layer}.${short}`. */
export interface LoraHost {
  rank: number;
  alpha: number;
  scale: number;
  /** scale = alpha/√r (rsLoRA), as an init_adapter may ask; its knot's PEFT export says so. */
  rslora?: boolean;
  modules: Map<string, { in: number; out: number; a: Float32Array /* (r,in) */; b: Float32Array /* (out,r) */; bias?: Float32Array /* (out) */ }>;
}

export function archConfigOf(c: ModelConfig): ArchConfig {
  return { architecture: c.arch, dim: c.dim, nLayers: c.nLayers, nHeads: c.nHeads, nKvHeads: c.nKvHeads, hiddenDim: c.hiddenDim, vocabSize: c.vocabSize, headDim: c.headDim };
}

/** Resolves request target names for the model; checks the LoRA bias is mergeable. */
export function resolveLoraSpec(c: ModelConfig, req: { targets: readonly string[]; rank: number; alpha: number; bias: boolean }): LoraSpec {
  const mods = resolveTargets(archConfigOf(c), req.targets);
  const noBias = mods.filter((m) => !hasBias(c, m.short)).map((m) => m.short);
  if (req.bias && noBias.length > 0) {
    throw new ColaConfigError('lora.bias', `${c.family} has no bias on ${noBias.join(', ')}, so a LoRA bias there could not be merged into the weights`);
  }
  return { targets: mods.map((m) => m.short), rank: req.rank, alpha: req.alpha, bias: req.bias };
}

/** Fresh adapters for link `link`: A ~ N(0, (1/r)²) from (seed, link, layer, module), B = 0, bias = 0. */
export function initLoraHost(c: ModelConfig, spec: LoraSpec, rank: number, seed: number, link: number): LoraHost {
  const mods = layerModules(archConfigOf(c)).filter((m) => spec.targets.includes(m.short));
  const modules: LoraHost['modules'] = new Map();
  for (let layer = 0; layer < c.nLayers; layer++) {
    mods.forEach((m, mi) => {
      const rng = new Rng(mixSeed(seed, link, layer, mi, LORA_INIT_STREAM));
      modules.set(`${layer}.${m.short}`, {
        in: m.in,
        out: m.out,
        a: rng.normalArray(rank * m.in, 1 / rank),
        b: new Float32Array(m.out * rank),
        bias: spec.bias ? new Float32Array(m.out) : undefined,
      });
    });
  }
  return { rank, alpha: spec.alpha, scale: spec.alpha / rank, modules };
}

/** Uploads adapters as trainable GPU tensors. */
export function uploadLora(e: Engine, host: LoraHost): LoraWeights {
  const modules = new Map<string, LoraModule>();
  for (const [key, m] of host.modules) {
    modules.set(key, {
      a: e.upload(m.a, [host.rank, m.in]),
      b: e.upload(m.b, [m.out, host.rank]),
      bias: m.bias ? e.upload(m.bias, [m.out]) : undefined,
    });
  }
  return { scale: host.scale, modules };
}

/** Reads adapters back from the GPU. */
export async function readLora(e: Engine, lora: LoraWeights, host: LoraHost): Promise<LoraHost> {
  const entries = [...lora.modules];
  const flat = await e.readManyF32(entries.flatMap(([, m]) => (m.bias ? [m.a, m.b, m.bias] : [m.a, m.b])));
  const modules: LoraHost['modules'] = new Map();
  let i = 0;
  for (const [key, m] of entries) {
    const h = host.modules.get(key)!;
    modules.set(key, { in: h.in, out: h.out, a: flat[i++]!, b: flat[i++]!, bias: m.bias ? flat[i++]! : undefined });
  }
  return { ...host, modules };
}

export function freeLora(lora: LoraWeights): void {
  for (const m of lora.modules.values()) {
    m.a.free();
    m.b.free();
    m.bias?.free();
  }
}

/** Trainable tensors in a fixed order (optimizer state and gradient clipping follow it). */
export function loraParams(lora: LoraWeights): { key: string; kind: 'a' | 'b' | 'bias'; t: Tensor }[] {
  const out: { key: string; kind: 'a' | 'b' | 'bias'; t: Tensor }[] = [];
  for (const [key, m] of lora.modules) {
    out.push({ key, kind: 'a', t: m.a }, { key, kind: 'b', t: m.b });
    if (m.bias) out.push({ key, kind: 'bias', t: m.bias });
  }
  return out;
}
