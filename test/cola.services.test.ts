import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { archConfigOf, createModelServices } from '../src/cola/services.ts';
import { buildPeftConfig, encodePeftWeights, unpackAdapter, type AdapterWeights } from '../src/cola/peft.ts';
import { layerModules, type ArchConfig } from '../src/cola/modules.ts';
import { loadBundledModel, loadModelFromPath } from '../src/model/registry.ts';
import { loadVersion } from '../src/model/versions.ts';
import { parseSafetensors, toFloat32 } from '../src/model/safetensors.ts';
import { UserInputError, type ExportedFile, type ResolvedVersion } from '../src/services.ts';
import { manifestStream } from '../src/model/snapshots.ts';
import { Rng } from '../src/util/rng.ts';

const REPO = join(import.meta.dir, '..');
/** The path of an exported file on disk (the bundled llama2.c base is converted into one). */
const pathOf = (f: ExportedFile): string => {
  if (!('path' in f)) throw new Error('expected a file on disk');
  return f.path;
};
/** A manifest version's served safetensors file. */
const served = async (p: string) => new Uint8Array(await new Response(manifestStream(p).stream()).arrayBuffer());
const GPT2_DIR = join(import.meta.dir, 'fixtures/random-tiny-gpt2-lmbuddy'); // a random tiny HF GPT-2 kept with the tests
const BASE_BIN = 'models/stories260K/stories260K.bin';

let tmp: string;
let storeDir: string;
let svc: ReturnType<typeof createModelServices>;
let base: ResolvedVersion;

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'cola-services-'));
  storeDir = join(tmp, 'store');
  svc = createModelServices({ repoRoot: REPO, exportDir: join(tmp, 'exports') });
  const bytes = readFileSync(join(REPO, BASE_BIN));
  base = {
    model: 'stories260K',
    version: 0,
    architecture: 'llama',
    config: { format: 'llama2c', tokenizer: 'models/stories260K/tok512.bin' },
    path: BASE_BIN,
    sha256: createHash('sha256').update(bytes).digest('hex'),
  };
});

afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function userError(p: Promise<unknown>): Promise<UserInputError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(UserInputError);
    return e as UserInputError;
  }
  throw new Error('expected a UserInputError');
}

/** A random adapter on `targets` of every layer, as the two PEFT files in a fresh folder. */
function writeAdapter(cfg: ArchConfig, targets: string[], rank: number, alpha: number, seed: number, edit?: (w: AdapterWeights) => void) {
  const rng = new Rng(seed);
  const mods = layerModules(cfg).filter((m) => targets.includes(m.short));
  const w: AdapterWeights = { rank, alpha, modules: new Map() };
  for (let l = 0; l < cfg.nLayers; l++) {
    for (const m of mods) {
      const a = rng.normalArray(rank * m.in);
      const b = rng.normalArray(m.out * rank);
      for (let i = 0; i < a.length; i++) a[i] = a[i]! * 0.1;
      for (let i = 0; i < b.length; i++) b[i] = b[i]! * 0.1;
      w.modules.set(`${l}.${m.short}`, { in: m.in, out: m.out, a, b });
    }
  }
  const config = buildPeftConfig(cfg, w, null) as unknown as Record<string, unknown>;
  edit?.(w);
  const dir = mkdtempSync(join(tmp, 'adapter-'));
  writeFileSync(join(dir, 'adapter_model.safetensors'), encodePeftWeights(cfg, w));
  writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(config));
  return { dir, config, w, st: join(dir, 'adapter_model.safetensors') };
}

/** W + s·B·A in (out, in) layout, computed straightforwardly in f64. */
function expectedMerge(W: Float32Array, out: number, inF: number, a: Float32Array, b: Float32Array, r: number, s: number, conv1d: boolean): Float64Array {
  const res = new Float64Array(out * inF);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) {
      let d = 0;
      for (let k = 0; k < r; k++) d += b[o * r + k]! * a[k * inF + i]!;
      res[o * inF + i] = (conv1d ? W[i * out + o]! : W[o * inF + i]!) + s * d;
    }
  }
  return res;
}

describe('import', () => {
  test('llama2.c stories260K folder → a manifest of tensor objects in the store, serving one safetensors, reloadable through versions.ts', async () => {
    const imp = await svc.importer.import({ source: join(REPO, 'models/stories260K'), storeDir });
    expect(imp.architecture).toBe('llama');
    expect(imp.params).toBe(260_032); // every tensor once, norms included (SOURCE.txt)
    expect(imp.weights.path.startsWith(storeDir)).toBe(true);
    expect(imp.weights.path.endsWith(`${imp.weights.sha256}.manifest`)).toBe(true);
    // An import adds every distinct tensor (the weights at their stored precision, f32 here).
    expect(imp.weights.addedBytes).toBe(imp.weights.tensors!.reduce((n, t) => n + t.bytes, 0));
    const bytes = await served(imp.weights.path);
    expect(bytes.length).toBe(imp.weights.bytes);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(imp.weights.sha256);
    const tok = imp.config.tokenizer as string;
    expect(tok.startsWith(join(storeDir, 'tokenizers'))).toBe(true);
    expect(tok.endsWith('tok512.bin')).toBe(true);

    const v: ResolvedVersion = { model: 'm', version: 0, architecture: imp.architecture, config: imp.config, path: imp.weights.path, sha256: imp.weights.sha256 };
    const back = loadVersion(REPO, v);
    const orig = loadBundledModel();
    expect([...back.weights.tensors.keys()].sort()).toEqual([...orig.weights.tensors.keys()].sort());
    for (const [name, t] of orig.weights.tensors) expect(back.weights.tensors.get(name)!.data).toEqual(t.data);
    expect(back.tokenizer.encode('Once upon a time')).toEqual(orig.tokenizer.encode('Once upon a time'));

    // Content-addressed: importing again gives the same object.
    const again = await svc.importer.import({ source: join(REPO, BASE_BIN), storeDir });
    expect(again.weights).toEqual(imp.weights);
    expect(again.config.tokenizer).toBe(tok);
  });

  test('HF GPT-2 folder (vocab.json + merges.txt)', async () => {
    const imp = await svc.importer.import({ source: GPT2_DIR, storeDir });
    expect(imp.architecture).toBe('gpt2');
    expect(imp.config.model_type).toBe('gpt2');
    const v: ResolvedVersion = { model: 'g', version: 0, architecture: 'gpt2', config: imp.config, path: imp.weights.path, sha256: imp.weights.sha256 };
    const back = loadVersion(REPO, v);
    const orig = loadModelFromPath(GPT2_DIR);
    for (const [name, t] of orig.weights.tensors) expect(back.weights.tensors.get(name)!.data).toEqual(t.data);
    expect(back.tokenizer.vocabSize).toBe(orig.tokenizer.vocabSize);
    expect(back.tokenizer.encode('hello')).toEqual(orig.tokenizer.encode('hello'));
  });

  test('unusable input → UserInputError with a clear message', async () => {
    expect((await userError(svc.importer.import({ source: join(tmp, 'nope'), storeDir }))).message).toMatch(/does not exist/);
    const pk = join(tmp, 'pickle');
    mkdirSync(pk);
    writeFileSync(join(pk, 'model.bin'), new Uint8Array([0x80, 0x02, 0x7d, 0x71, 0, 0, 0, 0, 0, 0, 0, 0]));
    writeFileSync(join(pk, 'tok.bin'), readFileSync(join(REPO, 'models/stories260K/tok512.bin')));
    expect((await userError(svc.importer.import({ source: join(pk, 'model.bin'), storeDir }))).message).toMatch(/pickle/i);
    const badCfg = join(tmp, 'badcfg');
    mkdirSync(badCfg);
    writeFileSync(join(badCfg, 'config.json'), '{ "model_type": ');
    writeFileSync(join(badCfg, 'model.safetensors'), readFileSync(join(GPT2_DIR, 'model.safetensors')));
    await userError(svc.importer.import({ source: badCfg, storeDir }));
    const badSt = join(tmp, 'badst');
    mkdirSync(badSt);
    writeFileSync(join(badSt, 'config.json'), readFileSync(join(GPT2_DIR, 'config.json')));
    writeFileSync(join(badSt, 'model.safetensors'), new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]));
    await userError(svc.importer.import({ source: badSt, storeDir }));
    await userError(svc.importer.import({ source: '', storeDir }));
  });
});

describe('adapters and merge', () => {
  test('a random adapter merged into stories260K equals W + scale·(alpha/r)·B·A', async () => {
    const cfg = archConfigOf(loadBundledModel().weights.config);
    const ad = writeAdapter(cfg, ['q', 'v', 'down'], 2, 4, 7);
    const { config } = await svc.adapterValidator.validate({ config: ad.config, safetensorsPath: ad.st });
    expect(config.r).toBe(2);
    expect(config.target_modules).toEqual(['q_proj', 'v_proj', 'down_proj']);
    const scale = 0.75;
    const res = await svc.merge.mergeAdapter({ target: base, adapter: { config, path: ad.dir }, scale, storeDir });
    expect(res.weights.path.startsWith(storeDir)).toBe(true);
    const merged = loadModelFromPath(res.weights.path, { tokenizerPath: join(REPO, 'models/stories260K/tok512.bin') }).weights;
    const orig = loadBundledModel().weights;
    const s = scale * (4 / 2);
    for (const [key, name] of [['1.q', 'model.layers.1.self_attn.q_proj.weight'], ['4.v', 'model.layers.4.self_attn.v_proj.weight'], ['0.down', 'model.layers.0.mlp.down_proj.weight']] as const) {
      const m = ad.w.modules.get(key)!;
      const want = expectedMerge(orig.tensors.get(name)!.data, m.out, m.in, m.a, m.b, 2, s, false);
      const got = merged.tensors.get(name)!.data;
      let maxErr = 0;
      for (let i = 0; i < want.length; i++) maxErr = Math.max(maxErr, Math.abs(got[i]! - want[i]!));
      expect(maxErr).toBeLessThan(1e-6);
      expect(got).not.toEqual(orig.tensors.get(name)!.data);
    }
    // Untouched tensors stay bit-identical.
    expect(merged.tensors.get('model.layers.2.self_attn.k_proj.weight')!.data).toEqual(orig.tensors.get('model.layers.2.self_attn.k_proj.weight')!.data);
    expect(merged.tensors.get('model.embed_tokens.weight')!.data).toEqual(orig.tensors.get('model.embed_tokens.weight')!.data);

    // The adapter is kept as a ZIP and exported from there.
    expect(res.adapterPath!.endsWith('.zip')).toBe(true);
    const f = await svc.exporter.adapterFile({ ...base, version: 1, adapterPath: res.adapterPath! });
    expect(f!.contentType).toBe('application/zip');
    expect(f!.filename).toBe('stories260K-v1-adapter.zip');
    const un = unpackAdapter(readFileSync(f!.path));
    expect((un.config as Record<string, unknown>).r).toBe(2);
    expect(un.weights).toEqual(new Uint8Array(readFileSync(ad.st)));
    expect(await svc.exporter.adapterFile({ ...base, adapterPath: null })).toBeNull();
  });

  test('GPT-2 Conv1D: the (out, in) update is added to the (in, out) stored weight', async () => {
    const imp = await svc.importer.import({ source: GPT2_DIR, storeDir });
    const v: ResolvedVersion = { model: 'g', version: 0, architecture: 'gpt2', config: imp.config, path: imp.weights.path, sha256: imp.weights.sha256 };
    const orig = loadVersion(REPO, v).weights;
    const cfg = archConfigOf(orig.config);
    const ad = writeAdapter(cfg, ['c_attn', 'mlp.c_proj'], 1, 2, 11);
    const { config } = await svc.adapterValidator.validate({ config: ad.config, safetensorsPath: ad.st });
    expect(config.fan_in_fan_out).toBe(true);
    const res = await svc.merge.mergeAdapter({ target: v, adapter: { config, path: ad.st }, scale: 1, storeDir });
    const merged = loadVersion(REPO, { ...v, path: res.weights.path, sha256: res.weights.sha256 }).weights;
    for (const [key, name] of [['0.c_attn', 'transformer.h.0.attn.c_attn.weight'], ['0.mlp.c_proj', 'transformer.h.0.mlp.c_proj.weight']] as const) {
      const m = ad.w.modules.get(key)!;
      const want = expectedMerge(orig.tensors.get(name)!.data, m.out, m.in, m.a, m.b, 1, 2, true); // (out, in)
      const got = merged.tensors.get(name)!; // stored (in, out)
      expect(got.shape).toEqual([m.in, m.out]);
      for (let o = 0; o < m.out; o++) for (let i = 0; i < m.in; i++) expect(Math.abs(got.data[i * m.out + o]! - want[o * m.in + i]!)).toBeLessThan(1e-6);
    }
  });

  test('non-finite adapters and non-finite merge results are refused', async () => {
    const cfg = archConfigOf(loadBundledModel().weights.config);
    const nan = writeAdapter(cfg, ['q'], 2, 4, 3, (w) => (w.modules.get('0.q')!.a[5] = NaN));
    expect((await userError(svc.adapterValidator.validate({ config: nan.config, safetensorsPath: nan.st }))).message).toMatch(/not finite/);
    await userError(svc.merge.mergeAdapter({ target: base, adapter: { config: nan.config, path: nan.dir }, scale: 1, storeDir }));
    // Finite but huge: the merged weight overflows f32.
    const huge = writeAdapter(cfg, ['q'], 2, 4, 3, (w) => {
      w.modules.get('2.q')!.a.fill(3e38);
      w.modules.get('2.q')!.b.fill(3e38);
    });
    await svc.adapterValidator.validate({ config: huge.config, safetensorsPath: huge.st });
    expect((await userError(svc.merge.mergeAdapter({ target: base, adapter: { config: huge.config, path: huge.dir }, scale: 1, storeDir }))).message).toMatch(/non-finite/);
    await userError(svc.merge.mergeAdapter({ target: base, adapter: { config: huge.config, path: huge.dir }, scale: Number.NaN, storeDir }));
  });

  test('a catastrophic target_modules pattern is checked in milliseconds', async () => {
    const cfg = archConfigOf(loadBundledModel().weights.config);
    const ad = writeAdapter(cfg, ['q'], 2, 4, 5);
    // The first alternative never matches and backtracks exponentially in RegExp (~1 s per tensor).
    const config = { ...ad.config, target_modules: '(.*.*)*x|.*q_proj' };
    const t0 = performance.now();
    expect((await svc.adapterValidator.validate({ config, safetensorsPath: ad.st })).config.target_modules).toBe(config.target_modules);
    await svc.merge.mergeAdapter({ target: base, adapter: { config, path: ad.dir }, scale: 1, storeDir });
    expect(performance.now() - t0).toBeLessThan(2000); // the merge itself is ~100 ms of f64 on the CPU
  });

  test('malformed adapter config or tensors → UserInputError', async () => {
    const cfg = archConfigOf(loadBundledModel().weights.config);
    const ad = writeAdapter(cfg, ['q', 'k'], 2, 4, 5);
    const bad = async (config: unknown, st = ad.st) => userError(svc.adapterValidator.validate({ config, safetensorsPath: st }));
    expect((await bad({ ...ad.config, r: 0 })).message).toMatch(/\.r/);
    expect((await bad({ ...ad.config, r: 3 })).message).toMatch(/r = 3/);
    await bad({ ...ad.config, peft_type: 'PREFIX_TUNING' });
    await bad({ ...ad.config, lora_alpha: -1 });
    await bad({ ...ad.config, target_modules: ['q_proj'] }); // k_proj tensors not selected
    await bad({ ...ad.config, use_dora: true });
    await bad('not an object');
    await bad(null);
    const junk = join(tmp, 'junk.safetensors');
    writeFileSync(junk, new Uint8Array([9, 0, 0, 0, 0, 0, 0, 0, 123, 125, 125]));
    await bad(ad.config, junk);
    await bad(ad.config, join(tmp, 'missing.safetensors'));
    // A structurally fine adapter for the wrong model is refused at merge time.
    const gpt2 = { architecture: 'gpt2', dim: 8, nLayers: 1, nHeads: 2, hiddenDim: 32, vocabSize: 16 } satisfies ArchConfig;
    const other = writeAdapter(gpt2, ['c_attn'], 2, 4, 9);
    await svc.adapterValidator.validate({ config: other.config, safetensorsPath: other.st });
    await userError(svc.merge.mergeAdapter({ target: base, adapter: { config: other.config, path: other.dir }, scale: 1, storeDir }));
    // Wrong dims for this model.
    const wrong = writeAdapter({ ...cfg, dim: 32, nHeads: 4, nKvHeads: 2 }, ['q'], 2, 4, 9);
    expect((await userError(svc.merge.mergeAdapter({ target: base, adapter: { config: wrong.config, path: wrong.dir }, scale: 1, storeDir }))).message).toMatch(/shape/);
  });
});

describe('export', () => {
  test('weightsFile converts the llama2.c base once into a safetensors with the same tensors', async () => {
    const f = { ...(await svc.exporter.weightsFile(base)), path: pathOf(await svc.exporter.weightsFile(base)) };
    expect(f.path.endsWith(`${base.sha256}.safetensors`)).toBe(true);
    expect(f.contentType).toBe('application/octet-stream');
    expect(f.filename).toBe('stories260K-v0.safetensors');
    const parsed = parseSafetensors(new Uint8Array(readFileSync(f.path)));
    const orig = loadBundledModel().weights;
    expect([...parsed.tensors.keys()].sort()).toEqual([...orig.tensors.keys()].sort());
    for (const [name, t] of orig.tensors) {
      const p = parsed.tensors.get(name)!;
      expect(p.shape).toEqual(t.shape);
      expect(toFloat32(p)).toEqual(t.data);
    }
    expect(pathOf(await svc.exporter.weightsFile(base))).toBe(f.path);
    // A manifest version is streamed from its objects: exactly the recorded length and sha256.
    const imp = await svc.importer.import({ source: GPT2_DIR, storeDir });
    const gv = { model: 'g', version: 2, architecture: 'gpt2', config: imp.config, path: imp.weights.path, sha256: imp.weights.sha256 };
    const g = await svc.exporter.weightsFile(gv);
    if (!('stream' in g)) throw new Error('expected a stream');
    const gb = new Uint8Array(await new Response(g.stream()).arrayBuffer());
    expect(gb.length).toBe(g.size);
    expect(createHash('sha256').update(gb).digest('hex')).toBe(imp.weights.sha256);
    parseSafetensors(gb);
    // A manifest that does not serve the recorded sha256 is not exported.
    await expect(svc.exporter.weightsFile({ ...gv, sha256: 'b'.repeat(64) })).rejects.toThrow(/records/);
    // A recorded sha256 that does not match the file is not silently exported.
    await expect(svc.exporter.weightsFile({ ...base, sha256: 'a'.repeat(64) })).rejects.toThrow(/hashes to/);
  });
});
