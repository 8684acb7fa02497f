import { describe, expect, test } from 'bun:test';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hfFolderFiles } from '../src/model/hf.ts';
import { loadLlama2c } from '../src/model/llama2c.ts';
import { DEFAULT_MODEL_DIR, loadModelFromPath } from '../src/model/registry.ts';
import {
  HfTokenizer,
  type ScoredBpeTokenizer,
  TokenizerError,
  gpt2TokenizerJson,
  loadHfTokenizer,
  loadLlama2cTokenizer,
  loadSentencePieceTokenizer,
  parseSentencePieceModel,
} from '../src/model/tokenizer.ts';
import { Rng } from '../src/util/rng.ts';

// Greedy outputs of llama2.c for the bundled model (shipped with it) and a tiny HF GPT-2 kept with the tests.
const golden = JSON.parse(readFileSync(join(DEFAULT_MODEL_DIR, 'golden.json'), 'utf8')) as {
  cases: { prompt: string; prompt_ids: number[]; output_ids: number[]; text: string }[];
};
const tokBin = readFileSync(join(DEFAULT_MODEL_DIR, 'tok512.bin'));
const tokModel = readFileSync(join(DEFAULT_MODEL_DIR, 'tok512.model'));
const bin = loadLlama2cTokenizer(tokBin, 512);
const sp = loadSentencePieceTokenizer(tokModel);

/** llama2.c's encode() transcribed literally (O(n²) merge loop), as an oracle for the heap version. */
function naiveLlama2cEncode(t: ScoredBpeTokenizer, text: string): number[] {
  const pieces: string[] = [];
  for (let i = 0; i < t.vocabSize; i++) {
    const b = new TextEncoder().encode(t.idToPiece(i)!);
    pieces.push(String.fromCharCode(...b));
  }
  // idToPiece decodes bytes as UTF-8; the tok512 pieces are valid UTF-8, so this is lossless here.
  const lookup = (s: string) => {
    const i = pieces.indexOf(s);
    return i;
  };
  const tokens: number[] = [1];
  const bytes = new TextEncoder().encode(text);
  if (bytes.length > 0) tokens.push(lookup(' '));
  let buf: number[] = [];
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i]!;
    if ((c & 0xc0) !== 0x80) buf = [];
    buf.push(c);
    if (((bytes[i + 1] ?? 0) & 0xc0) === 0x80 && buf.length < 4) continue;
    const id = lookup(String.fromCharCode(...buf));
    if (id !== -1) tokens.push(id);
    else for (const b of buf) tokens.push(b + 3);
    buf = [];
  }
  for (;;) {
    let best = -1e10, bestId = -1, bestIdx = -1;
    for (let i = 1; i < tokens.length - 1; i++) {
      const id = lookup(pieces[tokens[i]!]! + pieces[tokens[i + 1]!]!);
      if (id !== -1 && t.score(id) > best) {
        best = t.score(id);
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) break;
    tokens.splice(bestIdx, 2, bestId);
  }
  return tokens;
}


/**
 * A Llama-style tokenizer.json (Metaspace-like normalizer, BPE with byte fallback) built from the
 * sentencepiece model, with merges derived from the scored pieces as transformers' LlamaConverter
 * (SentencePieceExtractor) does: every split of a piece into two vocabulary pieces, ranked by the
 * merged piece's score.
 */
function llamaTokenizerJson(model: Uint8Array): Record<string, unknown> {
  const m = parseSentencePieceModel(model);
  const vocab: Record<string, number> = {};
  m.pieces.forEach((p, i) => {
    vocab[p.piece] = i;
  });
  const merges: [string, string, number][] = [];
  for (const p of m.pieces) {
    if (p.type !== 1) continue;
    const cs = Array.from(p.piece);
    const local: [string, string, number][] = [];
    for (let k = 1; k < cs.length; k++) {
      const l = cs.slice(0, k).join(''), r = cs.slice(k).join('');
      if (vocab[l] !== undefined && vocab[r] !== undefined) local.push([l, r, p.score]);
    }
    local.sort((a, b) => vocab[a[0]]! - vocab[b[0]]! || vocab[a[1]]! - vocab[b[1]]!);
    merges.push(...local);
  }
  merges.sort((a, b) => b[2] - a[2]);
  return {
    version: '1.0',
    added_tokens: [0, 1, 2].map((id) => ({ id, content: m.pieces[id]!.piece, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '\u2581' }, { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [{ type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }],
    },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab, merges: merges.map(([a, b]) => [a, b]) },
  };
}

function randomText(rng: Rng, len: number): string {
  const alphabet = [...'abcdefghijklmnopqrstuvwxyz     ..,,!?\'"\nTOLSB0123', 'é', 'ü', '中', '文', '😀', '🦙', '—', '\t', '™'];
  let s = '';
  for (let i = 0; i < len; i++) s += alphabet[rng.nextU32() % alphabet.length];
  return s;
}

describe('llama2.c tokenizer (tok512.bin)', () => {
  test('reproduces golden prompt_ids for every case', () => {
    for (const c of golden.cases) expect(bin.encode(c.prompt)).toEqual(c.prompt_ids);
  });

  test('decode of golden output_ids gives the known story text', () => {
    const first = golden.cases[0]!;
    const text = bin.decode(first.output_ids);
    expect(text.startsWith('Once upon a time, there was a little girl named Lily.')).toBe(true);
    for (const c of golden.cases) expect(bin.decode(c.output_ids)).toBe(c.text);
  });

  test('BOS/EOS options, empty text, dummy prefix', () => {
    expect(bin.bos).toBe(1);
    expect(bin.eos).toBe(2);
    expect(bin.vocabSize).toBe(512);
    expect(bin.encode('')).toEqual([1]);
    expect(bin.encode('', { bos: false })).toEqual([]);
    expect(bin.encode('Once upon a time', { bos: false, eos: true })).toEqual([403, 407, 261, 378, 2]);
    expect(bin.idToPiece(403)).toBe(' Once');
  });

  test('heap BPE equals the literal llama2.c merge loop on random text (unicode, byte fallback)', () => {
    const rng = new Rng(2024);
    for (let it = 0; it < 150; it++) {
      const text = randomText(rng, 1 + (rng.nextU32() % 60));
      expect(bin.encode(text)).toEqual(naiveLlama2cEncode(bin, text));
    }
  });

  test('byte fallback: characters outside the vocabulary become <0xXX> tokens (id = byte + 3)', () => {
    const ids = bin.encode('🦙', { bos: false });
    // ' ' dummy prefix, then the 4 UTF-8 bytes F0 9F A6 99 (unless merged with the prefix).
    const bytes = [...new TextEncoder().encode('🦙')];
    expect(ids.slice(-4)).toEqual(bytes.map((b) => b + 3));
    expect(bin.decode(ids)).toBe('🦙');
  });

  test('decode(encode(x)) == x on random text', () => {
    const rng = new Rng(7);
    for (let it = 0; it < 100; it++) {
      const text = randomText(rng, 1 + (rng.nextU32() % 80));
      expect(bin.decode(bin.encode(text))).toBe(text);
      expect(bin.decode(bin.encode(text, { bos: false }))).toBe(text);
    }
  });

  test('streaming decode: multi-byte characters split over byte tokens come out whole, once', () => {
    const text = 'Lily saw 🦙 and 中文 — ok™';
    const ids = bin.encode(text);
    const d = bin.createStreamDecoder();
    const parts = ids.map((id) => d.decodeToken(id));
    parts.push(d.flush());
    expect(parts.join('')).toBe(text);
    for (const p of parts) expect(p.includes('\uFFFD')).toBe(false);
    // The llama is 4 byte tokens: the first three give '' and the fourth the whole character.
    const llamaAt = parts.findIndex((p) => p.includes('🦙'));
    expect(parts.slice(llamaAt - 3, llamaAt)).toEqual(['', '', '']);
    // With the prompt as context, only the continuation is returned (and its leading space kept).
    const prompt = bin.encode('Once upon a time');
    const cont = golden.cases[0]!.output_ids.slice(prompt.length);
    const d2 = bin.createStreamDecoder({ context: prompt });
    const s = cont.map((id) => d2.decodeToken(id)).join('') + d2.flush();
    expect('Once upon a time' + s).toBe(golden.cases[0]!.text);
  });

  test('bounds and malformed files', () => {
    const small = loadLlama2cTokenizer(tokBin, 512, { maxInputChars: 10 });
    expect(() => small.encode('x'.repeat(11))).toThrow(/over the limit of 10/);
    expect(() => bin.decode([512])).toThrow(TokenizerError);
    expect(() => bin.decode([-1])).toThrow(/outside the vocabulary/);
    expect(() => bin.decode([1.5])).toThrow(/outside the vocabulary/);
    expect(() => loadLlama2cTokenizer(tokBin.subarray(0, 100), 512)).toThrow(/truncated/);
    expect(() => loadLlama2cTokenizer(tokBin, 500)).toThrow(/bytes after 500 tokens/);
    expect(() => loadLlama2cTokenizer(tokBin, 513)).toThrow(/truncated at token 512/);
    expect(loadLlama2cTokenizer(tokBin).vocabSize).toBe(512); // size inferred from the file
    const badLen = new Uint8Array(tokBin);
    new DataView(badLen.buffer).setInt32(8, 1000, true); // token 0 length
    expect(() => loadLlama2cTokenizer(badLen, 512)).toThrow(/has length 1000/);
    const badMax = new Uint8Array(tokBin);
    new DataView(badMax.buffer).setInt32(0, 0, true);
    expect(() => loadLlama2cTokenizer(badMax, 512)).toThrow(/max_token_length 0/);
    expect(() => loadLlama2cTokenizer(new Uint8Array(2))).toThrow(/4-byte header/);
  });
});

describe('sentencepiece tokenizer.model', () => {
  test('pieces and scores equal tok512.bin (as llama2.c export writes them)', () => {
    expect(sp.vocabSize).toBe(512);
    for (let i = 0; i < 512; i++) {
      expect(sp.idToPiece(i)).toBe(bin.idToPiece(i)!);
      expect(sp.score(i)).toBe(bin.score(i));
    }
    const m = parseSentencePieceModel(tokModel);
    expect(m.modelType).toBe(2);
    expect(m.byteFallback).toBe(true);
    expect([m.unkId, m.bosId, m.eosId]).toEqual([0, 1, 2]);
    expect(m.pieces[259]!.piece).toBe('\u2581t');
  });

  test('reproduces the golden prompt ids and decodes golden output', () => {
    for (const c of golden.cases) {
      expect(sp.encode(c.prompt)).toEqual(c.prompt_ids);
      expect(sp.decode(c.output_ids)).toBe(c.text);
    }
  });

  test('malformed protobuf and unigram models are refused clearly', () => {
    expect(() => loadSentencePieceTokenizer(tokModel.subarray(0, 1000))).toThrow(TokenizerError);
    expect(() => parseSentencePieceModel(new Uint8Array([0x0a, 0xff, 0xff, 0xff, 0x0f]))).toThrow(/runs past/);
    expect(() => parseSentencePieceModel(new Uint8Array([0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]))).toThrow(/varint longer than 10/);
    expect(() => parseSentencePieceModel(new Uint8Array([0x0b]))).toThrow(/wire type 3/);
    // One piece "a" (score 0) and a trainer spec with model_type UNIGRAM (1).
    const unigram = new Uint8Array([0x0a, 0x03, 0x0a, 0x01, 0x61, 0x12, 0x02, 0x18, 0x01]);
    expect(parseSentencePieceModel(unigram).pieces).toEqual([{ piece: 'a', score: 0, type: 1 }]);
    expect(() => loadSentencePieceTokenizer(unigram)).toThrow(/unigram sentencepiece models are not supported/);
    // Negative int32 (bos_id = -1, a 10-byte varint) is read as -1.
    const neg = new Uint8Array([0x12, 0x0e, 0x18, 0x02, 0xc8, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    expect(parseSentencePieceModel(neg).bosId).toBe(-1);
  });
});

describe('Hugging Face tokenizers', () => {
  const gptDir = join(import.meta.dir, 'fixtures/random-tiny-gpt2-lmbuddy');

  test('GPT-2 vocab.json + merges.txt: ids, round trip, specials', () => {
    const t = loadHfTokenizer(gptDir);
    expect(t.kind).toBe('hf');
    expect(t.vocabSize).toBe(21);
    expect(t.bos).toBe(20);
    expect(t.eos).toBe(20);
    // "lower" = l o w er ; " newer" = Ġ n e w er (no merge makes Ġn+e...), per merges.txt.
    expect(t.encode('lower newer')).toEqual([0, 1, 2, 15, 10, 9, 3, 2, 15]);
    // " lower" uses the Ġ l → Ġl → Ġlo → Ġlow merges.
    expect(t.encode(' lower')).toEqual([14, 15]);
    for (const s of ['lower newer', ' lower lowest wider', 'low  er new', 'wonder ster']) {
      expect(t.decode(t.encode(s))).toBe(s);
    }
    expect(t.encode('lower', { bos: true, eos: true })).toEqual([20, 0, 1, 2, 15, 20]);
    expect(t.decode([20, 0, 1, 2, 15, 20])).toBe('lower'); // specials skipped
    expect(t.encode('hello')[0]).toBe(19); // 'h' is not in the toy vocabulary → <unk>
    expect(() => t.decode([21])).toThrow(/outside the vocabulary/);
  });

  test('streaming decode through the library (byte-level) equals full decode', () => {
    const t = loadHfTokenizer(gptDir);
    const ids = t.encode(' lower newer lowest wider');
    const d = t.createStreamDecoder();
    const s = ids.map((id) => d.decodeToken(id)).join('') + d.flush();
    expect(s).toBe(t.decode(ids));
  });

  test('byte-level streaming holds back partial UTF-8 characters', () => {
    // A byte-level vocabulary of the 256 byte symbols only (no merges): 'é' is two tokens.
    const bytesToUnicode = () => {
      const bs: number[] = [];
      for (let b = 33; b <= 126; b++) bs.push(b);
      for (let b = 161; b <= 172; b++) bs.push(b);
      for (let b = 174; b <= 255; b++) bs.push(b);
      const cs = bs.slice();
      let n = 0;
      for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
      const m = new Map<number, string>();
      bs.forEach((b, i) => m.set(b, String.fromCharCode(cs[i]!)));
      return m;
    };
    const map = bytesToUnicode();
    const vocab: Record<string, number> = {};
    for (let b = 0; b < 256; b++) vocab[map.get(b)!] = b;
    vocab['<|endoftext|>'] = 256;
    const t = new HfTokenizer(gpt2TokenizerJson(vocab, '#version: 0.2\n', { specials: ['<|endoftext|>'] }), { eos_token: '<|endoftext|>' });
    expect(t.eos).toBe(256);
    const text = 'né 🦙!';
    const ids = t.encode(text);
    expect(ids.length).toBe(new TextEncoder().encode(text).length);
    expect(t.decode(ids)).toBe(text);
    const d = t.createStreamDecoder();
    const parts = ids.map((id) => d.decodeToken(id));
    expect(parts.join('') + d.flush()).toBe(text);
    for (const p of parts) expect(p.includes('\uFFFD')).toBe(false);
    expect(parts).toContain('🦙');
  });


  test('Llama-style tokenizer.json (built from tok512.model) reproduces the golden ids and text', () => {
    const t = new HfTokenizer(llamaTokenizerJson(tokModel), { bos_token: '<s>', eos_token: '</s>' });
    expect(t.bos).toBe(1);
    expect(t.eos).toBe(2);
    for (const c of golden.cases) {
      expect(t.encode(c.prompt)).toEqual(c.prompt_ids);
      expect(t.decode(c.output_ids)).toBe(c.text);
    }
    expect(t.encode('Once upon a time', { bos: false })).toEqual([403, 407, 261, 378]);
    // Same ids as the llama2.c BPE on random text (byte fallback included).
    const rng = new Rng(11);
    for (let it = 0; it < 60; it++) {
      const text = randomText(rng, 1 + (rng.nextU32() % 50)).replace(/^ +/, 'x');
      expect(t.encode(text)).toEqual(bin.encode(text));
    }
    const ids = bin.encode('Lily saw 🦙 and 中文 — ok™');
    const d = t.createStreamDecoder();
    const parts = ids.map((id) => d.decodeToken(id));
    expect(parts.join('') + d.flush()).toBe('Lily saw 🦙 and 中文 — ok™');
    for (const p of parts) expect(p.includes('\uFFFD')).toBe(false);
  });


  test('HF folder: tokenizer.json + tokenizer_config.json, with the model, through loadModelFromPath', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cola-tok-test-'));
    try {
      const w = loadLlama2c(readFileSync(join(DEFAULT_MODEL_DIR, 'stories260K.bin')));
      const files = hfFolderFiles(w);
      writeFileSync(join(dir, 'config.json'), files['config.json']);
      writeFileSync(join(dir, 'model.safetensors'), files['model.safetensors']);
      writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(llamaTokenizerJson(tokModel)));
      writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: { content: '<s>' }, eos_token: '</s>' }));
      const m = loadModelFromPath(dir);
      expect(m.format).toBe('hf');
      expect(m.tokenizer.kind).toBe('hf');
      expect([m.tokenizer.bos, m.tokenizer.eos]).toEqual([1, 2]);
      expect(m.tokenizer.encode('Zoo')).toEqual([1, 410, 469, 347]);
      expect(m.weights.config.ropeInterleaved).toBe(true);
      // Without tokenizer.json the sentencepiece tokenizer.model is used.
      rmSync(join(dir, 'tokenizer.json'));
      writeFileSync(join(dir, 'tokenizer.model'), tokModel);
      expect(loadModelFromPath(dir).tokenizer.kind).toBe('sentencepiece');
      rmSync(join(dir, 'tokenizer.model'));
      expect(() => loadModelFromPath(dir)).toThrow(/no tokenizer.json, vocab.json \+ merges.txt, or tokenizer.model/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('tokenizer.json errors and input bounds', () => {
    expect(() => new HfTokenizer({ model: { type: 'Nope' } })).toThrow(TokenizerError);
    expect(() => gpt2TokenizerJson({ a: 0, b: 0 }, '')).toThrow(/id 0 is used twice/);
    expect(() => gpt2TokenizerJson({ a: 0 }, '#version: 0.2\na b c\n')).toThrow(/merges.txt line 2/);
    const t = new HfTokenizer(gpt2TokenizerJson({ a: 0, b: 1, ab: 2 }, 'a b\n'), {}, { maxInputChars: 5 });
    expect(t.encode('ab')).toEqual([2]);
    expect(() => t.encode('aaaaaa')).toThrow(/over the limit of 5/);
  });
});
