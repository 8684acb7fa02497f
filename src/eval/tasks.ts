// MeZO-protocol evaluation tasks (Malladi et al. 2023, as used by the COLA paper): loaders, prompt
// templates, answer candidates, seeded train/validation/test sampling, and metrics.
//
// Data: `<dir>/<task>/…` with dir given by the caller or $COLA_TASKS_DIR; the full task files are not
// part of the repository (test/fixtures/tasks holds their first lines; each folder's SOURCE.txt
// gives provenance and license).
//
// Templates (MISSION.md table; the prompt ends where the answer starts, answers keep the leading
// space shown):
//   SST-2    `{sentence} It was`                                              → " terrible" | " great"
//   RTE      `{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n` → "Yes" (entailment) | "No"
//   CB       `Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n`
//                                                                             → "Yes" (entailment) | "No" (contradiction) | "Maybe" (neutral)
//   BoolQ    `{passage} {question}` with the question's first letter upper-cased and "?" appended
//            when missing                                                    → " No" | " Yes"
//   WSC      `{text}\nIn the previous sentence, does the pronoun "{span2 lower-cased}" refer to {span1}? Yes or No?\n`
//                                                                             → "No" | "Yes"
//   WiC      `Does the word "{word}" have the same meaning in these two sentences? Yes, No?\n{sentence1}\n{sentence2}\n`
//                                                                             → "No" | "Yes"
//   MultiRC  `{paragraph}\nQuestion: {question}\nI found this answer "{answer}". Is that correct? Yes or No?\n`
//                                                                             → "No" | "Yes" (one example per answer option)
//   COPA     `{premise without its final "."} so ` (effect) / ` because ` (cause) → each choice with its first
//            word lower-cased unless it is "I" (the choice keeps its final period)
// Labels are indices into `candidates` (the order above; HF/SuperGLUE label ids).
//
// Splits (MeZO's run.py: train and validation are drawn together from the training split, the test
// set from the labelled validation split, because SuperGLUE test splits carry no labels):
//   - pool P = the official train split (SST-2: stsa.binary.train, 6920 full sentences — GLUE's
//     67k-phrase train.tsv is not available, see sst2/SOURCE.txt), T = the official labelled
//     validation split (SST-2: stsa.binary.dev = GLUE SST-2 validation).
//   - test: the first min(nTest, |T|) of a permutation of T drawn from Rng(mixSeed(testSeed, TEST)).
//     testSeed defaults to the run's seed, as MeZO samples its eval set with the train-set seed.
//   - train/validation: a permutation of P from Rng(mixSeed(seed, TRAIN)); train = its first
//     nTrainEff, validation = the next nValEff. When |P| ≥ nTrain + nVal, nTrainEff = nTrain and
//     nValEff = nVal; otherwise P is split in the ratio nTrain : nVal (validation =
//     round(|P|·nVal/(nTrain+nVal)), at least 1; train the rest) — e.g. CB 250 → 167 / 83.
//   - BoolQ has no train file here (see boolq/SOURCE.txt): test is drawn first from val.jsonl as
//     above, and P = the rest of val.jsonl (documented deviation). The three sets are disjoint.
//   - MultiRC is flattened to one example per (paragraph, question, answer option) before sampling,
//     as MeZO does; train and validation may then share paragraphs (not test, which comes from the
//     other split).
// Defaults nTrain = 1000, nVal = 500, nTest = 1000.
//
// Metrics: accuracy of the candidate with the highest summed log-likelihood; SQuAD-style token F1
// and exact match for generation tasks.

import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Rng, mixSeed } from '../util/rng.ts';

export const TASKS = ['sst2', 'rte', 'cb', 'copa', 'wic', 'wsc', 'boolq', 'multirc'] as const;
export type TaskName = (typeof TASKS)[number];

export interface TaskExample {
  task: TaskName;
  /** Stable id within the task (source file idx; MultiRC: "p{paragraph}-q{question}-a{answer}"). */
  id: string;
  prompt: string;
  candidates: string[];
  /** Index of the correct candidate. */
  label: number;
}

export class TaskDataError extends Error {
  override name = 'TaskDataError';
}

/** $COLA_TASKS_DIR; throws TaskDataError when it is not set (the task files are not in the repository). */
export function defaultTasksDir(): string {
  const env = process.env.COLA_TASKS_DIR;
  if (env && env.length > 0) return resolve(env);
  throw new TaskDataError('no task data folder: set COLA_TASKS_DIR to the folder holding <task>/… files (e.g. sst2/train.jsonl), or pass the folder explicitly');
}

export function isTaskName(s: string): s is TaskName {
  return (TASKS as readonly string[]).includes(s);
}

// ---------------------------------------------------------------------------------------------
// Templates (pure functions of one raw record)

type Raw = Record<string, unknown>;

function str(r: Raw, k: string, where: string): string {
  const v = r[k];
  if (typeof v !== 'string') throw new TaskDataError(`${where}: field "${k}" must be a string, got ${typeof v}`);
  return v;
}

function bool01(r: Raw, where: string): number {
  const v = r.label;
  if (v === true || v === false) return v ? 1 : 0;
  if (v === 0 || v === 1) return v;
  throw new TaskDataError(`${where}: label must be a boolean or 0/1, got ${JSON.stringify(v)}`);
}

function idOf(r: Raw, where: string): string {
  const v = r.idx;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new TaskDataError(`${where}: idx must be an integer`);
  return String(v);
}

export function sst2Example(sentence: string, label: number, id: string): TaskExample {
  return { task: 'sst2', id, prompt: `${sentence.trim()} It was`, candidates: [' terrible', ' great'], label };
}

export function rteExample(r: Raw, where = 'rte'): TaskExample {
  const labels: Record<string, number> = { entailment: 0, not_entailment: 1 };
  const label = labels[String(r.label)];
  if (label === undefined) throw new TaskDataError(`${where}: label must be entailment or not_entailment, got ${JSON.stringify(r.label)}`);
  return {
    task: 'rte',
    id: idOf(r, where),
    prompt: `${str(r, 'premise', where)}\nDoes this mean that "${str(r, 'hypothesis', where)}" is true? Yes or No?\n`,
    candidates: ['Yes', 'No'],
    label,
  };
}

export function cbExample(r: Raw, where = 'cb'): TaskExample {
  const labels: Record<string, number> = { entailment: 0, contradiction: 1, neutral: 2 };
  const label = labels[String(r.label)];
  if (label === undefined) throw new TaskDataError(`${where}: label must be entailment, contradiction or neutral, got ${JSON.stringify(r.label)}`);
  return {
    task: 'cb',
    id: idOf(r, where),
    prompt: `Suppose ${str(r, 'premise', where)} Can we infer that "${str(r, 'hypothesis', where)}"? Yes, No, or Maybe?\n`,
    candidates: ['Yes', 'No', 'Maybe'],
    label,
  };
}

export function boolqExample(r: Raw, where = 'boolq'): TaskExample {
  let q = str(r, 'question', where);
  if (q.length === 0) throw new TaskDataError(`${where}: empty question`);
  if (!q.endsWith('?')) q += '?';
  q = q[0]!.toUpperCase() + q.slice(1);
  return { task: 'boolq', id: idOf(r, where), prompt: `${str(r, 'passage', where)} ${q}`, candidates: [' No', ' Yes'], label: bool01(r, where) };
}

export function wscExample(r: Raw, where = 'wsc'): TaskExample {
  const t = r.target;
  if (typeof t !== 'object' || t === null) throw new TaskDataError(`${where}: target must be an object`);
  const span1 = str(t as Raw, 'span1_text', where);
  const span2 = str(t as Raw, 'span2_text', where);
  return {
    task: 'wsc',
    id: idOf(r, where),
    prompt: `${str(r, 'text', where)}\nIn the previous sentence, does the pronoun "${span2.toLowerCase()}" refer to ${span1}? Yes or No?\n`,
    candidates: ['No', 'Yes'],
    label: bool01(r, where),
  };
}

export function wicExample(r: Raw, where = 'wic'): TaskExample {
  return {
    task: 'wic',
    id: idOf(r, where),
    prompt: `Does the word "${str(r, 'word', where)}" have the same meaning in these two sentences? Yes, No?\n${str(r, 'sentence1', where)}\n${str(r, 'sentence2', where)}\n`,
    candidates: ['No', 'Yes'],
    label: bool01(r, where),
  };
}

/** COPA choice: first word lower-cased unless it is "I" (split on single spaces, as MeZO). */
export function copaCandidate(choice: string): string {
  const words = choice.split(' ');
  if (words[0] !== 'I') words[0] = words[0]!.toLowerCase();
  return words.join(' ');
}

export function copaExample(r: Raw, where = 'copa'): TaskExample {
  let premise = str(r, 'premise', where).trimEnd();
  if (premise.endsWith('.')) premise = premise.slice(0, -1);
  const q = r.question;
  if (q !== 'cause' && q !== 'effect') throw new TaskDataError(`${where}: question must be cause or effect, got ${JSON.stringify(q)}`);
  const label = r.label;
  if (label !== 0 && label !== 1) throw new TaskDataError(`${where}: label must be 0 or 1, got ${JSON.stringify(label)}`);
  return {
    task: 'copa',
    id: idOf(r, where),
    prompt: premise + (q === 'effect' ? ' so ' : ' because '),
    candidates: [copaCandidate(str(r, 'choice1', where)), copaCandidate(str(r, 'choice2', where))],
    label,
  };
}

/** One MultiRC paragraph record → one example per answer option. */
export function multircExamples(r: Raw, where = 'multirc'): TaskExample[] {
  const p = r.passage as Raw | undefined;
  if (typeof p !== 'object' || p === null) throw new TaskDataError(`${where}: passage must be an object`);
  const text = str(p, 'text', where);
  const qs = p.questions;
  if (!Array.isArray(qs)) throw new TaskDataError(`${where}: passage.questions must be an array`);
  const pid = idOf(r, where);
  const out: TaskExample[] = [];
  for (const q of qs as Raw[]) {
    const question = str(q, 'question', where);
    const qid = idOf(q, where);
    if (!Array.isArray(q.answers)) throw new TaskDataError(`${where}: answers must be an array`);
    for (const a of q.answers as Raw[]) {
      out.push({
        task: 'multirc',
        id: `p${pid}-q${qid}-a${idOf(a, where)}`,
        prompt: `${text}\nQuestion: ${question}\nI found this answer "${str(a, 'text', where)}". Is that correct? Yes or No?\n`,
        candidates: ['No', 'Yes'],
        label: bool01(a, where),
      });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Loaders

const FILES: Record<TaskName, { train: string | null; validation: string }> = {
  sst2: { train: 'stsa.binary.train', validation: 'stsa.binary.dev' },
  rte: { train: 'train.jsonl', validation: 'val.jsonl' },
  cb: { train: 'train.jsonl', validation: 'val.jsonl' },
  copa: { train: 'train.jsonl', validation: 'val.jsonl' },
  wic: { train: 'train.jsonl', validation: 'val.jsonl' },
  wsc: { train: 'train.jsonl', validation: 'val.jsonl' },
  boolq: { train: null, validation: 'val.jsonl' },
  multirc: { train: 'train.jsonl', validation: 'val.jsonl' },
};

const MAX_FILE_BYTES = 256 * 1024 * 1024;

function readText(path: string): string {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new TaskDataError(`cannot read ${path} (${(e as Error).message}); set COLA_TASKS_DIR to the tasks folder`);
  }
  if (bytes.length > MAX_FILE_BYTES) throw new TaskDataError(`${path} is larger than ${MAX_FILE_BYTES} bytes`);
  return bytes.toString('utf8');
}

/** Parses one file of a task into examples (in file order). */
export function parseTaskFile(task: TaskName, text: string, where: string): TaskExample[] {
  const lines = text.split('\n');
  const out: TaskExample[] = [];
  lines.forEach((line, i) => {
    if (line.trim().length === 0) return;
    const at = `${where}:${i + 1}`;
    if (task === 'sst2') {
      const m = /^([01]) (.*)$/.exec(line.replace(/\r$/, ''));
      if (!m) throw new TaskDataError(`${at}: expected "<0|1> <sentence>"`);
      out.push(sst2Example(m[2]!, Number(m[1]), String(i)));
      return;
    }
    let r: unknown;
    try {
      r = JSON.parse(line);
    } catch (e) {
      throw new TaskDataError(`${at}: invalid JSON (${(e as Error).message})`);
    }
    if (typeof r !== 'object' || r === null || Array.isArray(r)) throw new TaskDataError(`${at}: expected a JSON object`);
    const raw = r as Raw;
    switch (task) {
      case 'rte':
        out.push(rteExample(raw, at));
        break;
      case 'cb':
        out.push(cbExample(raw, at));
        break;
      case 'copa':
        out.push(copaExample(raw, at));
        break;
      case 'wic':
        out.push(wicExample(raw, at));
        break;
      case 'wsc':
        out.push(wscExample(raw, at));
        break;
      case 'boolq':
        out.push(boolqExample(raw, at));
        break;
      case 'multirc':
        out.push(...multircExamples(raw, at));
        break;
    }
  });
  const ids = new Set<string>();
  for (const e of out) {
    if (ids.has(e.id)) throw new TaskDataError(`${where}: duplicate example id ${e.id}`);
    ids.add(e.id);
  }
  return out;
}

/** The labelled official splits of a task: train (null for BoolQ here) and validation. */
export function loadOfficialSplits(task: TaskName, dir = defaultTasksDir()): { train: TaskExample[] | null; validation: TaskExample[] } {
  if (!isTaskName(task)) throw new TaskDataError(`unknown task ${JSON.stringify(task)}; tasks: ${TASKS.join(', ')}`);
  const f = FILES[task];
  const load = (name: string) => {
    const path = join(dir, task, name);
    return parseTaskFile(task, readText(path), path);
  };
  return { train: f.train ? load(f.train) : null, validation: load(f.validation) };
}

// ---------------------------------------------------------------------------------------------
// Sampling

const TRAIN_STREAM = 0x5452_4e53; // "TRNS"
const TEST_STREAM = 0x5445_5354; // "TEST"

export interface SampleOptions {
  seed: number;
  /** Seed of the test draw; default = seed (MeZO). */
  testSeed?: number;
  nTrain?: number;
  nVal?: number;
  nTest?: number;
}

export interface TaskSplits {
  task: TaskName;
  train: TaskExample[];
  validation: TaskExample[];
  test: TaskExample[];
  /** Where each set came from, for reports. */
  sources: { train: string; validation: string; test: string };
}

function permutation(n: number, seed: number): number[] {
  return new Rng(seed).shuffle(Array.from({ length: n }, (_, i) => i));
}

function checkCount(name: string, v: number, max: number): number {
  if (!Number.isInteger(v) || v < 1 || v > max) throw new TaskDataError(`${name} must be an integer in [1, ${max}], got ${v}`);
  return v;
}

/** Seeded, disjoint train / validation / test sets from the official splits (see header). */
export function sampleSplits(
  task: TaskName,
  official: { train: TaskExample[] | null; validation: TaskExample[] },
  opts: SampleOptions,
): TaskSplits {
  const seed = opts.seed;
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new TaskDataError(`seed must be an integer in [0, 2^32), got ${seed}`);
  const testSeed = opts.testSeed ?? seed;
  if (!Number.isInteger(testSeed) || testSeed < 0 || testSeed > 0xffffffff) throw new TaskDataError(`testSeed must be an integer in [0, 2^32)`);
  const nTrain = checkCount('nTrain', opts.nTrain ?? 1000, 1_000_000);
  const nVal = checkCount('nVal', opts.nVal ?? 500, 1_000_000);
  const nTest = checkCount('nTest', opts.nTest ?? 1000, 1_000_000);

  const valSplit = official.validation;
  const testOrder = permutation(valSplit.length, mixSeed(testSeed, TEST_STREAM));
  const nT = Math.min(nTest, valSplit.length);
  const test = testOrder.slice(0, nT).map((i) => valSplit[i]!);
  let pool: TaskExample[];
  let poolName: string;
  if (official.train) {
    pool = official.train;
    poolName = 'official train split';
  } else {
    // The rest of the validation split, in file order (so the train draw depends only on `seed`
    // given the test set).
    pool = testOrder.slice(nT).sort((a, b) => a - b).map((i) => valSplit[i]!);
    poolName = 'official validation split minus the test set';
  }
  if (pool.length < 2) throw new TaskDataError(`${task}: only ${pool.length} example(s) left for train and validation`);
  let nV: number;
  let nTr: number;
  if (pool.length >= nTrain + nVal) {
    nTr = nTrain;
    nV = nVal;
  } else {
    nV = Math.max(1, Math.round((pool.length * nVal) / (nTrain + nVal)));
    nTr = pool.length - nV;
  }
  const order = permutation(pool.length, mixSeed(seed, TRAIN_STREAM));
  return {
    task,
    train: order.slice(0, nTr).map((i) => pool[i]!),
    validation: order.slice(nTr, nTr + nV).map((i) => pool[i]!),
    test,
    sources: { train: poolName, validation: poolName, test: 'official validation split' },
  };
}

/** Loads and samples a task in one call. */
export function loadTask(task: TaskName, opts: SampleOptions & { dir?: string }): TaskSplits {
  return sampleSplits(task, loadOfficialSplits(task, opts.dir), opts);
}

/** A training example: the prompt and the correct answer (the loss falls on the answer's tokens only). */
export function toTrainingExample(ex: TaskExample): { prompt: string; completion: string } {
  const c = ex.candidates[ex.label];
  if (c === undefined) throw new TaskDataError(`${ex.task} ${ex.id}: label ${ex.label} has no candidate`);
  return { prompt: ex.prompt, completion: c };
}

// ---------------------------------------------------------------------------------------------
// Metrics

/** Index of the largest score (first on ties). Throws on an empty list or a NaN score. */
export function argmax(scores: readonly number[]): number {
  if (scores.length === 0) throw new RangeError('no scores');
  let best = 0;
  for (let i = 0; i < scores.length; i++) {
    if (Number.isNaN(scores[i]!)) throw new RangeError(`score ${i} is NaN`);
    if (scores[i]! > scores[best]!) best = i;
  }
  return best;
}

export function accuracy(predictions: readonly number[], labels: readonly number[]): number {
  if (predictions.length !== labels.length) throw new RangeError(`${predictions.length} predictions for ${labels.length} labels`);
  if (labels.length === 0) throw new RangeError('accuracy of no examples');
  let ok = 0;
  for (let i = 0; i < labels.length; i++) if (predictions[i] === labels[i]) ok++;
  return ok / labels.length;
}

// string.punctuation of Python, which the SQuAD script strips.
const PUNCT = new Set('!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~');

/** SQuAD normalisation: lower-case, strip punctuation, remove articles (a, an, the), collapse spaces. */
export function normalizeAnswer(s: string): string {
  const lower = s.toLowerCase();
  let noPunc = '';
  for (const ch of lower) if (!PUNCT.has(ch)) noPunc += ch;
  const noArticles = noPunc.replace(/\b(a|an|the)\b/g, ' ');
  return noArticles.split(/\s+/).filter((w) => w.length > 0).join(' ');
}

/**
 * Token F1 between a prediction and one gold answer (SQuAD v1.1 / MeZO): 0 when no normalised
 * token is shared — including when either side normalises to nothing.
 */
export function tokenF1(prediction: string, gold: string): number {
  const p = normalizeAnswer(prediction).split(' ').filter((w) => w.length > 0);
  const g = normalizeAnswer(gold).split(' ').filter((w) => w.length > 0);
  const counts = new Map<string, number>();
  for (const w of g) counts.set(w, (counts.get(w) ?? 0) + 1);
  let same = 0;
  for (const w of p) {
    const c = counts.get(w) ?? 0;
    if (c > 0) {
      same++;
      counts.set(w, c - 1);
    }
  }
  if (same === 0) return 0;
  const precision = same / p.length;
  const recall = same / g.length;
  return (2 * precision * recall) / (precision + recall);
}

/** F1 against several gold answers: the best one. */
export function maxF1(prediction: string, golds: readonly string[]): number {
  if (golds.length === 0) throw new RangeError('no gold answers');
  return Math.max(...golds.map((g) => tokenF1(prediction, g)));
}

export function exactMatch(prediction: string, golds: readonly string[]): number {
  if (golds.length === 0) throw new RangeError('no gold answers');
  const p = normalizeAnswer(prediction);
  return golds.some((g) => normalizeAnswer(g) === p) ? 1 : 0;
}
