import { describe, expect, test } from 'bun:test';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  accuracy,
  argmax,
  copaCandidate,
  defaultTasksDir,
  exactMatch,
  loadOfficialSplits,
  loadTask,
  maxF1,
  normalizeAnswer,
  parseTaskFile,
  sampleSplits,
  TASKS,
  TaskDataError,
  tokenF1,
  toTrainingExample,
  type TaskExample,
} from '../src/eval/tasks.ts';

// The first lines of every task file, kept with the tests (test/fixtures/tasks/README.md). The full
// data (the folder named by COLA_TASKS_DIR) is needed only for the checks of its exact sizes, which
// run when it is set.
const dir = join(import.meta.dir, 'fixtures/tasks');
const fullDir = process.env.COLA_TASKS_DIR ? defaultTasksDir() : '';
const haveFull = fullDir !== '' && existsSync(join(fullDir, 'multirc', 'train.jsonl'));
if (!haveFull) console.log(`eval.tasks: no full task data${fullDir ? ` at ${fullDir}` : ' (COLA_TASKS_DIR is not set)'}; its size checks are skipped`);
/** Sample sizes the fixtures can hold (the defaults 1000/500/1000 need the full data). */
const SMALL = { nTrain: 16, nVal: 8, nTest: 10 };
const firstRaw = (task: string, file: string) => JSON.parse(readFileSync(join(dir, task, file), 'utf8').split('\n')[0]!);

test('without COLA_TASKS_DIR the default task folder is refused with a clear error (the data is not in the repository)', () => {
  const saved = process.env.COLA_TASKS_DIR;
  delete process.env.COLA_TASKS_DIR;
  try {
    expect(() => defaultTasksDir()).toThrow(TaskDataError);
    expect(() => loadOfficialSplits('sst2')).toThrow(/set COLA_TASKS_DIR/);
  } finally {
    if (saved !== undefined) process.env.COLA_TASKS_DIR = saved;
  }
});

describe('templates on the first real example of each file', () => {
  test('SST-2', () => {
    const { train } = loadOfficialSplits('sst2', dir);
    expect(train![0]).toEqual({
      task: 'sst2',
      id: '0',
      prompt: 'a stirring , funny and finally transporting re-imagining of beauty and the beast and 1930s horror films It was',
      candidates: [' terrible', ' great'],
      label: 1,
    });
  });
  test('RTE', () => {
    const ex = loadOfficialSplits('rte', dir).train![0]!;
    expect(ex.prompt).toBe('No Weapons of Mass Destruction Found in Iraq Yet.\nDoes this mean that "Weapons of Mass Destruction Found in Iraq." is true? Yes or No?\n');
    expect(ex.candidates).toEqual(['Yes', 'No']);
    expect(ex.label).toBe(1); // not_entailment → "No"
    expect(toTrainingExample(ex)).toEqual({ prompt: ex.prompt, completion: 'No' });
  });
  test('CB', () => {
    const ex = loadOfficialSplits('cb', dir).train![0]!;
    expect(ex.prompt).toBe(
      'Suppose It was a complex language. Not written down but handed down. One might say it was peeled down. Can we infer that "the language was peeled down"? Yes, No, or Maybe?\n',
    );
    expect(ex.candidates).toEqual(['Yes', 'No', 'Maybe']);
    expect(ex.label).toBe(0);
  });
  test('WiC', () => {
    const ex = loadOfficialSplits('wic', dir).train![0]!;
    expect(ex.prompt).toBe(
      'Does the word "place" have the same meaning in these two sentences? Yes, No?\nDo you want to come over to my place later?\nA political system with no place for the less prominent groups.\n',
    );
    expect([ex.candidates, ex.label]).toEqual([['No', 'Yes'], 0]);
  });
  test('WSC (pronoun lower-cased)', () => {
    const ex = loadOfficialSplits('wsc', dir).train![0]!;
    expect(ex.prompt).toBe(
      'Mark told Pete many lies about himself, which Pete included in his book. He should have been more skeptical.\nIn the previous sentence, does the pronoun "he" refer to Mark? Yes or No?\n',
    );
    expect([ex.candidates, ex.label]).toEqual([['No', 'Yes'], 0]);
  });
  test('COPA (cause; period dropped; choices lower-cased except "I")', () => {
    const train = loadOfficialSplits('copa', dir).train!;
    expect(train[0]).toEqual({
      task: 'copa',
      id: '0',
      prompt: 'My body cast a shadow over the grass because ',
      candidates: ['the sun was rising.', 'the grass was cut.'],
      label: 0,
    });
    const six = train.find((e) => e.id === '6')!;
    expect(six.prompt).toBe('The stain came out of the shirt because ');
    expect(six.candidates).toEqual(['I patched the shirt.', 'I bleached the shirt.']);
    const effect = loadOfficialSplits('copa', dir).validation[0]!;
    expect(effect.prompt).toBe('The man turned on the faucet so ');
    expect(effect.candidates).toEqual(['the toilet filled with water.', 'water flowed from the spout.']);
    expect(toTrainingExample(effect).completion).toBe('water flowed from the spout.');
    expect(copaCandidate("It's late.")).toBe("it's late.");
    expect(copaCandidate('I')).toBe('I');
  });
  test('BoolQ (question capitalised, "?" added; answers with a leading space)', () => {
    const raw = firstRaw('boolq', 'val.jsonl');
    const ex = loadOfficialSplits('boolq', dir).validation[0]!;
    expect(ex.prompt).toBe(`${raw.passage} Does ethanol take more energy make that produces?`);
    expect(ex.prompt.startsWith('Ethanol fuel -- All biomass goes through')).toBe(true);
    expect(ex.prompt.endsWith('than producing gasoline. Does ethanol take more energy make that produces?')).toBe(true);
    expect([ex.candidates, ex.label]).toEqual([[' No', ' Yes'], 0]);
  });
  test('MultiRC (one example per answer option)', () => {
    const raw = firstRaw('multirc', 'train.jsonl');
    const train = loadOfficialSplits('multirc', dir).train!;
    const ex = train[0]!;
    expect(ex.id).toBe('p0-q0-a0');
    expect(ex.prompt).toBe(
      `${raw.passage.text}\nQuestion: What did the high-level effort to persuade Pakistan include?\nI found this answer "Children, Gerd, or Dorian Popa". Is that correct? Yes or No?\n`,
    );
    expect(ex.prompt.startsWith('While this process moved along, diplomacy continued its rounds.')).toBe(true);
    expect([ex.candidates, ex.label]).toEqual([['No', 'Yes'], 0]);
  });
});

describe('parse errors are clear', () => {
  test('bad lines name file and line', () => {
    expect(() => parseTaskFile('rte', '{"premise":"a","hypothesis":"b","label":"maybe","idx":0}\n', 'f.jsonl')).toThrow(/f\.jsonl:1: label must be entailment or not_entailment/);
    expect(() => parseTaskFile('cb', '\n{oops\n', 'g')).toThrow(/g:2: invalid JSON/);
    expect(() => parseTaskFile('sst2', '2 bad label\n', 's')).toThrow(/s:1: expected/);
    expect(() => parseTaskFile('copa', '{"premise":"a.","choice1":"x","choice2":"y","question":"why","label":0,"idx":0}', 'c')).toThrow(/cause or effect/);
    expect(() => parseTaskFile('wic', '{"word":1,"sentence1":"a","sentence2":"b","label":true,"idx":0}', 'w')).toThrow(/"word" must be a string/);
    expect(() => loadOfficialSplits('boolq', '/nonexistent')).toThrow(/COLA_TASKS_DIR/);
    expect(() => loadOfficialSplits('squad' as never, dir)).toThrow(/unknown task/);
  });
});

describe('sampling', () => {
  const key = (e: TaskExample) => e.id;
  for (const task of TASKS) {
    test(`${task}: disjoint, bounded, deterministic per seed`, () => {
      const official = loadOfficialSplits(task, dir);
      const a = sampleSplits(task, official, { seed: 0, ...SMALL });
      const b = sampleSplits(task, official, { seed: 0, ...SMALL });
      const c = sampleSplits(task, official, { seed: 1, ...SMALL });
      expect(a.train.map(key)).toEqual(b.train.map(key));
      expect(a.validation.map(key)).toEqual(b.validation.map(key));
      expect(a.test.map(key)).toEqual(b.test.map(key));
      expect(c.train.map(key)).not.toEqual(a.train.map(key));
      expect(a.train.length).toBeLessThanOrEqual(SMALL.nTrain);
      expect(a.validation.length).toBeLessThanOrEqual(SMALL.nVal);
      expect(a.test.length).toBe(Math.min(SMALL.nTest, official.validation.length));
      // Disjoint (ids are unique within a file; test ids come from another file except for BoolQ).
      const tr = new Set(a.train.map(key));
      expect(tr.size).toBe(a.train.length);
      for (const e of a.validation) expect(tr.has(e.id)).toBe(false);
      if (task === 'boolq') {
        const te = new Set(a.test.map(key));
        for (const e of [...a.train, ...a.validation]) expect(te.has(e.id)).toBe(false);
      }
      // Train and validation come from the train pool; test from the validation split.
      const valIds = new Set(official.validation.map(key));
      for (const e of a.test) expect(valIds.has(e.id)).toBe(true);
      if (official.train) {
        const trainIds = new Set(official.train.map(key));
        for (const e of [...a.train, ...a.validation]) expect(trainIds.has(e.id)).toBe(true);
      }
    });
  }

  test('BoolQ: the test set is drawn first and the rest is the train pool', () => {
    const s = loadTask('boolq', { seed: 5, testSeed: 0, dir, ...SMALL });
    const t = loadTask('boolq', { seed: 6, testSeed: 0, dir, ...SMALL });
    expect(s.test.map(key)).toEqual(t.test.map(key)); // same testSeed → same test set
    expect(s.train.map(key)).not.toEqual(t.train.map(key));
    expect(s.sources.train).toMatch(/minus the test set/);
  });

  test('testSeed defaults to seed (MeZO) and can be fixed', () => {
    const off = loadOfficialSplits('wic', dir);
    expect(sampleSplits('wic', off, { seed: 2, ...SMALL }).test.map(key)).toEqual(sampleSplits('wic', off, { seed: 9, testSeed: 2, ...SMALL }).test.map(key));
    expect(sampleSplits('wic', off, { seed: 2, ...SMALL }).test.map(key)).not.toEqual(sampleSplits('wic', off, { seed: 3, ...SMALL }).test.map(key));
  });

  test('bad options', () => {
    const off = loadOfficialSplits('cb', dir);
    expect(() => sampleSplits('cb', off, { seed: -1 })).toThrow(TaskDataError);
    expect(() => sampleSplits('cb', off, { seed: 0, nTrain: 0 })).toThrow(/nTrain/);
    expect(() => sampleSplits('cb', off, { seed: 0.5 })).toThrow(/seed/);
  });
});

describe.skipIf(!haveFull)('on the full task data', () => {
  test('official split sizes match SOURCE.txt', () => {
    const n = (t: (typeof TASKS)[number]) => {
      const s = loadOfficialSplits(t, fullDir);
      return [s.train?.length ?? null, s.validation.length];
    };
    expect(n('sst2')).toEqual([6920, 872]);
    expect(n('rte')).toEqual([2490, 277]);
    expect(n('cb')).toEqual([250, 56]);
    expect(n('copa')).toEqual([400, 100]);
    expect(n('wic')).toEqual([5428, 638]);
    expect(n('wsc')).toEqual([554, 104]);
    expect(n('boolq')).toEqual([null, 3270]);
  });
  test('sizes: full 1000/500/1000 where the data allows, 2:1 split of small pools', () => {
    const size = (t: (typeof TASKS)[number]) => {
      const s = loadTask(t, { seed: 3, dir: fullDir });
      return [s.train.length, s.validation.length, s.test.length];
    };
    expect(size('rte')).toEqual([1000, 500, 277]);
    expect(size('boolq')).toEqual([1000, 500, 1000]);
    expect(size('cb')).toEqual([167, 83, 56]);
    expect(size('copa')).toEqual([267, 133, 100]);
    expect(size('sst2')).toEqual([1000, 500, 872]);
  });

  test('MultiRC has one example per answer option', () => {
    expect(loadOfficialSplits('multirc', fullDir).train!.length).toBe(27243); // SOURCE.txt: 27243 answer options
  });
});

describe('metrics', () => {
  test('argmax and accuracy', () => {
    expect(argmax([-3, -1, -2])).toBe(1);
    expect(argmax([-1, -1])).toBe(0); // first on ties
    expect(() => argmax([0, NaN])).toThrow(/NaN/);
    expect(() => argmax([])).toThrow();
    expect(accuracy([0, 1, 1, 2], [0, 1, 0, 2])).toBe(0.75);
    expect(() => accuracy([0], [0, 1])).toThrow();
  });
  test('normalisation (SQuAD)', () => {
    expect(normalizeAnswer('The  Cat, a hat!')).toBe('cat hat');
    expect(normalizeAnswer('An apple-pie.')).toBe('applepie');
    expect(normalizeAnswer('theory anthem')).toBe('theory anthem'); // articles only as whole words
  });
  const f1Cases: [string, string, number][] = [
    ['the cat sat', 'cat sat', 1],
    ['cat', 'cat sat', 2 / 3], // p = 1, r = 1/2
    ['cat sat on mat', 'cat sat', 2 / 3], // p = 1/2, r = 1
    ['dog', 'cat', 0],
    ['cat cat', 'cat', 2 / 3], // duplicate counted once against one gold "cat": p = 1/2, r = 1
    ['', 'cat', 0],
    ['the', 'a', 0], // both normalise to nothing: 0 (SQuAD v1.1 / MeZO)
    ['Paris.', 'paris', 1],
  ];
  for (const [p, g, want] of f1Cases) {
    test(`F1(${JSON.stringify(p)}, ${JSON.stringify(g)}) = ${want.toFixed(3)}`, () => {
      expect(tokenF1(p, g)).toBeCloseTo(want, 12);
    });
  }
  test('max over gold answers; exact match', () => {
    expect(maxF1('blue whale', ['whale shark', 'the blue whale'])).toBe(1);
    expect(maxF1('blue', ['whale shark', 'blue whale'])).toBeCloseTo(2 / 3, 12);
    expect(exactMatch('The Blue Whale!', ['blue whale'])).toBe(1);
    expect(exactMatch('blue', ['blue whale'])).toBe(0);
    expect(() => maxF1('x', [])).toThrow();
  });
});
