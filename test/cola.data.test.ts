import { describe, expect, test } from 'bun:test';
import {
  batchAt,
  checkExample,
  encodeExample,
  epochOrder,
  iterateBatches,
  makeBatch,
  splitPromptCompletion,
  stepsPerEpoch,
  totalSteps,
  type Tokenizer,
  type TokenizerLike,
} from '../src/cola/data.ts';
import { ColaConfigError } from '../src/cola/errors.ts';

// Character tokenizer: 'a' → 3, 'b' → 4, …; BOS 1, EOS 2. encode never adds BOS itself here,
// and one with {bos: true} would be a bug in data.ts (it must prepend tok.bos itself).
const tok: Tokenizer = {
  bos: 1,
  eos: 2,
  encode(text, { bos }) {
    if (bos) throw new Error('data.ts must not ask the tokenizer for BOS');
    return [...text].map((c) => c.charCodeAt(0) - 94);
  },
};
const t = (s: string) => [...s].map((c) => c.charCodeAt(0) - 94);

describe('encodeExample', () => {
  test('prompt/completion: BOS, shifted targets, loss on completion (and EOS) only', () => {
    const e = encodeExample(tok, { prompt: 'ab', completion: 'cd' }, { maxSeqLen: 16 });
    expect(e.ids).toEqual([1, ...t('ab'), ...t('cd'), 2]);
    // positions: BOS a b c d EOS → predict: a(no) b(no) c d EOS (last: -1)
    expect(e.targets).toEqual([-1, -1, t('c')[0]!, t('d')[0]!, 2, -1]);
    expect(e.lossTokens).toBe(3);
    expect(e.truncated).toBe(false);
  });
  test('without EOS', () => {
    const e = encodeExample(tok, { prompt: 'ab', completion: 'c' }, { maxSeqLen: 16, appendEos: false });
    expect(e.ids).toEqual([1, ...t('abc')]);
    expect(e.targets).toEqual([-1, -1, t('c')[0]!, -1]);
  });
  test('empty prompt: BOS predicts the first completion token', () => {
    const e = encodeExample(tok, { prompt: '', completion: 'x' }, { maxSeqLen: 16, appendEos: false });
    expect(e.targets).toEqual([t('x')[0]!, -1]);
  });
  test('text: every next token is a target', () => {
    const e = encodeExample(tok, { text: 'abc' }, { maxSeqLen: 16 });
    expect(e.ids).toEqual([1, ...t('abc'), 2]);
    expect(e.targets).toEqual([...t('abc'), 2, -1]);
    expect(e.lossTokens).toBe(4);
  });
  test('truncation keeps the completion and drops the prompt start', () => {
    const e = encodeExample(tok, { prompt: 'abcdef', completion: 'xy' }, { maxSeqLen: 6 });
    // BOS + 2 prompt tokens (e f) + x y EOS = 6
    expect(e.ids).toEqual([1, ...t('ef'), ...t('xy'), 2]);
    expect(e.targets).toEqual([-1, -1, ...t('xy'), 2, -1]);
    expect(e.truncated).toBe(true);
  });
  test('a completion longer than the budget drops the prompt and keeps its beginning', () => {
    const e = encodeExample(tok, { prompt: 'ab', completion: 'uvwxyz' }, { maxSeqLen: 4 });
    expect(e.ids).toEqual([1, ...t('uvw')]);
    expect(e.targets).toEqual([...t('uvw'), -1]);
    expect(e.truncated).toBe(true);
  });
  test('text is cut at the end', () => {
    const e = encodeExample(tok, { text: 'abcdef' }, { maxSeqLen: 3 });
    expect(e.ids).toEqual([1, ...t('ab')]);
    expect(e.truncated).toBe(true);
  });
  test('length never exceeds maxSeqLen', () => {
    for (let L = 2; L < 12; L++) {
      for (const ex of [{ prompt: 'abcdefg', completion: 'hij' }, { text: 'abcdefghij' }, { prompt: '', completion: 'abcdefghijk' }]) {
        const e = encodeExample(tok, ex, { maxSeqLen: L });
        expect(e.ids.length).toBeLessThanOrEqual(L);
        expect(e.lossTokens).toBeGreaterThan(0);
      }
    }
  });
  test('errors', () => {
    expect(() => encodeExample(tok, { prompt: 'a', completion: '' }, { maxSeqLen: 8, appendEos: false })).toThrow(/no tokens/);
    expect(() => encodeExample(tok, { text: 'a' }, { maxSeqLen: 1 })).toThrow(/max_seq_len/);
    expect(() => checkExample({ prompt: 'a' }, 'train[3]')).toThrow(/train\[3\]\.completion/);
    expect(() => checkExample({ text: 'a', prompt: 'b' }, 'train[0]')).toThrow(ColaConfigError);
    expect(() => checkExample({ txt: 'a' }, 'train[0]')).toThrow(/must have/);
    expect(() => checkExample(null, 'train[0]')).toThrow(/must be an object/);
    expect(checkExample({ prompt: '', completion: 'x' }, 'p')).toEqual({ prompt: '', completion: 'x' });
  });
});

// Word tokenizer with a llama2.c-style dummy prefix: " " is prepended to non-empty text, then
// pieces are (spaces + word) or trailing spaces. encode(" terrible") alone gives "  terrible",
// a piece that never occurs inside "It was terrible".
function dummyPrefixTokenizer(): Tokenizer & { piece: (id: number) => string } {
  const vocab = new Map<string, number>();
  const pieces: string[] = [];
  const id = (p: string) => {
    if (!vocab.has(p)) {
      vocab.set(p, pieces.length + 10);
      pieces.push(p);
    }
    return vocab.get(p)!;
  };
  return {
    bos: 1,
    eos: 2,
    encode(text) {
      if (text.length === 0) return [];
      return (' ' + text).match(/\s*\S+|\s+$/g)!.map(id);
    },
    piece: (i) => pieces[i - 10]!,
  };
}

describe('prompt/completion boundary follows the joined text', () => {
  const tk = dummyPrefixTokenizer();
  test('answer with a leading space (SST-2 " terrible")', () => {
    const s = splitPromptCompletion(tk, 'It was', ' terrible');
    expect(s.prompt.map(tk.piece)).toEqual([' It', ' was']);
    expect(s.completion.map(tk.piece)).toEqual([' terrible']); // not ["  terrible"]
  });
  test('prompt ending in a space (COPA "… so ")', () => {
    const s = splitPromptCompletion(tk, 'Rain fell so ', 'we left.');
    expect(s.prompt.map(tk.piece)).toEqual([' Rain', ' fell', ' so']);
    expect(s.completion.map(tk.piece)).toEqual([' we', ' left.']);
    const e = encodeExample(tk, { prompt: 'Rain fell so ', completion: 'we left.' }, { maxSeqLen: 32, appendEos: false });
    expect(e.ids.slice(1).map(tk.piece)).toEqual(tk.encode('Rain fell so we left.', { bos: false }).map(tk.piece));
    expect(e.lossTokens).toBe(2);
  });
  test('empty prompt; completion adding no token is an error', () => {
    expect(splitPromptCompletion(tk, '', 'hi').prompt).toEqual([]);
    expect(() => splitPromptCompletion(tk, 'a', '')).toThrow(/no tokens/);
  });
  test('a tokenizer without BOS/EOS: no BOS, no EOS, first token not predicted', () => {
    const noBos: TokenizerLike = { bos: null, eos: null, encode: (x) => tok.encode(x, { bos: false }) };
    const e = encodeExample(noBos, { prompt: 'ab', completion: 'c' }, { maxSeqLen: 8 });
    expect(e.ids).toEqual(t('abc'));
    expect(e.targets).toEqual([-1, t('c')[0]!, -1]);
    const x = encodeExample(noBos, { text: 'abc' }, { maxSeqLen: 8 });
    expect(x.targets).toEqual([...t('bc'), -1]);
    expect(() => encodeExample(noBos, { prompt: '', completion: 'c' }, { maxSeqLen: 8 })).toThrow(/no token to train on/);
  });
});

describe('makeBatch', () => {
  const a = encodeExample(tok, { prompt: 'a', completion: 'b' }, { maxSeqLen: 16 }); // 4 tokens
  const b = encodeExample(tok, { text: 'abcde' }, { maxSeqLen: 16 }); // 7 tokens
  test('pads to the longest with a key mask', () => {
    const batch = makeBatch([a, b], { padId: 0 });
    expect([batch.B, batch.T]).toEqual([2, 7]);
    expect(Array.from(batch.ids.slice(0, 7))).toEqual([...a.ids, 0, 0, 0]);
    expect(Array.from(batch.targets.slice(0, 7))).toEqual([...a.targets, -1, -1, -1]);
    expect(Array.from(batch.keyMask)).toEqual([1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]);
    expect(batch.lossTokens).toBe(a.lossTokens + b.lossTokens);
    expect(batch.realTokens).toBe(11);
  });
  test('pads to maxSeqLen', () => {
    const batch = makeBatch([a], { pad: 'max', maxSeqLen: 9 });
    expect(batch.T).toBe(9);
    expect(() => makeBatch([b], { pad: 'max', maxSeqLen: 5 })).toThrow(/exceeds/);
    expect(() => makeBatch([])).toThrow(/at least one/);
    expect(() => makeBatch([a], { padId: -1 })).toThrow(/padId/);
  });
});

describe('epochs', () => {
  const cfg = { n: 10, batchSize: 4, epochs: 3, seed: 7 };
  test('step counts', () => {
    expect(stepsPerEpoch(10, 4)).toBe(3);
    expect(stepsPerEpoch(8, 4)).toBe(2);
    expect(totalSteps(cfg)).toBe(9);
    expect(() => totalSteps({ ...cfg, batchSize: 0 })).toThrow(/batch_size/);
    expect(() => totalSteps({ ...cfg, epochs: 1001 })).toThrow(/epochs/);
  });
  test('each epoch is a permutation; epochs differ; seeds reproduce', () => {
    const o0 = epochOrder(cfg, 0);
    const o1 = epochOrder(cfg, 1);
    expect([...o0].sort((x, y) => x - y)).toEqual([...Array(10).keys()]);
    expect(o0).not.toEqual(o1);
    expect(epochOrder({ ...cfg }, 0)).toEqual(o0);
    expect(epochOrder({ ...cfg, seed: 8 }, 0)).not.toEqual(o0);
    expect(epochOrder({ ...cfg, shuffle: false }, 2)).toEqual([...Array(10).keys()]);
  });
  test('batches cover every example once per epoch, last batch smaller; batchAt = iterator', () => {
    const all = [...iterateBatches(cfg)];
    expect(all.length).toBe(9);
    expect(all.map((x) => x.indices.length)).toEqual([4, 4, 2, 4, 4, 2, 4, 4, 2]);
    for (let e = 0; e < 3; e++) {
      const seen = all.filter((x) => x.epoch === e).flatMap((x) => x.indices);
      expect(seen).toEqual(epochOrder(cfg, e));
    }
    all.forEach((x) => expect(batchAt(cfg, x.step)).toEqual({ epoch: x.epoch, indices: x.indices }));
    // Resuming mid-run yields the same tail.
    expect([...iterateBatches(cfg, 5)]).toEqual(all.slice(5));
    expect(() => batchAt(cfg, 9)).toThrow(RangeError);
    // Interleaved configurations do not share a cached order.
    const other = { ...cfg, seed: 8 };
    const b0 = batchAt(other, 0);
    expect(batchAt(cfg, 0)).toEqual({ epoch: all[0]!.epoch, indices: all[0]!.indices });
    expect(batchAt(other, 0)).toEqual(b0);
    expect(b0.indices).toEqual(epochOrder(other, 0).slice(0, 4));
    expect(batchAt({ ...cfg, shuffle: false }, 1).indices).toEqual([4, 5, 6, 7]);
  });
});
