import { describe, expect, test } from 'bun:test';
import { zipSync } from 'fflate';
import { encodeSafetensors, parseSafetensors, type TensorToWrite } from '../src/model/safetensors.ts';
import { f32ToF16Bits } from '../src/util/f16.ts';
import type { ArchConfig } from '../src/cola/modules.ts';
import {
  buildPeftConfig,
  encodePeftWeights,
  exportPeftAdapter,
  importPeftAdapter,
  packAdapter,
  parsePeftAdapter,
  PeftError,
  unpackAdapter,
  type AdapterWeights,
} from '../src/cola/peft.ts';
import { Rng } from '../src/util/rng.ts';

// Small configs: Llama with GQA (q out 8, k/v out 4), OPT with biases, GPT-2 with fused c_attn.
const llama: ArchConfig = { architecture: 'llama', dim: 8, nLayers: 2, nHeads: 4, nKvHeads: 2, hiddenDim: 12, vocabSize: 16 };
const opt: ArchConfig = { architecture: 'opt', dim: 8, nLayers: 2, nHeads: 2, hiddenDim: 16, vocabSize: 16 };
const gpt2: ArchConfig = { architecture: 'gpt2', dim: 8, nLayers: 1, nHeads: 2, hiddenDim: 32, vocabSize: 16 };

function makeAdapter(cfg: ArchConfig, shapes: Record<string, [number, number]>, rank: number, seed: number, withBias = false): AdapterWeights {
  const rng = new Rng(seed);
  const modules: AdapterWeights['modules'] = new Map();
  for (let l = 0; l < cfg.nLayers; l++) {
    for (const [short, [out, inF]] of Object.entries(shapes)) {
      modules.set(`${l}.${short}`, {
        in: inF,
        out,
        a: rng.normalArray(rank * inF),
        b: rng.normalArray(out * rank),
        bias: withBias ? rng.normalArray(out) : undefined,
      });
    }
  }
  return { rank, alpha: 16, modules };
}

const llamaAdapter = () => makeAdapter(llama, { q: [8, 8], v: [4, 8] }, 2, 1);

/** Re-encodes a valid adapter's tensors after `edit` (rename, drop, add, reshape). */
function editTensors(bytes: Uint8Array, edit: (t: Map<string, TensorToWrite>) => void): Uint8Array {
  const p = parseSafetensors(bytes);
  const m = new Map<string, TensorToWrite>();
  for (const [k, t] of p.tensors) m.set(k, { dtype: t.dtype, shape: t.shape, data: t.data.slice() });
  edit(m);
  return encodeSafetensors(m);
}

function peftError(f: () => unknown): PeftError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(PeftError);
    return e as PeftError;
  }
  throw new Error('expected a PeftError');
}

describe('export', () => {
  test('Llama: adapter_config.json fields and tensor names/shapes', () => {
    const w = llamaAdapter();
    const cfg = buildPeftConfig(llama, w, 'stories260K');
    expect(cfg).toMatchObject({
      peft_type: 'LORA',
      task_type: 'CAUSAL_LM',
      r: 2,
      lora_alpha: 16,
      target_modules: ['q_proj', 'v_proj'],
      bias: 'none',
      fan_in_fan_out: false,
      base_model_name_or_path: 'stories260K',
    });
    const p = parseSafetensors(encodePeftWeights(llama, w));
    const shapes = Object.fromEntries([...p.tensors].map(([k, t]) => [k, [t.dtype, ...t.shape]]));
    expect(shapes).toEqual({
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': ['F32', 2, 8],
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight': ['F32', 8, 2],
      'base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight': ['F32', 2, 8],
      'base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight': ['F32', 4, 2],
      'base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight': ['F32', 2, 8],
      'base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight': ['F32', 8, 2],
      'base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight': ['F32', 2, 8],
      'base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight': ['F32', 4, 2],
    });
  });

  test('OPT names and lora_only bias stored as the full bias', () => {
    const w = makeAdapter(opt, { q: [8, 8], fc1: [16, 8] }, 2, 2, true);
    const base = (l: number, s: string) => new Float32Array(s === 'q' ? 8 : 16).fill(l + 1);
    const cfg = buildPeftConfig(opt, w, null);
    expect(cfg.target_modules).toEqual(['q_proj', 'fc1']);
    expect(cfg.bias).toBe('lora_only');
    const p = parseSafetensors(encodePeftWeights(opt, w, base));
    expect([...p.tensors.keys()]).toContain('base_model.model.model.decoder.layers.1.self_attn.q_proj.lora_A.weight');
    expect([...p.tensors.keys()]).toContain('base_model.model.model.decoder.layers.0.fc1.lora_B.weight');
    const b = p.tensors.get('base_model.model.model.decoder.layers.1.self_attn.q_proj.bias')!;
    const got = new Float32Array(b.data.slice().buffer);
    expect(got[3]).toBe(Math.fround(2 + w.modules.get('1.q')!.bias![3]!));
    expect(() => encodePeftWeights(opt, w)).toThrow(/no base bias/);
  });

  test('GPT-2: Conv1D → fan_in_fan_out true; fused c_attn; c_proj disambiguated', () => {
    const w = makeAdapter(gpt2, { c_attn: [24, 8], 'mlp.c_proj': [8, 32] }, 4, 3);
    const cfg = buildPeftConfig(gpt2, w, 'gpt2');
    expect(cfg.fan_in_fan_out).toBe(true);
    expect(cfg.target_modules).toEqual(['c_attn', 'mlp.c_proj']);
    const p = parseSafetensors(encodePeftWeights(gpt2, w));
    expect(p.tensors.get('base_model.model.transformer.h.0.attn.c_attn.lora_A.weight')!.shape).toEqual([4, 8]);
    expect(p.tensors.get('base_model.model.transformer.h.0.attn.c_attn.lora_B.weight')!.shape).toEqual([24, 4]);
    expect(p.tensors.get('base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight')!.shape).toEqual([4, 32]);
    // Round trip: the "mlp.c_proj" entry must not also select attn.c_proj.
    const back = importPeftAdapter(gpt2, exportPeftAdapter(gpt2, w, { baseModel: 'gpt2' }));
    expect(back.targets).toEqual(['c_attn', 'mlp.c_proj']);
  });

  test('wrong shapes are refused on export', () => {
    const w = llamaAdapter();
    w.modules.get('0.q')!.a = new Float32Array(3);
    expect(() => encodePeftWeights(llama, w)).toThrow(/A must have 2×8/);
  });
});

describe('round trip and archive', () => {
  test('export → ZIP → import gives identical values; packing is deterministic', () => {
    const w = llamaAdapter();
    const zip = exportPeftAdapter(llama, w, { baseModel: 'stories260K' });
    expect(exportPeftAdapter(llama, llamaAdapter(), { baseModel: 'stories260K' })).toEqual(zip);
    expect([zip[0], zip[1]]).toEqual([0x50, 0x4b]); // "PK"
    const back = importPeftAdapter(llama, zip);
    expect(back.rank).toBe(2);
    expect(back.scale).toBe(8);
    expect(back.targets).toEqual(['q', 'v']);
    expect(back.baseModel).toBe('stories260K');
    for (const [k, m] of w.modules) {
      expect(back.modules.get(k)!.a).toEqual(m.a);
      expect(back.modules.get(k)!.b).toEqual(m.b);
    }
  });

  test('OPT bias round trip recovers the delta', () => {
    const w = makeAdapter(opt, { v: [8, 8] }, 2, 5, true);
    const base = (l: number) => new Float32Array(8).fill(0.5 * l);
    const back = importPeftAdapter(opt, exportPeftAdapter(opt, w, { baseModel: null, baseBias: base }), base);
    // (base + delta) - base in f32: exact up to one rounding of the sum (|base| ≤ 0.5, |delta| ~ 1 → ≤ 1.2e-7).
    const d = back.modules.get('1.v')!.bias!;
    const want = w.modules.get('1.v')!.bias!;
    for (let i = 0; i < 8; i++) expect(Math.abs(d[i]! - want[i]!)).toBeLessThan(2.5e-7);
  });

  test('unpack: files inside a folder, extra files ignored; missing file, garbage, size limit', () => {
    const w = llamaAdapter();
    const cfgBytes = new TextEncoder().encode(JSON.stringify(buildPeftConfig(llama, w, null)));
    const weights = encodePeftWeights(llama, w);
    const nested = zipSync({ 'my-adapter/adapter_config.json': cfgBytes, 'my-adapter/adapter_model.safetensors': weights, 'README.md': new Uint8Array(3) });
    expect(importPeftAdapter(llama, nested).rank).toBe(2);
    expect(peftError(() => unpackAdapter(zipSync({ 'adapter_config.json': cfgBytes }))).message).toMatch(/missing adapter_model.safetensors/);
    expect(peftError(() => unpackAdapter(new Uint8Array([1, 2, 3, 4]))).path).toBe('archive');
    expect(peftError(() => unpackAdapter(packAdapter({ config: {}, weights }), 100)).message).toMatch(/expands to more than 100/);
    const badJson = zipSync({ 'adapter_config.json': new TextEncoder().encode('{nope'), 'adapter_model.safetensors': weights });
    expect(peftError(() => unpackAdapter(badJson)).path).toBe('adapter_config.json');
  });
});

describe('import validation', () => {
  const w = llamaAdapter();
  const cfg = () => JSON.parse(JSON.stringify(buildPeftConfig(llama, w, null))) as Record<string, unknown>;
  const weights = encodePeftWeights(llama, w);

  const badConfigs: [string, (c: Record<string, unknown>) => void, string, RegExp][] = [
    ['peft_type', (c) => (c.peft_type = 'IA3'), 'adapter_config.json.peft_type', /LORA/],
    ['task_type', (c) => (c.task_type = 'SEQ_CLS'), 'adapter_config.json.task_type', /CAUSAL_LM/],
    ['r zero', (c) => (c.r = 0), 'adapter_config.json.r', /\[1, 1024\]/],
    ['r not matching tensors', (c) => (c.r = 3), 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', /shape \[2, 8\], expected \[3, 8\]/],
    ['r > min(in, out)', (c) => (c.r = 5), 'adapter_config.json.r', /exceeds min\(in, out\) = 4 of self_attn.v_proj/],
    ['alpha NaN-ish', (c) => (c.lora_alpha = 'x'), 'adapter_config.json.lora_alpha', /number/],
    ['alpha negative', (c) => (c.lora_alpha = -1), 'adapter_config.json.lora_alpha', /\(0, /],
    ['bias all', (c) => (c.bias = 'all'), 'adapter_config.json.bias', /not supported/],
    ['unknown target', (c) => (c.target_modules = ['q_proj', 'c_attn']), 'adapter_config.json.target_modules', /"c_attn" match no linear layer of llama/],
    ['empty targets', (c) => (c.target_modules = []), 'adapter_config.json.target_modules', /non-empty/],
    ['rank_pattern', (c) => (c.rank_pattern = { q_proj: 4 }), 'adapter_config.json.rank_pattern', /not supported/],
    ['modules_to_save', (c) => (c.modules_to_save = ['lm_head']), 'adapter_config.json.modules_to_save', /not supported/],
    ['dora', (c) => (c.use_dora = true), 'adapter_config.json.use_dora', /not supported/],
    ['layers out of range', (c) => (c.layers_to_transform = [0, 2]), 'adapter_config.json.layers_to_transform', /outside \[0, 2\)/],
    ['bad regex', (c) => (c.target_modules = '(['), 'adapter_config.json.target_modules', /invalid regex/],
    ['targets k as well (missing tensors)', (c) => (c.target_modules = ['q_proj', 'k_proj', 'v_proj']), 'adapter_model.safetensors', /missing tensor .*k_proj/],
  ];
  for (const [name, edit, path, msg] of badConfigs) {
    test(`config: ${name}`, () => {
      const c = cfg();
      edit(c);
      const e = peftError(() => parsePeftAdapter(llama, c, weights));
      expect(e.path).toBe(path);
      expect(e.message).toMatch(msg);
    });
  }

  const q0A = 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight';
  const badTensors: [string, (t: Map<string, TensorToWrite>) => void, RegExp][] = [
    ['missing tensor', (t) => t.delete(q0A), /missing tensor .*layers\.0\.self_attn\.q_proj\.lora_A/],
    ['extra tensor', (t) => t.set('base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight', { dtype: 'F32', shape: [2, 8], data: new Float32Array(16) }), /1 tensor\(s\) do not belong.*k_proj/],
    ['transposed A', (t) => t.set(q0A, { dtype: 'F32', shape: [8, 2], data: new Float32Array(16) }), /shape \[8, 2\], expected \[2, 8\]/],
    ['integer dtype', (t) => t.set(q0A, { dtype: 'I32', shape: [2, 8], data: new Int32Array(16) }), /dtype I32/],
    ['NaN value', (t) => t.set(q0A, { dtype: 'F32', shape: [2, 8], data: new Float32Array(16).fill(NaN) }), /not finite/],
    ['Inf value', (t) => t.set(q0A, { dtype: 'F32', shape: [2, 8], data: Float32Array.from({ length: 16 }, (_, i) => (i === 5 ? Infinity : 0)) }), /value 5 is Infinity/],
  ];
  for (const [name, edit, msg] of badTensors) {
    test(`tensors: ${name}`, () => {
      expect(peftError(() => parsePeftAdapter(llama, cfg(), editTensors(weights, edit))).message).toMatch(msg);
    });
  }

  test('not a safetensors file', () => {
    expect(peftError(() => parsePeftAdapter(llama, cfg(), new Uint8Array(20))).path).toBe('adapter_model.safetensors');
  });

  test('accepted variants: ".default." names, F16 tensors, regex targets, layers_to_transform, missing lora_alpha', () => {
    const renamed = editTensors(weights, (t) => {
      const x = t.get(q0A)!;
      t.delete(q0A);
      t.set(q0A.replace('.lora_A.weight', '.lora_A.default.weight'), x);
    });
    expect(parsePeftAdapter(llama, cfg(), renamed).modules.get('0.q')!.a).toEqual(w.modules.get('0.q')!.a);

    const half = editTensors(weights, (t) => {
      const src = w.modules.get('0.q')!.a;
      t.set(q0A, { dtype: 'F16', shape: [2, 8], data: Uint16Array.from(src, (v) => f32ToF16Bits(v)) });
    });
    const a = parsePeftAdapter(llama, cfg(), half).modules.get('0.q')!.a;
    // f16 has an 11-bit significand: relative error ≤ 2^-11 for normal values.
    a.forEach((v, i) => expect(Math.abs(v - w.modules.get('0.q')!.a[i]!)).toBeLessThanOrEqual(Math.abs(w.modules.get('0.q')!.a[i]!) * 2 ** -11 + 1e-7));

    const c = cfg();
    c.target_modules = String.raw`.*\.(q|v)_proj`;
    expect(parsePeftAdapter(llama, c, weights).targets).toEqual(['q', 'v']);

    // Only layer 1, only q: a subset file.
    const c2 = cfg();
    c2.layers_to_transform = [1];
    c2.target_modules = ['q_proj'];
    delete c2.lora_alpha; // PEFT default 8 → scale 4
    const sub = editTensors(weights, (t) => {
      for (const k of [...t.keys()]) if (!k.includes('layers.1.self_attn.q_proj')) t.delete(k);
    });
    const got = parsePeftAdapter(llama, c2, sub);
    expect([...got.modules.keys()]).toEqual(['1.q']);
    expect(got.scale).toBe(4);

    // A regex can select per layer.
    const c3 = cfg();
    c3.target_modules = String.raw`model\.layers\.1\.self_attn\.q_proj`;
    expect([...parsePeftAdapter(llama, c3, sub).modules.keys()]).toEqual(['1.q']);
  });

  test('a catastrophic target_modules pattern selects in milliseconds (no backtracking RegExp)', () => {
    const c = cfg();
    // On Bun's RegExp each module name it does not match costs ~1 s here (10 of the 14).
    c.target_modules = '(.*.*)*(q|v)_proj';
    const t0 = performance.now();
    expect(parsePeftAdapter(llama, c, weights).targets).toEqual(['q', 'v']);
    expect(performance.now() - t0).toBeLessThan(500);
    c.target_modules = '(?!.*k_proj).*_proj';
    const e = peftError(() => parsePeftAdapter(llama, c, weights));
    expect(e.path).toBe('adapter_config.json.target_modules');
    expect(e.message).toMatch(/lookahead and lookbehind are not supported/);
  });

  test('a bias in the file needs a base bias on the model', () => {
    const wb = makeAdapter(opt, { q: [8, 8] }, 2, 9, true);
    const zip = exportPeftAdapter(opt, wb, { baseModel: null, baseBias: () => new Float32Array(8) });
    expect(peftError(() => importPeftAdapter(opt, zip)).message).toMatch(/no bias on this layer/);
  });
});
