// JSONL line by line from a byte stream, in bounded memory: the body is never held whole. Lines are
// split on bytes (so a multi-byte character across a chunk boundary is never cut), one line at a
// time is decoded and parsed, and a line longer than `maxLineBytes` is skipped to its end without
// being buffered. Errors name the 1-based line number; at most `maxErrors` are collected.

export interface JsonlOptions {
  /** Longest line accepted, in bytes (without the newline). */
  maxLineBytes: number;
  /** Most examples accepted; one more is an error. */
  maxExamples: number;
  /** Most bytes read from the stream; more throws JsonlTooLargeError (→ 413). */
  maxBytes: number;
  /** Errors collected before parsing stops (default 20). */
  maxErrors?: number;
}

export type LineCheck<T> = { ok: true; value: T } | { ok: false; message: string };

export interface JsonlResult {
  examples: number;
  lines: number;
  bytes: number;
  errors: { path: string; message: string }[];
  /** Largest number of bytes of one unfinished line held at once (the bound is maxLineBytes). */
  peakBuffered: number;
}

export class JsonlTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`the body exceeds the limit of ${limit} bytes`);
    this.name = 'JsonlTooLargeError';
  }
}

const NL = 10;

/**
 * Reads `body` to its end (or to the first `maxErrors` errors), calling `check` on every non-blank
 * line's parsed JSON and `onValue` for each valid one while no error has been seen (once a line is
 * bad the rest is only validated, so the caller can discard what it wrote). `onValue` may be async
 * (e.g. a write to disk); reading waits for it, which bounds memory by backpressure.
 */
export async function readJsonl<T>(
  body: ReadableStream<Uint8Array>,
  opts: JsonlOptions,
  check: (v: unknown) => LineCheck<T>,
  onValue: (v: T) => void | Promise<void>,
): Promise<JsonlResult> {
  const maxErrors = opts.maxErrors ?? 20;
  const errors: { path: string; message: string }[] = [];
  const decoder = new TextDecoder('utf-8', { fatal: true });
  let pending: Uint8Array[] = [];
  let pendingLen = 0;
  let skipping = false; // inside an over-long line: drop bytes until its newline
  let lineNo = 0;
  let examples = 0;
  let bytes = 0;
  let peak = 0;
  let stop = false;

  const fail = (message: string) => {
    errors.push({ path: `line ${lineNo}`, message });
    if (errors.length >= maxErrors) stop = true;
  };

  const finishLine = async (tail: Uint8Array) => {
    lineNo++;
    if (skipping) {
      skipping = false;
      fail(`line longer than ${opts.maxLineBytes} bytes`);
      return;
    }
    let line: Uint8Array;
    if (pendingLen === 0) line = tail;
    else {
      line = new Uint8Array(pendingLen + tail.length);
      let o = 0;
      for (const p of pending) {
        line.set(p, o);
        o += p.length;
      }
      line.set(tail, o);
      pending = [];
      pendingLen = 0;
    }
    let end = line.length;
    if (end > 0 && line[end - 1] === 13) end--; // CRLF
    let blank = true;
    for (let i = 0; i < end; i++) {
      const b = line[i]!;
      if (b === 0) return fail('contains a NUL byte: not JSONL text');
      if (blank && b !== 32 && b !== 9 && b !== 13) blank = false;
    }
    if (blank) return; // blank lines are allowed and skipped
    let text: string;
    try {
      text = decoder.decode(line.subarray(0, end));
    } catch {
      return fail('not valid UTF-8');
    }
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      return fail('not valid JSON');
    }
    const r = check(v);
    if (!r.ok) return fail(r.message);
    if (examples >= opts.maxExamples) {
      fail(`more than ${opts.maxExamples} examples`);
      stop = true;
      return;
    }
    examples++;
    if (errors.length === 0) await onValue(r.value);
  };

  const reader = body.getReader();
  try {
    while (!stop) {
      const { done, value } = await reader.read();
      if (done) break;
      bytes += value.length;
      if (bytes > opts.maxBytes) throw new JsonlTooLargeError(opts.maxBytes);
      let pos = 0;
      while (pos < value.length && !stop) {
        const nl = value.indexOf(NL, pos);
        if (nl < 0) {
          // An unfinished line: keep it only while it can still be a valid line.
          const rest = value.length - pos;
          if (!skipping && pendingLen + rest > opts.maxLineBytes) {
            skipping = true;
            pending = [];
            pendingLen = 0;
          }
          if (!skipping) {
            pending.push(value.slice(pos)); // a copy: the reader may reuse its chunk
            pendingLen += rest;
            if (pendingLen > peak) peak = pendingLen;
          }
          break;
        }
        const piece = value.subarray(pos, nl);
        if (!skipping && pendingLen + piece.length > opts.maxLineBytes) skipping = true;
        if (!skipping && pendingLen + piece.length > peak) peak = pendingLen + piece.length;
        await finishLine(skipping ? piece.subarray(0, 0) : piece);
        pos = nl + 1;
      }
    }
    if (!stop && (pendingLen > 0 || skipping)) await finishLine(new Uint8Array(0)); // last line without a newline
  } finally {
    if (stop) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
  return { examples, lines: lineNo, bytes, errors, peakBuffered: peak };
}

/** The values of a JSONL file the service wrote itself (validated at upload), streamed line by line. */
export async function readStoredJsonl<T>(path: string, maxBytes: number): Promise<T[]> {
  const out: T[] = [];
  const r = await readJsonl(Bun.file(path).stream(), { maxLineBytes: maxBytes, maxExamples: Number.MAX_SAFE_INTEGER, maxBytes, maxErrors: 1 }, (v) => ({ ok: true, value: v as T }), (v) => void out.push(v));
  if (r.errors.length) throw new Error(`stored file ${r.errors[0]!.path}: ${r.errors[0]!.message}`);
  return out;
}
