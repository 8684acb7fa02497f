// POST /files streams: JSONL is split and parsed line by line in bounded memory (src/util/jsonl.ts)
// and written to the store as it arrives. The parser is checked chunk by chunk (line numbers,
// multi-byte characters across chunks, over-long lines skipped without being buffered, the byte
// limit enforced while reading); the route on a large streamed body (on disk while it streams),
// bad lines (400 with line numbers, nothing stored) and over-limit bodies (413).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { makePglite, type TestDb } from './db.fixtures.ts';
import { loadConfig } from '../src/config.ts';
import { createApp } from '../src/app.ts';
import { createTenant } from '../src/db/repos/tenants.ts';
import { JsonlTooLargeError, readJsonl, type LineCheck } from '../src/util/jsonl.ts';

const enc = new TextEncoder();

/** A stream of `bytes` cut into chunks of `size` (so lines and characters straddle chunk boundaries). */
function chunked(bytes: Uint8Array, size: number, pulled?: { n: number }): ReadableStream<Uint8Array> {
  let off = 0;
  return new ReadableStream({
    pull(c) {
      if (off >= bytes.length) return c.close();
      const part = bytes.slice(off, off + size);
      off += size;
      if (pulled) pulled.n += part.length;
      c.enqueue(part);
    },
  });
}

/** `n` lines produced on the fly (never held whole), in chunks of about 64 KiB. */
function generated(n: number, line: (i: number) => string): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream({
    pull(c) {
      if (i >= n) return c.close();
      let s = '';
      while (i < n && s.length < 65_536) s += line(i++) + '\n';
      c.enqueue(enc.encode(s));
    },
  });
}

const anyJson = (v: unknown): LineCheck<unknown> => ({ ok: true, value: v });
const opts = { maxLineBytes: 1024, maxExamples: 1_000_000, maxBytes: 1 << 30 };

describe('readJsonl', () => {
  test('line numbers, CRLF, blank lines, a last line without newline, characters split across chunks', async () => {
    const text = '{"text":"héllo wörld ✓"}\r\n\n  \n{"text":"b"}\nnot json\n{"text":"😀"}';
    const got: unknown[] = [];
    for (const size of [1, 2, 3, 7, 1000]) {
      got.length = 0;
      const r = await readJsonl(chunked(enc.encode(text), size), opts, anyJson, (v) => void got.push(v));
      expect(r.errors).toEqual([{ path: 'line 5', message: 'not valid JSON' }]);
      expect(r.lines).toBe(6);
      expect(r.examples).toBe(3);
      // values stop being handed on at the first bad line (the caller discards what it wrote)
      expect(got).toEqual([{ text: 'héllo wörld ✓' }, { text: 'b' }]);
    }
  });

  test('an over-long line is skipped to its end without being buffered; later lines keep their numbers', async () => {
    const long = '{"text":"' + 'x'.repeat(5_000_000) + '"}';
    const text = `{"text":"a"}\n${long}\n{"text":"b"}\n\u0000\n`;
    const r = await readJsonl(chunked(enc.encode(text), 65_536), { ...opts, maxLineBytes: 1000 }, anyJson, () => {});
    expect(r.errors).toEqual([
      { path: 'line 2', message: 'line longer than 1000 bytes' },
      { path: 'line 4', message: 'contains a NUL byte: not JSONL text' },
    ]);
    expect(r.peakBuffered).toBeLessThanOrEqual(1000);
  });

  test('a 16 MB file holds at most one line at a time', async () => {
    const r = await readJsonl(generated(200_000, (i) => JSON.stringify({ prompt: `p${i}`, completion: ` c${'z'.repeat(i % 97)}` })), opts, anyJson, () => {});
    expect(r.examples).toBe(200_000);
    expect(r.bytes).toBeGreaterThan(10_000_000);
    expect(r.peakBuffered).toBeLessThan(200);
  });

  test('the byte limit stops reading as soon as it is passed', async () => {
    const pulled = { n: 0 };
    const body = enc.encode('{"text":"a"}\n'.repeat(100_000)); // 1.3 MB
    await expect(readJsonl(chunked(body, 4096, pulled), { ...opts, maxBytes: 100_000 }, anyJson, () => {})).rejects.toBeInstanceOf(JsonlTooLargeError);
    expect(pulled.n).toBeLessThan(100_000 + 3 * 4096); // the stream's read-ahead at most
  });

  test('more examples than allowed is an error naming the line', async () => {
    const r = await readJsonl(chunked(enc.encode('{"a":1}\n{"a":2}\n{"a":3}\n'), 5), { ...opts, maxExamples: 2 }, anyJson, () => {});
    expect(r.errors).toEqual([{ path: 'line 3', message: 'more than 2 examples' }]);
  });
});

describe('POST /files', () => {
  let T: TestDb;
  let app: ReturnType<typeof createApp>;
  let key: string;
  const filesDir = () => path.join(T.dataDir, 'store', 'files');

  beforeAll(async () => {
    T = await makePglite();
    key = (await createTenant(T.database.db, { name: 'files' })).apiKey;
    const config = loadConfig({
      COLA_DATA_DIR: T.dataDir,
      COLA_QUOTA_RPM: '100000',
      COLA_FILE_LIMIT_BYTES: String(96 * 1024 * 1024),
      COLA_FILE_MAX_LINE_BYTES: '4096',
      COLA_MAX_FILE_EXAMPLES: '10000000',
    });
    app = createApp({ config, db: T.database });
  }, 60_000);
  afterAll(async () => {
    await T?.cleanup();
  });

  const post = (body: ReadableStream<Uint8Array> | FormData | string, headers: Record<string, string> = { 'content-type': 'application/jsonl' }) =>
    app.request('/files', { method: 'POST', headers: { authorization: `Bearer ${key}`, ...headers }, body });
  const stored = () => (fs.existsSync(filesDir()) ? fs.readdirSync(filesDir()) : []);

  test('a 60 MB body is written to the store while it streams (never held whole)', async () => {
    const n = 600_000;
    const line = (i: number) => JSON.stringify({ prompt: `Question ${i}: what is ${i} plus one?`, completion: ` It is ${i + 1}.` + ' pad'.repeat(i % 9) });
    const tmpBytes = () => stored().filter((f) => f.startsWith('.tmp-')).reduce((t, f) => t + fs.statSync(path.join(filesDir(), f)).size, 0);
    // While the client is still sending, what it sent so far must already be on disk, up to one
    // write batch (1 MiB) and the stream's read-ahead. A handler that buffers the body has written nothing.
    let i = 0;
    let sent = 0;
    let lagMax = 0;
    let checks = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(c) {
        if (i >= n) return c.close();
        if (sent > 5_000_000 && i % 50_000 < 700) {
          await Bun.sleep(20); // let the handler catch up, then compare
          lagMax = Math.max(lagMax, sent - tmpBytes());
          checks++;
        }
        let s = '';
        while (i < n && s.length < 65_536) s += line(i++) + '\n';
        const b = enc.encode(s);
        sent += b.length;
        c.enqueue(b);
      },
    });
    const r = await post(body);
    expect(r.status).toBe(201);
    const f = (await r.json()) as any;
    expect(f.examples).toBe(n);
    expect(sent).toBeGreaterThan(55_000_000);
    expect(checks).toBeGreaterThan(5);
    expect(lagMax).toBeLessThan(3 * 1024 * 1024);
    const p = path.join(filesDir(), `${f.id}.jsonl`);
    expect(fs.statSync(p).size).toBe(f.bytes);
    expect(stored().filter((x) => x.startsWith('.tmp-'))).toEqual([]);
  }, 120_000);

  test('bad lines answer 400 with their line numbers and nothing is stored', async () => {
    const before = stored();
    const listed = async () => ((await (await app.request('/files', { headers: { authorization: `Bearer ${key}` } })).json()) as any).data.length;
    const rows = await listed();
    const body = enc.encode('{"text":"ok"}\nnot json\n{"prompt":1}\n' + `{"text":"${'y'.repeat(5000)}"}\n{"text":"fine"}\n`);
    const r = await post(chunked(body, 7));
    expect(r.status).toBe(400);
    expect(r.headers.get('content-type')).toContain('application/problem+json');
    const p = (await r.json()) as any;
    expect(p.errors.map((e: any) => e.path)).toEqual(['line 2', 'line 3', 'line 4']);
    expect(p.errors[2].message).toBe('line longer than 4096 bytes');
    expect(stored()).toEqual(before);
    expect(await listed()).toBe(rows);
  });

  test('over the limit: a declared length and a chunked body both answer 413 problem+json, nothing stored', async () => {
    const before = stored();
    const big = await post('x', { 'content-type': 'application/jsonl', 'content-length': String(200 * 1024 * 1024) });
    expect(big.status).toBe(413);
    expect(big.headers.get('content-type')).toContain('application/problem+json');
    // The same limit while streaming (no declared length), on an app with a 1 MiB limit.
    const small = createApp({ config: loadConfig({ COLA_DATA_DIR: T.dataDir, COLA_QUOTA_RPM: '100000', COLA_FILE_LIMIT_BYTES: String(1 << 20) }), db: T.database });
    const r = await small.request('/files', { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/jsonl' }, body: generated(100_000, () => '{"text":"0123456789012345678901234567890123456789012345678"}') });
    expect(r.status).toBe(413);
    expect(((await r.json()) as any).detail).toContain('COLA_FILE_LIMIT_BYTES');
    expect(stored()).toEqual(before);
  }, 60_000);

  test('multipart upload of the same JSONL is validated and stored the same way', async () => {
    const form = new FormData();
    form.append('file', new Blob(['{"prompt":"a","completion":"b"}\n\n{"text":"t"}\r\n']), 'train.jsonl');
    const r = await post(form, {});
    expect(r.status).toBe(201);
    const f = (await r.json()) as any;
    expect(f).toMatchObject({ examples: 2, filename: 'train.jsonl' });
    expect(fs.readFileSync(path.join(filesDir(), `${f.id}.jsonl`), 'utf8')).toBe('{"prompt":"a","completion":"b"}\n{"text":"t"}\n');
  });
});
