// The golden files themselves: readable, versioned, internally consistent, and refused when stale
// or corrupt. No GPU, no Python. The engine/model tests compare against their contents.
import { describe, expect, test } from 'bun:test';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GoldenFormatError, goldenTensor, parseGolden, readGolden } from './read.ts';

const dir = import.meta.dir;

/** Mean cross-entropy over targets != -1, in f64, from the stored logits; also dL/dlogits. */
function crossEntropy(logits: Float32Array, targets: Int32Array, V: number): { loss: number; dLogits: Float64Array } {
  const N = targets.length;
  const d = new Float64Array(N * V);
  let count = 0;
  for (let i = 0; i < N; i++) if (targets[i]! >= 0) count++;
  let sum = 0;
  for (let i = 0; i < N; i++) {
    const tgt = targets[i]!;
    if (tgt < 0) continue;
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, logits[i * V + j]!);
    let z = 0;
    for (let j = 0; j < V; j++) z += Math.exp(logits[i * V + j]! - m);
    sum += Math.log(z) + m - logits[i * V + tgt]!;
    for (let j = 0; j < V; j++) d[i * V + j] = (Math.exp(logits[i * V + j]! - m) / z - (j === tgt ? 1 : 0)) / count;
  }
  return { loss: sum / count, dLogits: d };
}

describe('stories260k_lora.gld', () => {
  const g = readGolden(join(dir, 'stories260k_lora.gld'), { golden: 'stories260k_lora', goldenVersion: 1 });

  test('holds the batch, the adapter, the logits, the loss and every LoRA gradient', () => {
    expect(g.header.meta.model_sha256).toBe('b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696');
    const ids = goldenTensor(g, 'input_ids', 'i32', [2, 16]);
    const targets = goldenTensor(g, 'targets', 'i32', [2, 16]);
    const keyMask = goldenTensor(g, 'key_mask', 'i32', [2, 16]);
    expect(ids[0]).toBe(1); // BOS
    expect(Array.from(keyMask.subarray(16 + 13))).toEqual([0, 0, 0]);
    expect(Array.from(targets.subarray(16 + 13))).toEqual([-1, -1, -1]);
    expect(Array.from(targets.subarray(0, 4))).toEqual([-1, -1, -1, -1]);
    for (let l = 0; l < 5; l++) {
      for (const [t, out] of [['q', 64], ['v', 32]] as const) {
        goldenTensor(g, `layers.${l}.${t}.lora_A`, 'f32', [4, 64]);
        goldenTensor(g, `layers.${l}.${t}.lora_B`, 'f32', [out, 4]);
        goldenTensor(g, `grad.layers.${l}.${t}.lora_A`, 'f32', [4, 64]);
        goldenTensor(g, `grad.layers.${l}.${t}.lora_B`, 'f32', [out, 4]);
      }
    }
    goldenTensor(g, 'logits_base', 'f32', [2, 16, 512]);
    goldenTensor(g, 'act.layers.4.out', 'f32', [2, 16, 64]);
  });

  test('loss and grad.logits agree with the stored logits and targets', () => {
    const logits = goldenTensor(g, 'logits', 'f32', [2, 16, 512]);
    const targets = goldenTensor(g, 'targets', 'i32');
    const { loss, dLogits } = crossEntropy(logits, targets, 512);
    // Recomputed from f32-rounded logits (|logit| < 18, rounding ≤ 1e-6 each): agreement to 1e-5.
    expect(Math.abs(loss - (g.header.meta.loss_f64 as number))).toBeLessThan(1e-5);
    expect(Math.abs(loss - goldenTensor(g, 'loss', 'f32', [1])[0]!)).toBeLessThan(1e-5);
    const d = goldenTensor(g, 'grad.logits', 'f32', [2, 16, 512]);
    let worst = 0;
    for (let i = 0; i < d.length; i++) worst = Math.max(worst, Math.abs(d[i]! - dLogits[i]!));
    expect(worst).toBeLessThan(1e-6); // entries are ≤ 1/24 in size; f32 logits move them by ≲ 1e-7
  });
});

for (const [file, name, dirName] of [
  ['tiny_opt.gld', 'tiny_opt', 'tiny-opt'],
  ['tiny_gpt2.gld', 'tiny_gpt2', 'tiny-gpt2'],
] as const) {
  describe(file, () => {
    const g = readGolden(join(dir, file), { golden: name, goldenVersion: 1 });

    test('input ids, logits and a loss consistent with them', () => {
      goldenTensor(g, 'input_ids', 'i32', [2, 8]);
      const targets = goldenTensor(g, 'targets', 'i32', [2, 8]);
      const logits = goldenTensor(g, 'logits', 'f32', [2, 8, 64]);
      const { loss } = crossEntropy(logits, targets, 64);
      expect(Math.abs(loss - goldenTensor(g, 'loss', 'f32', [1])[0]!)).toBeLessThan(1e-5);
      expect(g.header.meta.model_dir).toBe(`test/golden/${dirName}`);
    });

    test('the model folder has config.json and a safetensors file with the HF names', () => {
      const cfg = JSON.parse(readFileSync(join(dir, dirName, 'config.json'), 'utf8')) as Record<string, unknown>;
      const st = readFileSync(join(dir, dirName, 'model.safetensors'));
      const n = Number(new DataView(st.buffer, st.byteOffset, st.byteLength).getBigUint64(0, true));
      const names = Object.keys(JSON.parse(new TextDecoder().decode(st.subarray(8, 8 + n))) as object);
      if (name === 'tiny_opt') {
        expect(cfg.model_type).toBe('opt');
        expect(names).toContain('model.decoder.embed_positions.weight');
        expect(names).toContain('model.decoder.layers.1.self_attn.out_proj.bias');
      } else {
        expect(cfg.model_type).toBe('gpt2');
        expect(names).toContain('transformer.h.1.attn.c_attn.weight');
        expect(names).toContain('transformer.ln_f.bias');
      }
      expect(names).not.toContain('lm_head.weight'); // tied: not stored
    });
  });
}

describe('the reader refuses bad files', () => {
  const good = new Uint8Array(readFileSync(join(dir, 'tiny_gpt2.gld')));
  const hlen = new DataView(good.buffer, good.byteOffset).getUint32(8, true);
  const withHeader = (edit: (h: Record<string, unknown>) => void): Uint8Array => {
    const h = JSON.parse(new TextDecoder().decode(good.subarray(12, 12 + hlen))) as Record<string, unknown>;
    edit(h);
    const text = new TextEncoder().encode(JSON.stringify(h));
    const out = new Uint8Array(12 + text.length + good.length - 12 - hlen);
    out.set(good.subarray(0, 8));
    new DataView(out.buffer).setUint32(8, text.length, true);
    out.set(text, 12);
    out.set(good.subarray(12 + hlen), 12 + text.length);
    return out;
  };

  test('an unmodified copy parses (so the failures below are caused by the edits)', () => {
    expect(parseGolden(withHeader(() => {}), 'copy', { golden: 'tiny_gpt2', goldenVersion: 1 }).tensors.size).toBeGreaterThan(0);
  });
  test('bad magic', () => {
    const b = good.slice();
    b[7] = 0x32; // "COLAGLD2"
    expect(() => parseGolden(b)).toThrow(GoldenFormatError);
  });
  test('other container version', () => {
    expect(() => parseGolden(withHeader((h) => (h.version = 2)))).toThrow(/container version 2/);
  });
  test('stale golden version', () => {
    expect(() => parseGolden(good, 'x', { golden: 'tiny_gpt2', goldenVersion: 2 })).toThrow(/stale golden or stale test/);
  });
  test('wrong golden', () => {
    expect(() => parseGolden(good, 'x', { golden: 'tiny_opt' })).toThrow(GoldenFormatError);
  });
  test('one flipped data byte', () => {
    const b = good.slice();
    b[b.length - 5] = b[b.length - 5]! ^ 1;
    expect(() => parseGolden(b)).toThrow(/sha256/);
  });
  test('truncated', () => {
    expect(() => parseGolden(good.subarray(0, good.length - 4))).toThrow(GoldenFormatError);
    expect(() => parseGolden(good.subarray(0, 10))).toThrow(GoldenFormatError);
  });
  test('tensor out of bounds', () => {
    expect(() =>
      parseGolden(withHeader((h) => ((h.tensors as { offset: number }[])[0]!.offset = 1 << 30))),
    ).toThrow(/out of bounds/);
  });
});
