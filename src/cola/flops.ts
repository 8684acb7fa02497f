// Training FLOPs of LoRA / COLA links, so rank step-down can report the FLOPs it saves against
// LoRA at equal steps (paper Table 4 style).
//
// Accounting (dense matmuls only; one multiply-add = 2 FLOPs; per token processed, padding
// included because the kernels compute on it). With P = Σ_layers Σ_linears in·out + vocab·dim
// (every linear including the lm_head; embedding lookups are free), L = sequence length the
// attention runs over, H·hd = query heads × head dim, nL = layers:
//   forward, frozen base      F_fwd  = 2·P + 4·nL·L·H·hd         (x·Wᵀ; Q·Kᵀ and P·V over the full
//                                                                 L×L score matrix — a causal kernel
//                                                                 that skips the upper triangle does
//                                                                 about half of the attention term)
//   backward, frozen base     F_bwd  = 2·P + 8·nL·L·H·hd         (input gradients dX = dY·W through
//                                                                 every frozen linear — no weight
//                                                                 gradients; attention backward
//                                                                 is twice its forward)
//   LoRA, per targeted module of shape (out, in) with rank r:
//                             fwd 2·r·(in + out)                 (h = x·Aᵀ, y += s·h·Bᵀ)
//                             bwd 4·r·(in + out)                 (dB = dYᵀh, dh = dY·B, dA = dhᵀx, dX += dh·A)
//                             F_lora = 6·r·Σ_targets(in + out) per layer, × nL
//   per token:                F = F_fwd + F_bwd + F_lora
// Not counted: norms, softmax, activations, RoPE, the loss, optimizer updates (O(params) per step,
// not per token), merging at knots (2·r·in·out per module, once per link). For reference, full
// fine-tuning would add weight gradients 2·P (3× forward). The values are float64 estimates
// (exact integers below 2^53 ≈ 9·10^15; relative error ≤ 1e-16 above).

import { ColaConfigError, checkInt } from './errors.ts';
import { checkArch, layerModules, resolveTargets, type ArchConfig } from './modules.ts';
import { MAX_RANK, type ChainPlan } from './schedule.ts';

export const MAX_TOKENS = 1e15;

export interface TokenFlops {
  forward: number;
  backward: number;
  /** LoRA matmuls, forward + backward. */
  adapter: number;
  total: number;
}

/** Training FLOPs for ONE token at rank r on the given targets with sequence length seqLen. */
export function flopsPerToken(cfg: ArchConfig, targets: readonly string[], rank: number, seqLen: number): TokenFlops {
  const c = checkArch(cfg);
  checkInt('rank', rank, 0, MAX_RANK); // rank 0 = the frozen model alone
  checkInt('seq_len', seqLen, 1, 1 << 24);
  const mods = resolveTargets(cfg, targets);
  let pLayer = 0;
  // All linears of a layer are frozen-base matmuls, targeted or not (resolveTargets only picks).
  for (const m of resolveTargets(cfg, allShortNames(cfg))) pLayer += m.in * m.out;
  const P = c.nLayers * pLayer + c.vocabSize * c.dim;
  const attn = c.nLayers * seqLen * c.nHeads * c.headDim;
  let loraSum = 0;
  for (const m of mods) loraSum += m.in + m.out;
  const adapter = 6 * rank * loraSum * c.nLayers;
  const forward = 2 * P + 4 * attn;
  const backward = 2 * P + 8 * attn;
  return { forward, backward, adapter, total: forward + backward + adapter };
}

function allShortNames(cfg: ArchConfig): string[] {
  return layerModules(cfg).map((m) => m.short);
}

export interface LinkFlops {
  index: number;
  rank: number;
  steps: number;
  tokens: number;
  flops: number;
  adapterFlops: number;
}

export interface ChainFlops {
  links: LinkFlops[];
  total: number;
  adapterTotal: number;
  /** LoRA (one link) at `baselineRank` over the same steps and tokens. */
  lora: { rank: number; flops: number; adapterFlops: number };
  /** lora.flops - total (> 0 when rank step-down saves compute). */
  saved: number;
  savedFraction: number;
  /** The same on the adapter matmuls only (the part rank step-down changes). */
  adapterSaved: number;
  adapterSavedFraction: number;
}

export interface ChainFlopsOptions {
  targets: readonly string[];
  /** Tokens processed per optimizer step (batch × padded length), or per step number. */
  tokensPerStep: number | ((step: number) => number);
  seqLen: number;
  /** Rank of the LoRA baseline; default: the first link's rank. */
  baselineRank?: number;
}

/** FLOPs per link of a chain plan, and the saving against plain LoRA at the same steps. */
export function chainFlops(cfg: ArchConfig, plan: ChainPlan, opts: ChainFlopsOptions): ChainFlops {
  const tokensOf = (step: number): number => {
    const t = typeof opts.tokensPerStep === 'number' ? opts.tokensPerStep : opts.tokensPerStep(step);
    if (!Number.isInteger(t) || t < 0 || t > MAX_TOKENS) {
      throw new ColaConfigError('tokens_per_step', `must be an integer in [0, ${MAX_TOKENS}], got ${t} at step ${step}`);
    }
    return t;
  };
  const links: LinkFlops[] = [];
  let total = 0;
  let adapterTotal = 0;
  let allTokens = 0;
  for (const l of plan.links) {
    let tokens = 0;
    if (typeof opts.tokensPerStep === 'number') tokens = tokensOf(0) * l.steps;
    else for (let s = l.startStep; s < l.endStep; s++) tokens += tokensOf(s);
    const f = flopsPerToken(cfg, opts.targets, l.rank, opts.seqLen);
    const link = { index: l.index, rank: l.rank, steps: l.steps, tokens, flops: f.total * tokens, adapterFlops: f.adapter * tokens };
    links.push(link);
    total += link.flops;
    adapterTotal += link.adapterFlops;
    allTokens += tokens;
  }
  const baselineRank = opts.baselineRank ?? plan.links[0]!.rank;
  const b = flopsPerToken(cfg, opts.targets, baselineRank, opts.seqLen);
  const lora = { rank: baselineRank, flops: b.total * allTokens, adapterFlops: b.adapter * allTokens };
  const saved = lora.flops - total;
  const adapterSaved = lora.adapterFlops - adapterTotal;
  return {
    links,
    total,
    adapterTotal,
    lora,
    saved,
    savedFraction: lora.flops > 0 ? saved / lora.flops : 0,
    adapterSaved,
    adapterSavedFraction: lora.adapterFlops > 0 ? adapterSaved / lora.adapterFlops : 0,
  };
}
