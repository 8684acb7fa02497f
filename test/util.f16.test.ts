// The one f16/bf16 codec (src/util/f16.ts) against the platform's Float16Array (IEEE binary16,
// round to nearest even) over every bit pattern and a spread of floats, and the atomic-write helper.
import { describe, expect, test } from 'bun:test';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bf16BytesToF32, f16BitsToF32, f16BytesToF32, f16ToF32, f32ToBf16Bits, f32ToF16, f32ToF16Bits } from '../src/util/f16.ts';
import { AsyncAtomicFile, AtomicFile, writeFileAtomic } from '../src/util/atomic.ts';
import { Rng } from '../src/util/rng.ts';

describe('f16 codec', () => {
  test('decodes every bit pattern as Float16Array does', () => {
    const bits = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const want = new Float16Array(bits.buffer);
    const got = f16ToF32(bits);
    const bytes = f16BytesToF32(new Uint8Array(bits.buffer), bits.length);
    for (let i = 0; i < 65536; i++) {
      const w = want[i]!;
      if (Number.isNaN(w)) {
        expect(Number.isNaN(got[i]!) && Number.isNaN(bytes[i]!) && Number.isNaN(f16BitsToF32(i))).toBe(true);
        continue;
      }
      if (got[i] !== w || bytes[i] !== w || f16BitsToF32(i) !== w) throw new Error(`bits ${i.toString(16)}: ${got[i]} vs ${w}`);
    }
  });

  test('encodes (round to nearest even, subnormals, overflow) as Float16Array does', () => {
    const rng = new Rng(7);
    const xs = [0, -0, 1, -1, 65504, 65519.99, 65520, 1e6, -1e6, 2 ** -24, 2 ** -25, 2 ** -25 * 1.0001, 3 * 2 ** -26, Infinity, -Infinity, 1 + 2 ** -11, 1 + 3 * 2 ** -11];
    for (let i = 0; i < 20000; i++) xs.push(rng.normal() * 10 ** ((i % 12) - 6));
    const f = Float32Array.from(xs);
    const want = new Uint16Array(new Float16Array(f).buffer);
    expect([...f32ToF16(f)]).toEqual([...want]);
    expect(f.every((x, i) => f32ToF16Bits(x) === want[i])).toBe(true);
    expect(f32ToF16Bits(NaN) & 0x7c00).toBe(0x7c00);
    expect(f32ToF16Bits(NaN) & 0x3ff).not.toBe(0);
  });

  test('bf16: round to nearest even, exact decode, NaN kept', () => {
    const f = Float32Array.from([1, -2.5, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.0e38, 1e-40]);
    const bits = Uint16Array.from(f, f32ToBf16Bits);
    const back = bf16BytesToF32(new Uint8Array(bits.buffer), bits.length);
    expect([...back]).toEqual([1, -2.5, 1, 1 + 4 * 2 ** -8, back[4]!, back[5]!]);
    expect(Math.abs(back[4]! - 3.0e38) / 3.0e38).toBeLessThan(2 ** -8);
    expect(Number.isNaN(bf16BytesToF32(new Uint8Array(Uint16Array.of(f32ToBf16Bits(NaN)).buffer), 1)[0]!)).toBe(true);
  });
});

describe('atomic write', () => {
  test('installs the whole file, leaves no temporary file, and abort removes it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'atomic-'));
    try {
      const bytes = new Uint8Array(3 * (1 << 20) + 5).map((_, i) => i & 0xff);
      const seen: number[] = [];
      await writeFileAtomic(join(dir, 'sub', 'x.bin'), bytes, { afterChunk: (n) => void seen.push(n) });
      expect(readFileSync(join(dir, 'sub', 'x.bin')).equals(bytes)).toBe(true);
      expect(seen).toEqual([1 << 20, 2 << 20, 3 << 20, bytes.length]);
      expect(readdirSync(join(dir, 'sub'))).toEqual(['x.bin']);
      // a failing write (the hook throws midway) leaves the old file and no temporary file
      await expect(writeFileAtomic(join(dir, 'sub', 'x.bin'), new Uint8Array(2 << 20), { afterChunk: () => { throw new Error('crash'); } })).rejects.toThrow('crash');
      expect(readFileSync(join(dir, 'sub', 'x.bin')).equals(bytes)).toBe(true);
      expect(readdirSync(join(dir, 'sub'))).toEqual(['x.bin']);
      const f = new AtomicFile(join(dir, 'y.bin'));
      f.write(new Uint8Array([1, 2]));
      expect(existsSync(f.tmp)).toBe(true);
      f.abort();
      expect(readdirSync(dir).sort()).toEqual(['sub']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the asynchronous file: temp file, whole content on commit, abort removes it and keeps the old file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'atomic-async-'));
    try {
      const bytes = new Uint8Array(8 * (1 << 20) + 3).map((_, i) => (i * 7) & 0xff);
      const f = await AsyncAtomicFile.open(join(dir, 'a', 'z.bin'));
      expect(existsSync(f.tmp)).toBe(true);
      expect(existsSync(f.finalPath)).toBe(false);
      await f.write(bytes.subarray(0, 5));
      await f.write(bytes.subarray(5));
      expect(existsSync(f.finalPath)).toBe(false); // nothing under the final name before commit
      await f.commit();
      expect(readFileSync(f.finalPath).equals(bytes)).toBe(true);
      expect(readdirSync(join(dir, 'a'))).toEqual(['z.bin']);
      await f.abort(); // no-op after a commit
      expect(readFileSync(f.finalPath).equals(bytes)).toBe(true);
      await expect(f.write(bytes)).rejects.toThrow('write after commit/abort');
      const g = await AsyncAtomicFile.open(join(dir, 'a', 'z.bin'));
      await g.write(new Uint8Array([1, 2, 3]));
      await g.abort();
      expect(readdirSync(join(dir, 'a'))).toEqual(['z.bin']);
      expect(readFileSync(g.finalPath).equals(bytes)).toBe(true); // the old file stays
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
