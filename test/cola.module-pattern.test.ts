// PEFT target_modules patterns without a backtracking engine (src/cola/module-pattern.ts):
// the same answers as a full-match RegExp on the patterns PEFT configs use and on random small
// ones; catastrophic patterns finish in milliseconds; unsupported syntax is refused. No GPU.
import { describe, expect, test } from 'bun:test';
import { compileModulePattern, MAX_PATTERN_LENGTH, PatternError } from '../src/cola/module-pattern.ts';
import { Rng } from '../src/util/rng.ts';

const llamaNames = Array.from({ length: 12 }, (_, l) =>
  ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'].map((m) => `model.layers.${l}.${m}`),
).flat();
const gpt2Names = Array.from({ length: 3 }, (_, l) => ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'].map((m) => `transformer.h.${l}.${m}`)).flat();
const names = [...llamaNames, ...gpt2Names, '', 'q_proj', 'model.layers.x.self_attn.q_proj'];

// The oracle: JavaScript's RegExp, safe on these patterns, with Python's fullmatch semantics.
const oracle = (p: string) => new RegExp(`^(?:${p})$`);

describe('matches like re.fullmatch', () => {
  const patterns = [
    String.raw`.*\.(q_proj|v_proj)`,
    String.raw`.*(q_proj|v_proj)$`,
    'model.layers.\\d+.self_attn.(q|v)_proj',
    String.raw`model\.layers\.\d{1,2}\.self_attn\.[qkv]_proj`,
    String.raw`^model\.layers\.[0-2]\..*`,
    String.raw`(?:.*\.)?(gate|up)_proj`,
    String.raw`.*layers\.(1|3|11)\.mlp\.down_proj`,
    String.raw`.*[^q]_proj`,
    String.raw`.*\.c_(attn|proj)`,
    String.raw`transformer\.h\.\d\.(attn|mlp)\.c_proj`,
    String.raw`(?P<mod>.*)\.q_proj`,
    'q_proj',
    '.*_pro?j',
    '.+',
    '.*',
    '(model|transformer)\\.(layers|h)\\.[13579]\\..*(a|o).*',
    String.raw`[a-z._]+\.\d+\.[\w.]+`,
    String.raw`.*\.\w{5,6}`,
    'a{0}model.*{x}',
  ];
  for (const p of patterns) {
    test(p, () => {
      const m = compileModulePattern(p);
      const re = oracle(p.replace('(?P<', '(?<'));
      for (const n of names) expect([n, m.test(n)]).toEqual([n, re.test(n)]);
    });
  }

  test('the usual PEFT patterns pick the right modules', () => {
    const pick = (p: string) => llamaNames.filter((n) => compileModulePattern(p).test(n));
    expect(pick(String.raw`.*\.(q_proj|v_proj)`)).toEqual(llamaNames.filter((n) => /\.(q|v)_proj$/.test(n)));
    expect(pick('model.layers.\\d+.self_attn.(q|v)_proj').length).toBe(24);
    expect(pick(String.raw`model\.layers\.1\.self_attn\.q_proj`)).toEqual(['model.layers.1.self_attn.q_proj']);
  });

  test('random small patterns agree with RegExp', () => {
    const rng = new Rng(11);
    const atoms = ['a', 'b', '.', '\\.', '[ab]', '[^a]', '\\w', '\\d', '1'];
    const gen = (depth: number): string => {
      const n = 1 + rng.int(3);
      let s = '';
      for (let i = 0; i < n; i++) {
        let a = depth > 0 && rng.int(4) === 0 ? `(${gen(depth - 1)}${rng.int(2) ? `|${gen(depth - 1)}` : ''})` : atoms[rng.int(atoms.length)]!;
        a += ['', '', '*', '+', '?', '{2}', '{0,2}', '{1,}'][rng.int(8)]!;
        s += a;
      }
      return s;
    };
    const words: string[] = [];
    for (let i = 0; i < 60; i++) words.push(Array.from({ length: rng.int(7) }, () => 'ab.1_'[rng.int(5)]).join(''));
    for (let k = 0; k < 300; k++) {
      const p = gen(2);
      const m = compileModulePattern(p);
      const re = oracle(p);
      for (const w of words) if (m.test(w) !== re.test(w)) throw new Error(`${JSON.stringify(p)} on ${JSON.stringify(w)}: ${m.test(w)} vs ${re.test(w)}`);
    }
  });
});

describe('bounded cost', () => {
  // On Bun's RegExp, `(.*.*)*x` takes ~1 s per module name (the reported attack froze the event loop).
  const catastrophic = [
    '(.*.*)*x',
    '((.*)*)*z',
    '(a+)+$',
    '(\\w+\\.?)*X',
    // 130 characters of nested groups, as in the report
    ('((.*)*' + '(.|.)*'.repeat(10) + ')*').padEnd(129, '.') + 'Z',
  ];
  for (const p of catastrophic) {
    test(`${p.slice(0, 40)} over ${names.length} names takes milliseconds`, () => {
      const t0 = performance.now();
      const m = compileModulePattern(p);
      const hits = names.filter((n) => m.test(n));
      const ms = performance.now() - t0;
      expect(ms).toBeLessThan(250); // ~1 ms here; generous for a loaded 2-core machine
      if (!p.endsWith('$')) expect(hits).toEqual([]);
    });
  }
});

describe('refused', () => {
  const bad: [string, RegExp][] = [
    ['(?!.*vision).*q_proj', /lookahead/],
    ['(?<=a)q', /lookahead and lookbehind/],
    ['(q)_proj\\1', /backreferences/],
    ['\\bq_proj', /\\b is not supported/],
    ['(?i)q_proj', /inline flags/],
    ['a{1,100}', /repeat counts above 16/],
    ['a*+', /possessive/],
    ['a**', /multiple repeat/],
    ['*a', /nothing to repeat/],
    ['(q|v', /unterminated group/],
    ['q)', /unbalanced/],
    ['[ab', /unterminated character set/],
    ['[z-a]', /bad character range/],
    ['', /empty/],
    ['a'.repeat(MAX_PATTERN_LENGTH + 1), /longer than/],
    ['((((a{16}){16}){16}){16})', /states/],
  ];
  for (const [p, msg] of bad) {
    test(JSON.stringify(p.slice(0, 30)), () => {
      let err: unknown;
      try {
        compileModulePattern(p);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(PatternError);
      expect((err as Error).message).toMatch(msg);
    });
  }
});
