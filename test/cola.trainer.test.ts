// COLA trainer on the real GPU with stories260K: the knot invariants (MISSION.md), determinism,
// resume from a knot bit-identical to an uninterrupted run, memory equal to LoRA's, FLOPs per link.
import { beforeAll, describe, expect, test } from 'bun:test';
import { createHash } from 'node:crypto';
import { Engine } from '../src/gpu/engine.ts';
import { loadBundledModel, type LoadedModel } from '../src/model/registry.ts';
import { TransformerModel } from '../src/model/transformer.ts';
import { halfBitsOf, saveSafetensorsWeights, setWeightsDtype, weightsDtypeOf } from '../src/model/weights.ts';
import { parseSafetensors } from '../src/model/safetensors.ts';
import { trainCola, type KnotInfo, type ResumePoint, type TrainConfig } from '../src/cola/trainer.ts';
import type { KnotDecision } from '../src/cola/auto.ts';
import { decodeCarriedState, encodeCarriedState, keptCount } from '../src/cola/optimizer.ts';
import { initLoraHost, uploadLora, freeLora, resolveLoraSpec } from '../src/cola/lora.ts';
import type { Tokenizer } from '../src/cola/data.ts';
import { diff } from './helpers/compare.ts';

const STORIES = [
  'Once upon a time, there was a little dog named Max. Max liked to run in the park.',
  'One day, a girl named Sue found a red ball. She played with it all day.',
  'Tom had a big blue car. He drove it to the shop to buy some milk.',
  'The cat sat on the mat. It was warm and happy in the sun.',
  'Lily and Ben went to the beach. They built a big castle of sand.',
  'A little bird sang a song in the tree. The song made everyone smile.',
  'Mom baked a cake for the party. The cake was sweet and yummy.',
  'The boy saw a frog in the pond. The frog jumped high and said hello.',
  'Anna lost her hat in the wind. Her friend helped her find it.',
  'The sun was hot, so the kids ate cold ice cream under a tree.',
  'Sam wanted to fly a kite. He ran fast and the kite went up high.',
  'The old man planted a seed. Soon a tall green tree grew in his garden.',
];
// Every third story is a {prompt, completion} pair (loss on the completion only): first 4 words → rest.
const train = STORIES.map((text, i) => {
  if (i % 3) return { text };
  const cut = text.split(' ').slice(0, 4).join(' ').length;
  return { prompt: text.slice(0, cut), completion: text.slice(cut) };
});
const validation = [{ text: 'The dog and the cat played in the garden all day long.' }, { prompt: 'Once upon a time,', completion: ' there was a happy girl.' }];

let e: Engine;
let base: LoadedModel;
const sha = (w: KnotInfo['weights']) => createHash('sha256').update(saveSafetensorsWeights(w)).digest('hex');

function cfg(over: Partial<TrainConfig> = {}): TrainConfig {
  return {
    lora: resolveLoraSpec(base.weights.config, { targets: ['q', 'v'], rank: 8, alpha: 16, bias: false }),
    chain: { links: 3 },
    optimizer: { name: 'adamw', lr: 5e-3, weightDecay: 0, betas: [0.9, 0.999], eps: 1e-8, momentum: 0 },
    schedule: { name: 'linear', warmupSteps: 0 },
    epochs: 3,
    batchSize: 4,
    maxSeqLen: 64,
    seed: 7,
    shuffle: true,
    maxGradNorm: 1,
    evalEveryKnot: true,
    ...over,
  };
}

async function run(config: TrainConfig, opts: { weights?: LoadedModel['weights']; resume?: ResumePoint; cancelAt?: number; onLinkStart?: any; mergeOnTie?: boolean } = {}) {
  let mergeRequested = false; // a POST /merge {job} that arrives with an automatic tie decision
  const takeMergeRequest = () => {
    const r = mergeRequested;
    mergeRequested = false;
    return r;
  };
  const knots: KnotInfo[] = [];
  const losses: number[] = [];
  const lrs: number[] = [];
  const decisions: KnotDecision[] = [];
  const res = await trainCola(
    { e, weights: opts.weights ?? base.weights, tokenizer: base.tokenizer as unknown as Tokenizer, train, validation, config, resume: opts.resume },
    {
      onKnot: async (k) => void knots.push(k),
      onStep: (s) => void (losses.push(s.loss), lrs.push(s.lr)),
      onKnotDecision: (d) => {
        decisions.push(d);
        if (opts.mergeOnTie && d.decision === 'tie') mergeRequested = true;
      },
      takeMergeRequest,
      isCancelled: () => opts.cancelAt !== undefined && losses.length + (opts.resume?.step ?? 0) >= opts.cancelAt,
      onLinkStart: opts.onLinkStart,
    },
  );
  return { res, knots, losses, lrs, decisions };
}

beforeAll(async () => {
  e = await Engine.create();
  base = loadBundledModel();
});

describe('knot invariants', () => {
  test('a fresh link (B = 0) leaves the logits bit-identical', async () => {
    const model = TransformerModel.upload(e, base.weights);
    const tok = base.tokenizer.encode('Once upon a time there was', { bos: true });
    const ids = e.upload(Int32Array.from(tok), [tok.length], 'i32');
    const batch = { B: 1, T: tok.length, ids };
    const spec = cfg().lora;
    const lora = uploadLora(e, initLoraHost(base.weights.config, spec, 8, 7, 0));
    const f0 = model.forward(batch, null, false);
    const f1 = model.forward(batch, lora, false);
    const a = await e.readF32(model.logits(f0.hidden));
    const b = await e.readF32(model.logits(f1.hidden));
    expect(diff(a, b).maxAbs).toBe(0);
    freeLora(lora);
    model.free();
  });

  test('logits with the trained adapter equal logits after merging it; optimizer state is zero at every link start', async () => {
    const starts: { link: number; zero: boolean }[] = [];
    const { knots, losses } = await run(cfg({ chain: { links: 2 }, epochs: 2 }), {
      onLinkStart: async ({ link, optimizer }: any) => {
        let zero = true;
        for (const s of optimizer.states) {
          if (s.step !== 0) zero = false;
          for (const t of [s.m, s.v]) for (const x of await e.readF32(t)) if (x !== 0) zero = false;
        }
        starts.push({ link, zero });
      },
    });
    expect(starts).toEqual([{ link: 0, zero: true }, { link: 1, zero: true }]);
    expect(knots.length).toBe(2);
    expect(losses.every(Number.isFinite)).toBe(true);
    // Unmerged: base weights of knot 1's parent (knot 0) + knot 1's adapter; merged: knot 1's weights.
    const unmerged = TransformerModel.upload(e, knots[0]!.weights);
    const merged = TransformerModel.upload(e, knots[1]!.weights);
    const lora = uploadLora(e, knots[1]!.adapter);
    const tok = base.tokenizer.encode('The cat sat on the mat', { bos: true });
    const ids = e.upload(Int32Array.from(tok), [tok.length], 'i32');
    const batch = { B: 1, T: tok.length, ids };
    const a = await e.readF32(unmerged.logits(unmerged.forward(batch, lora, false).hidden));
    const b = await e.readF32(merged.logits(merged.forward(batch, null, false).hidden));
    // Merging changes the summation order (x·(W+sBA)ᵀ vs x·Wᵀ + s(xAᵀ)Bᵀ) in f32: |logits| ≲ 20, allow 1e-4.
    expect(diff(a, b).maxAbs).toBeLessThan(1e-4);
    // ...and the adapter did change the model (the test could fail).
    const c = await e.readF32(unmerged.logits(unmerged.forward(batch, null, false).hidden));
    expect(diff(a, c).maxAbs).toBeGreaterThan(1e-3);
    freeLora(lora);
    unmerged.free();
    merged.free();
  });
});

describe('determinism and resume', () => {
  test('same config twice → bit-identical knot versions; resuming from any knot reproduces them', async () => {
    const c = cfg();
    const full = await run(c);
    expect(full.knots.map((k) => k.link)).toEqual([0, 1, 2]);
    const shas = full.knots.map((k) => sha(k.weights));
    expect(new Set(shas).size).toBe(3);
    const again = await run(c);
    expect(again.knots.map((k) => sha(k.weights))).toEqual(shas);
    // Interrupt inside link 1 (after 4 steps of it), then resume from knot 0.
    const steps = full.res.plan.links.map((l) => l.endStep);
    const cut = await run(c, { cancelAt: steps[0]! + 2 });
    expect(cut.res.status).toBe('cancelled');
    expect(cut.knots.length).toBe(1);
    expect(sha(cut.knots[0]!.weights)).toBe(shas[0]);
    const resumed = await run(c, { weights: cut.knots[0]!.weights, resume: { step: steps[0]! } });
    expect(resumed.knots.map((k) => k.link)).toEqual([1, 2]);
    expect(resumed.knots.map((k) => sha(k.weights))).toEqual(shas.slice(1));
    // The resumed run's losses equal the uninterrupted run's from that step on.
    expect(resumed.losses).toEqual(full.losses.slice(steps[0]!));
    // Interrupt exactly at the second knot (cancelled before link 2's first step), resume from knot 1.
    const cut2 = await run(c, { cancelAt: steps[1]! });
    expect(cut2.knots.length).toBe(2);
    const resumed2 = await run(c, { weights: cut2.knots[1]!.weights, resume: { step: steps[1]! } });
    expect(resumed2.knots.map((k) => sha(k.weights))).toEqual(shas.slice(2));
  });
});

describe('partial optimizer reset (optimizer.resetKeep) and knot re-warm-up', () => {
  test('resetKeep 0 and knotWarmupSteps 0 given explicitly are the default path, bit for bit', async () => {
    const a = await run(cfg());
    const b = await run(cfg({ optimizer: { ...cfg().optimizer, resetKeep: 0 }, schedule: { name: 'linear', warmupSteps: 0, knotWarmupSteps: 0 } }));
    expect(b.knots.map((k) => sha(k.weights))).toEqual(a.knots.map((k) => sha(k.weights)));
    expect(b.lrs).toEqual(a.lrs);
    expect(a.knots.every((k) => k.optimizerState === null)).toBe(true);
  });

  test('the kept fraction is what was asked, the next link starts from it, and a resume reproduces the run', async () => {
    const keep = 0.1;
    const c = cfg({ optimizer: { ...cfg().optimizer, resetKeep: keep }, schedule: { name: 'linear', warmupSteps: 0, knotWarmupSteps: 2 } });
    const starts: { link: number; step: number; m: Float32Array[] }[] = [];
    const full = await run(c, {
      onLinkStart: async ({ link, optimizer }: any) => void starts.push({ link, step: optimizer.states[0].step, m: await e.readManyF32(optimizer.states.map((s: any) => s.m)) }),
    });
    expect(full.knots.length).toBe(3);
    const plain = await run(cfg());
    // The option changes training (the test could fail): same first knot, different later ones.
    expect(sha(full.knots[0]!.weights)).toBe(sha(plain.knots[0]!.weights));
    expect(sha(full.knots[1]!.weights)).not.toBe(sha(plain.knots[1]!.weights));
    const steps = full.res.plan.links.map((l) => l.endStep);
    for (const j of [0, 1]) {
      const st = full.knots[j]!.optimizerState!;
      expect(st.kind).toBe('adamw');
      expect(st.step).toBe(steps[j]!); // the step counter keeps counting
      for (const [m, v] of st.buffers) {
        const nz = m!.reduce((n, x) => n + (x !== 0 ? 1 : 0), 0);
        expect(nz).toBe(keptCount(m!.length, keep));
        // One mask for both moments.
        for (let i = 0; i < m!.length; i++) expect(m![i] === 0).toBe(v![i] === 0);
      }
      // The next link's optimizer starts from exactly the kept state.
      const next = starts.find((s) => s.link === j + 1)!;
      expect(next.step).toBe(steps[j]!);
      expect(next.m).toEqual(st.buffers.map((b) => b[0]!));
      // It survives the file round trip (what the runner stores in the knot's adapter ZIP).
      expect(decodeCarriedState(encodeCarriedState(st))).toEqual(st);
    }
    expect(full.knots[2]!.optimizerState).toBeNull();
    // Re-warm-up: the first 2 steps after each knot run at 1/3 and 2/3 of the scheduled LR.
    expect(full.lrs[steps[0]!]! / plain.lrs[steps[0]!]!).toBeCloseTo(1 / 3, 12);
    expect(full.lrs[steps[0]! + 1]! / plain.lrs[steps[0]! + 1]!).toBeCloseTo(2 / 3, 12);
    expect(full.lrs[steps[0]! + 2]).toBe(plain.lrs[steps[0]! + 2]!);
    // Crash inside link 1; resume from knot 0 with its stored state.
    const cut = await run(c, { cancelAt: steps[0]! + 1 });
    const st0 = decodeCarriedState(encodeCarriedState(cut.knots[0]!.optimizerState!));
    const resumed = await run(c, { weights: cut.knots[0]!.weights, resume: { step: steps[0]!, optimizerState: st0 } });
    expect(resumed.knots.map((k) => sha(k.weights))).toEqual(full.knots.slice(1).map((k) => sha(k.weights)));
    expect(resumed.losses).toEqual(full.losses.slice(steps[0]!));
    // Without the state a resume refuses rather than silently training differently.
    await expect(run(c, { weights: cut.knots[0]!.weights, resume: { step: steps[0]! } })).rejects.toThrow(/optimizer state/);
  });
});

describe('automatic knots (chain.auto)', () => {
  const autoCfg = () => cfg({ chain: { auto: { min_link_steps: 6, max_links: 4, threshold: 0.5, ema: 0.5, window: 2 } }, epochs: 8 });
  test('ties knots where the signal says, deterministically; a rerun and a resume give the same sha256s', async () => {
    const c = autoCfg();
    const a = await run(c);
    const ties = a.decisions.filter((d) => d.decision === 'tie');
    console.log('auto decisions:', JSON.stringify(a.decisions));
    expect(ties.length).toBeGreaterThanOrEqual(1);
    // Every tie decision is a knot of the final plan, and each obeys the rule it records.
    expect(a.res.plan.links.slice(0, -1).map((l) => l.endStep)).toEqual(ties.map((d) => d.step));
    for (const d of ties) {
      expect(d.rate).toBeLessThanOrEqual(d.threshold * d.initial_rate!);
      expect(d.steps_in_link).toBeGreaterThanOrEqual(6);
      expect(a.res.plan.totalSteps - d.step).toBeGreaterThanOrEqual(6);
    }
    expect(a.res.plan.links.every((l) => l.steps >= 6)).toBe(true);
    expect(a.knots.length).toBe(ties.length + 1);
    const b = await run(c);
    expect(b.decisions).toEqual(a.decisions);
    expect(b.knots.map((k) => sha(k.weights))).toEqual(a.knots.map((k) => sha(k.weights)));
    // Crash after the first knot (one step into link 1), resume from it.
    const k0 = ties[0]!.step;
    const cut = await run(c, { cancelAt: k0 + 1 });
    expect(cut.knots.length).toBe(1);
    const r = await run(c, { weights: cut.knots[0]!.weights, resume: { step: k0, knotSteps: [k0] } });
    expect(r.knots.map((k) => sha(k.weights))).toEqual(a.knots.slice(1).map((k) => sha(k.weights)));
    expect(r.decisions).toEqual(a.decisions.filter((d) => d.link >= 1));
  });

  test('a merge request pending when an automatic knot ties is satisfied by that knot (no second knot a step later)', async () => {
    const c = autoCfg();
    const a = await run(c);
    const m = await run(c, { mergeOnTie: true });
    expect(a.decisions.some((d) => d.decision === 'tie')).toBe(true);
    expect(m.knots.map((k) => k.endStep)).toEqual(a.knots.map((k) => k.endStep));
    expect(m.knots.map((k) => sha(k.weights))).toEqual(a.knots.map((k) => sha(k.weights)));
  });

  test('max_links 1 ties no knot early: plain LoRA, bit for bit', async () => {
    const lora = await run(cfg({ chain: { links: 1 }, epochs: 2 }));
    const one = await run(cfg({ chain: { auto: { min_link_steps: 2, max_links: 1, window: 1 } }, epochs: 2 }));
    expect(one.knots.map((k) => sha(k.weights))).toEqual(lora.knots.map((k) => sha(k.weights)));
    expect(one.decisions.filter((d) => d.decision === 'tie')).toEqual([]);
  });
});

describe('memory and FLOPs', () => {
  test('peak engine memory of COLA (M = 3) equals LoRA (M = 1) within 1%', async () => {
    const peak = async (links: number) => {
      e.trimPool();
      e.resetPeak();
      const before = e.allocatedBytes;
      await run(cfg({ chain: { links }, epochs: 1 }));
      return e.peakBytes - before;
    };
    const lora = await peak(1);
    const cola = await peak(3);
    console.log(`peak engine memory: LoRA (M=1) ${lora} B, COLA (M=3) ${cola} B`);
    expect(Math.abs(cola - lora) / lora).toBeLessThanOrEqual(0.01);
  });

  test('rank step-down reports fewer FLOPs for the lower-rank link', async () => {
    const { knots } = await run(cfg({ chain: { links: [{ steps: 3, rank: 8 }, { steps: 3, rank: 4 }] }, epochs: 2 }));
    expect(knots.map((k) => k.rank)).toEqual([8, 4]);
    expect(knots[1]!.flops).toBeLessThan(knots[0]!.flops);
    expect(knots[1]!.adapter.rank).toBe(4);
  });
});

describe('16-bit base weights', () => {
  test('bf16 stories260K: knots merge q, v in f32 (kept f32), every other matrix stays bf16; the saved version holds both', async () => {
    const copy = new Map([...base.weights.tensors].map(([n, t]) => [n, { shape: t.shape, data: t.data.slice() }]));
    const w16 = setWeightsDtype({ config: base.weights.config, tensors: copy }, 'bf16');
    expect(weightsDtypeOf(w16)).toBe('bf16');
    const { knots, losses } = await run(cfg({ epochs: 1 }), { weights: w16 });
    expect(knots.length).toBe(3);
    expect(losses.length).toBeGreaterThan(0);
    expect(losses.every(Number.isFinite)).toBe(true);
    const last = knots.at(-1)!.weights;
    expect(weightsDtypeOf(last)).toBe('mixed');
    const q = last.tensors.get('model.layers.0.self_attn.q_proj.weight')!;
    expect(q.dtype).toBeUndefined();
    expect(halfBitsOf(q)).toBeNull(); // the merged update is not representable in bf16
    expect(halfBitsOf(last.tensors.get('model.layers.0.self_attn.k_proj.weight')!)).not.toBeNull();
    const file = parseSafetensors(saveSafetensorsWeights(last));
    expect(file.tensors.get('model.layers.0.self_attn.q_proj.weight')!.dtype).toBe('F32');
    expect(file.tensors.get('model.layers.0.self_attn.k_proj.weight')!.dtype).toBe('BF16');
    expect(file.tensors.get('model.layers.0.mlp.gate_proj.weight')!.dtype).toBe('BF16');
  }, 300_000);
});
