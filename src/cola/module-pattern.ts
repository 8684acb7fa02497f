// PEFT `target_modules` given as a string: a Python regex that must match a module's whole name
// (`re.fullmatch`). A tenant's pattern never reaches JavaScript's RegExp, which backtracks: on
// Bun, `(.*.*)*x` takes about a second per module name, and every extra group multiplies it. Here
// the pattern is parsed into a Thompson NFA and simulated one state set per character, so a match
// costs O(name length × states) whatever the pattern, and the pattern's size is bounded.
//
// Supported (what PEFT configs use, e.g. `.*\.(q_proj|v_proj)`, `model.layers.\d+.self_attn.(q|v)_proj`):
// literals; `.`; escapes \d \D \w \W \s \S \n \t \r and escaped punctuation; classes [a-z_], [^…];
// groups ( ), (?: ) and named (?P<n> ) / (?<n> ); alternation |; quantifiers * + ? (lazy *? +? ??
// mean the same under a full match) and {n} {n,} {n,m} (≤ 16); anchors ^ and $.
// Refused with a message saying so: lookaround, backreferences, \b and other assertions, inline
// flags, possessive quantifiers.

export const MAX_PATTERN_LENGTH = 256;
const MAX_STATES = 1024;
const MAX_REPEAT = 16;

export class PatternError extends Error {
  override name = 'PatternError';
}

type CharTest = (c: number) => boolean;
type Node =
  | { k: 'char'; test: CharTest }
  | { k: 'cat'; xs: Node[] }
  | { k: 'alt'; xs: Node[] }
  | { k: 'rep'; x: Node; min: number; max: number }
  | { k: 'bol' }
  | { k: 'eol' };

const range = (lo: number, hi: number): CharTest => (c) => c >= lo && c <= hi;
const code = (s: string) => s.charCodeAt(0);
const DIGIT = range(48, 57);
const WORD: CharTest = (c) => DIGIT(c) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95;
const SPACE: CharTest = (c) => c === 32 || (c >= 9 && c <= 13);
const not = (t: CharTest): CharTest => (c) => !t(c);
const META = new Set('.^$*+?{}[]\\|()');

class Parser {
  i = 0;
  constructor(readonly s: string) {}

  fail(msg: string): never {
    throw new PatternError(`invalid regex at position ${this.i}: ${msg}`);
  }

  parse(): Node {
    const n = this.alt();
    if (this.i < this.s.length) this.fail(this.s[this.i] === ')' ? 'unbalanced ")"' : `unexpected ${JSON.stringify(this.s[this.i])}`);
    return n;
  }

  private alt(): Node {
    const xs = [this.seq()];
    while (this.s[this.i] === '|') {
      this.i++;
      xs.push(this.seq());
    }
    return xs.length === 1 ? xs[0]! : { k: 'alt', xs };
  }

  private seq(): Node {
    const xs: Node[] = [];
    while (this.i < this.s.length && this.s[this.i] !== '|' && this.s[this.i] !== ')') {
      const atom = this.atom();
      xs.push(this.quantified(atom));
    }
    return { k: 'cat', xs };
  }

  private quantified(atom: Node): Node {
    const c = this.s[this.i];
    let min: number;
    let max: number;
    if (c === '*' || c === '+' || c === '?') {
      this.i++;
      [min, max] = c === '*' ? [0, Infinity] : c === '+' ? [1, Infinity] : [0, 1];
    } else if (c === '{' && this.countAhead()) {
      [min, max] = this.count();
    } else {
      return atom;
    }
    if (atom.k === 'bol' || atom.k === 'eol') this.fail('nothing to repeat');
    if (this.s[this.i] === '?') this.i++; // lazy: the same set of full matches
    else if (this.s[this.i] === '+') this.fail('possessive quantifiers are not supported');
    const next = this.s[this.i];
    if (next === '*' || next === '+' || next === '?' || (next === '{' && this.countAhead())) this.fail('multiple repeat');
    return { k: 'rep', x: atom, min, max };
  }

  private countAhead(): boolean {
    return /^\{\d*(,\d*)?\}/.test(this.s.slice(this.i, this.i + 16)) && this.s[this.i + 1] !== '}' && this.s[this.i + 1] !== ',';
  }

  private count(): [number, number] {
    const m = /^\{(\d+)(,(\d*))?\}/.exec(this.s.slice(this.i))!;
    this.i += m[0].length;
    const min = Number(m[1]);
    const max = m[2] === undefined ? min : m[3] === '' ? Infinity : Number(m[3]);
    if (min > MAX_REPEAT || (max !== Infinity && max > MAX_REPEAT)) this.fail(`repeat counts above ${MAX_REPEAT} are not supported`);
    if (max < min) this.fail('min repeat greater than max repeat');
    return [min, max];
  }

  private atom(): Node {
    const c = this.s[this.i]!;
    if (c === '(') return this.group();
    if (c === '[') return this.cls();
    if (c === '\\') {
      this.i++;
      return { k: 'char', test: this.escape(false) };
    }
    this.i++;
    if (c === '.') return { k: 'char', test: (x) => x !== 10 };
    if (c === '^') return { k: 'bol' };
    if (c === '$') return { k: 'eol' };
    if (c === '*' || c === '+' || c === '?') {
      this.i--;
      this.fail('nothing to repeat');
    }
    const cc = code(c);
    return { k: 'char', test: (x) => x === cc };
  }

  private group(): Node {
    this.i++; // (
    if (this.s[this.i] === '?') {
      const rest = this.s.slice(this.i + 1);
      if (rest.startsWith(':')) this.i += 2;
      else if (/^P?<[A-Za-z_]\w*>/.test(rest)) this.i += 1 + rest.indexOf('>') + 1;
      else if (/^(=|!|<=|<!)/.test(rest)) this.fail('lookahead and lookbehind are not supported');
      else this.fail('inline flags and other (?…) groups are not supported');
    }
    const n = this.alt();
    if (this.s[this.i] !== ')') this.fail('missing ")", unterminated group');
    this.i++;
    return n;
  }

  /** After a backslash. Inside a class, only character escapes make sense. */
  private escape(inClass: boolean): CharTest {
    const c = this.s[this.i];
    if (c === undefined) this.fail('bad escape (end of pattern)');
    this.i++;
    switch (c) {
      case 'd':
        return DIGIT;
      case 'D':
        return not(DIGIT);
      case 'w':
        return WORD;
      case 'W':
        return not(WORD);
      case 's':
        return SPACE;
      case 'S':
        return not(SPACE);
      case 'n':
        return (x) => x === 10;
      case 't':
        return (x) => x === 9;
      case 'r':
        return (x) => x === 13;
    }
    if (/[0-9]/.test(c)) this.fail(inClass ? 'octal escapes are not supported' : 'backreferences are not supported');
    if (/[A-Za-z]/.test(c)) this.fail(`\\${c} is not supported`);
    const cc = code(c);
    return (x) => x === cc;
  }

  private cls(): Node {
    const start = this.i;
    this.i++; // [
    let negate = false;
    if (this.s[this.i] === '^') {
      negate = true;
      this.i++;
    }
    const items: CharTest[] = [];
    let first = true;
    for (;;) {
      const c = this.s[this.i];
      if (c === undefined) {
        this.i = start;
        this.fail('unterminated character set');
      }
      if (c === ']' && !first) {
        this.i++;
        break;
      }
      first = false;
      let lo: number | null;
      if (c === '\\') {
        this.i++;
        const before = this.i;
        const t = this.escape(true);
        // A single-character escape can start a range; a class escape (\d …) cannot.
        lo = this.i === before + 1 && !/[dDwWsS]/.test(this.s[before]!) ? this.escapedCode(this.s[before]!) : null;
        if (lo === null) {
          items.push(t);
          continue;
        }
      } else {
        this.i++;
        lo = code(c);
      }
      if (this.s[this.i] === '-' && this.s[this.i + 1] !== undefined && this.s[this.i + 1] !== ']') {
        this.i++;
        let hi: number;
        if (this.s[this.i] === '\\') {
          this.i++;
          const h = this.s[this.i]!;
          if (/[dDwWsS]/.test(h)) this.fail('bad character range');
          this.escape(true);
          hi = this.escapedCode(h);
        } else {
          hi = code(this.s[this.i]!);
          this.i++;
        }
        if (hi < lo) this.fail('bad character range');
        items.push(range(lo, hi));
      } else {
        const v = lo;
        items.push((x) => x === v);
      }
    }
    return { k: 'char', test: (x) => items.some((t) => t(x)) !== negate };
  }

  private escapedCode(c: string): number {
    return c === 'n' ? 10 : c === 't' ? 9 : c === 'r' ? 13 : code(c);
  }
}

type State = { t: 'char'; test: CharTest; out: number } | { t: 'split'; a: number; b: number } | { t: 'bol' | 'eol'; out: number } | { t: 'match' };

/** A compiled pattern: `test(name)` is Python's `re.fullmatch(pattern, name) is not None`. */
export interface ModulePattern {
  readonly source: string;
  test(name: string): boolean;
}

/** Parses and compiles a pattern; throws PatternError (with the position) for anything unsupported. */
export function compileModulePattern(source: string): ModulePattern {
  if (source.length === 0) throw new PatternError('empty pattern');
  if (source.length > MAX_PATTERN_LENGTH) throw new PatternError(`patterns longer than ${MAX_PATTERN_LENGTH} characters are not supported`);
  const ast = new Parser(source).parse();
  const states: State[] = [{ t: 'match' }];
  const add = (s: State): number => {
    if (states.length >= MAX_STATES) throw new PatternError(`the pattern expands to more than ${MAX_STATES} states`);
    states.push(s);
    return states.length - 1;
  };
  // Built back to front: compile(n, next) returns the entry state of n, whose exits go to next.
  const compile = (n: Node, next: number): number => {
    switch (n.k) {
      case 'char':
        return add({ t: 'char', test: n.test, out: next });
      case 'bol':
      case 'eol':
        return add({ t: n.k, out: next });
      case 'cat': {
        let s = next;
        for (let i = n.xs.length - 1; i >= 0; i--) s = compile(n.xs[i]!, s);
        return s;
      }
      case 'alt': {
        let s = compile(n.xs[n.xs.length - 1]!, next);
        for (let i = n.xs.length - 2; i >= 0; i--) s = add({ t: 'split', a: compile(n.xs[i]!, next), b: s });
        return s;
      }
      case 'rep': {
        let s = next;
        if (n.max === Infinity) {
          const loop = add({ t: 'split', a: -1, b: next });
          (states[loop] as { a: number }).a = compile(n.x, loop);
          s = loop;
        } else {
          // max - min optional copies, each of which may skip straight to `next`
          for (let i = n.min; i < n.max; i++) s = add({ t: 'split', a: compile(n.x, s), b: next });
        }
        for (let i = 0; i < n.min; i++) s = compile(n.x, s);
        return s;
      }
    }
  };
  const start = compile(ast, 0);
  const mark = new Int32Array(states.length);
  return {
    source,
    test(name: string): boolean {
      let gen = 0;
      mark.fill(-1);
      const len = name.length;
      let cur: number[] = [];
      const stack: number[] = [];
      // The ε-closure of s at position pos, into list (each state once per position).
      const close = (list: number[], s: number, pos: number) => {
        stack.push(s);
        while (stack.length) {
          const x = stack.pop()!;
          if (mark[x] === gen) continue;
          mark[x] = gen;
          const st = states[x]!;
          if (st.t === 'split') stack.push(st.b, st.a);
          else if (st.t === 'bol') {
            if (pos === 0) stack.push(st.out);
          } else if (st.t === 'eol') {
            if (pos === len) stack.push(st.out);
          } else list.push(x);
        }
      };
      close(cur, start, 0);
      for (let pos = 0; pos < len && cur.length; pos++) {
        const c = name.charCodeAt(pos);
        gen++;
        const next: number[] = [];
        for (const x of cur) {
          const st = states[x]!;
          if (st.t === 'char' && st.test(c)) close(next, st.out, pos + 1);
        }
        cur = next;
      }
      return cur.some((x) => states[x]!.t === 'match');
    },
  };
}
