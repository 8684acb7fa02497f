import { describe, expect, test } from 'bun:test';
import { chainFlops, flopsPerToken } from '../src/cola/flops.ts';
import { layerModules, resolveTargets, type ArchConfig } from '../src/cola/modules.ts';
import { planChain } from '../src/cola/schedule.ts';

const tiny: ArchConfig = { architecture: 'llama', dim: 4, nLayers: 1, nHeads: 2, nKvHeads: 1, hiddenDim: 6, vocabSize: 10 };
// stories260K (llama2.c): dim 64, 5 layers, 8 heads, 4 kv heads, hidden 172, vocab 512.
const stories: ArchConfig = { architecture: 'llama', dim: 64, nLayers: 5, nHeads: 8, nKvHeads: 4, hiddenDim: 172, vocabSize: 512 };

describe('flopsPerToken', () => {
  test('hand-counted tiny Llama', () => {
    // Linears: q 4·4, k 2·4, v 2·4, o 4·4, gate/up/down 6·4 each = 120; lm_head 10·4 = 40 → P = 160.
    // Attention term nL·L·H·hd = 1·3·2·2 = 12. LoRA on q (4+4) and v (4+2) at r = 2: 6·2·14 = 168.
    const f = flopsPerToken(tiny, ['q', 'v'], 2, 3);
    expect(f).toEqual({ forward: 2 * 160 + 4 * 12, backward: 2 * 160 + 8 * 12, adapter: 168, total: 368 + 416 + 168 });
  });
  test('adapter FLOPs are linear in rank; base FLOPs do not depend on it', () => {
    const a = flopsPerToken(stories, ['q', 'v'], 8, 128);
    const b = flopsPerToken(stories, ['q', 'v'], 4, 128);
    expect(a.adapter).toBe(2 * b.adapter);
    expect(a.forward).toBe(b.forward);
    expect(a.backward).toBe(b.backward);
    expect(flopsPerToken(stories, ['q', 'v'], 0, 128).adapter).toBe(0);
  });
  test('GPT-2 shapes: fused c_attn is (3·dim, dim)', () => {
    const g: ArchConfig = { architecture: 'gpt2', dim: 8, nLayers: 2, nHeads: 2, hiddenDim: 32, vocabSize: 50 };
    const mods = layerModules(g);
    expect(mods.map((m) => [m.short, m.out, m.in, m.fanInFanOut])).toEqual([
      ['c_attn', 24, 8, true],
      ['attn.c_proj', 8, 8, true],
      ['c_fc', 32, 8, true],
      ['mlp.c_proj', 8, 32, true],
    ]);
    // q and v both map to the fused c_attn once.
    expect(resolveTargets(g, ['q', 'v']).map((m) => m.short)).toEqual(['c_attn']);
    const f = flopsPerToken(g, ['c_attn'], 1, 1);
    expect(f.adapter).toBe(6 * 1 * (24 + 8) * 2);
    const P = 2 * (24 * 8 + 64 + 256 + 256) + 50 * 8;
    expect(f.forward).toBe(2 * P + 4 * 2 * 1 * 8);
  });
  test('bad targets and ranks', () => {
    expect(() => flopsPerToken(stories, ['qq'], 8, 16)).toThrow(/unknown layer "qq"/);
    expect(() => flopsPerToken(stories, [], 8, 16)).toThrow(/at least one/);
    expect(() => flopsPerToken(stories, ['q'], 2000, 16)).toThrow(/rank/);
    expect(() => flopsPerToken({ ...stories, nKvHeads: 3 }, ['q'], 8, 16)).toThrow(/must divide/);
    expect(() => flopsPerToken({ architecture: 'gpt2', dim: 8, nLayers: 1, nHeads: 2, hiddenDim: 8, vocabSize: 5 }, ['c_proj'], 8, 16)).toThrow(
      /two c_proj/,
    );
  });
});

describe('chainFlops: rank step-down against LoRA at equal steps', () => {
  test('(8, 4) with equal halves saves a quarter of the adapter FLOPs', () => {
    const plan = planChain({ totalSteps: 100, chain: { links: [{ steps: 50, rank: 8 }, { steps: 50, rank: 4 }] }, rank: 8 });
    const r = chainFlops(stories, plan, { targets: ['q', 'v'], tokensPerStep: 8 * 128, seqLen: 128 });
    expect(r.links.map((l) => [l.rank, l.steps, l.tokens])).toEqual([[8, 50, 51200], [4, 50, 51200]]);
    expect(r.lora.rank).toBe(8);
    expect(r.adapterSavedFraction).toBeCloseTo(0.25, 12);
    const perTok8 = flopsPerToken(stories, ['q', 'v'], 8, 128);
    const perTok4 = flopsPerToken(stories, ['q', 'v'], 4, 128);
    expect(r.saved).toBeCloseTo((perTok8.adapter - perTok4.adapter) * 51200, 0);
    expect(r.total).toBe(r.links[0]!.flops + r.links[1]!.flops);
    expect(r.savedFraction).toBeGreaterThan(0);
    expect(r.savedFraction).toBeLessThan(r.adapterSavedFraction);
  });
  test('COLA with equal ranks costs exactly LoRA (equal compute)', () => {
    const plan = planChain({ totalSteps: 30, chain: { links: 3 }, rank: 8 });
    const r = chainFlops(stories, plan, { targets: ['q', 'v'], tokensPerStep: (s) => 100 + s, seqLen: 64 });
    expect(r.saved).toBe(0);
    expect(r.links.reduce((a, l) => a + l.tokens, 0)).toBe(30 * 100 + (29 * 30) / 2);
  });
  test('invalid tokens', () => {
    const plan = planChain({ totalSteps: 3, rank: 8 });
    expect(() => chainFlops(stories, plan, { targets: ['q'], tokensPerStep: -1, seqLen: 8 })).toThrow(/tokens_per_step/);
    expect(() => chainFlops(stories, plan, { targets: ['q'], tokensPerStep: 1.5, seqLen: 8 })).toThrow(/tokens_per_step/);
  });
});
