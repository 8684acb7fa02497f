import { describe, expect, test } from 'bun:test';
import {
  SafetensorsError,
  encodeSafetensors,
  parseSafetensors,
  toFloat32,
} from '../src/model/safetensors.ts';
import { f32ToBf16Bits, f32ToF16Bits } from '../src/util/f16.ts';
import { Rng } from '../src/util/rng.ts';

/** A file from a raw header string (padded to `pad` with spaces) and `dataLen` data bytes. */
function raw(header: string, dataLen: number, opts: { pad?: number; lenOverride?: bigint } = {}): Uint8Array {
  const h = new TextEncoder().encode(header);
  const hl = opts.pad ? Math.ceil(h.length / opts.pad) * opts.pad : h.length;
  const out = new Uint8Array(8 + hl + dataLen);
  new DataView(out.buffer).setBigUint64(0, opts.lenOverride ?? BigInt(hl), true);
  out.set(h, 8);
  out.fill(0x20, 8 + h.length, 8 + hl);
  for (let i = 0; i < dataLen; i++) out[8 + hl + i] = i & 0xff;
  return out;
}

const T = (dtype: string, shape: unknown[], b: unknown, e: unknown) =>
  `{"dtype":"${dtype}","shape":${JSON.stringify(shape)},"data_offsets":[${b},${e}]}`;

const valid = raw(`{"a":${T('F32', [2], 0, 8)},"b":${T('F16', [2, 1], 8, 12)}}`, 12);

function utf8(...parts: (string | number[])[]): Uint8Array {
  const chunks = parts.map((p) => (typeof p === 'string' ? new TextEncoder().encode(p) : new Uint8Array(p)));
  const hl = chunks.reduce((s, c) => s + c.length, 0);
  const out = new Uint8Array(8 + hl);
  new DataView(out.buffer).setBigUint64(0, BigInt(hl), true);
  let o = 8;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

// [name, bytes, expected message fragment (regex)]
const MALFORMED: [string, Uint8Array, RegExp][] = [
  ['empty file', new Uint8Array(0), /at least an 8-byte header length/],
  ['7 bytes', new Uint8Array(7), /at least an 8-byte/],
  ['truncated in the header', valid.subarray(0, 20), /runs past the end/],
  ['truncated in the data', valid.subarray(0, valid.length - 1), /past the data section|truncated/],
  ['header length 2^64-1', raw('{}', 0, { lenOverride: 0xffffffffffffffffn }), /exceeds the limit/],
  ['header length 2^53+1', raw('{}', 0, { lenOverride: 2n ** 53n + 1n }), /exceeds the limit/],
  ['header length 0', raw('', 0), /too small/],
  ['header not JSON', raw('{"a": nope}', 0), /not valid JSON/],
  ['header is an array', raw('[1, 2]', 0), /begin with '\{'/],
  ['header starts with a space', raw(' {}', 0), /begin with '\{'/],
  ['header not UTF-8', utf8('{"', [0xff, 0xfe], '":1}'), /not valid UTF-8/],
  ['unterminated JSON', raw('{"a":{"dtype":"F32"', 0), /not valid JSON/],
  ['padding with NUL bytes', utf8('{}', [0, 0, 0, 0, 0, 0]), /only space padding/],
  ['padding with newline', raw('{}\n', 0), /only space padding/],
  ['duplicate tensor key', raw(`{"a":${T('F32', [1], 0, 4)},"a":${T('F32', [1], 4, 8)}}`, 8), /duplicate key "a"/],
  ['duplicate field key', raw(`{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4), /duplicate key "dtype"/],
  ['__proto__ key', raw(`{"__proto__":${T('F32', [1], 0, 4)}}`, 4), /forbidden key "__proto__"/],
  ['escaped __proto__ key', raw(`{"\\u005f_proto__":{}}`, 0), /forbidden key "__proto__"/],
  ['constructor key', raw(`{"constructor":${T('F32', [1], 0, 4)}}`, 4), /forbidden key "constructor"/],
  ['prototype in metadata', raw(`{"__metadata__":{"prototype":"x"}}`, 0), /forbidden key "prototype"/],
  ['unknown dtype', raw(`{"a":${T('F31', [1], 0, 4)}}`, 4), /unknown dtype "F31"/],
  ['lowercase dtype', raw(`{"a":${T('f32', [1], 0, 4)}}`, 4), /unknown dtype "f32"/],
  ['dtype not a string', raw(`{"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}`, 4), /unknown dtype 4/],
  ['shape/bytes mismatch', raw(`{"a":${T('F32', [3], 0, 8)}}`, 8), /needs 12 bytes but data_offsets span 8/],
  ['shape/bytes mismatch (dtype size)', raw(`{"a":${T('F16', [4], 0, 16)}}`, 16), /needs 8 bytes/],
  ['overlapping tensors', raw(`{"a":${T('F32', [2], 0, 8)},"b":${T('F32', [2], 4, 12)}}`, 12), /overlaps/],
  ['same range twice', raw(`{"a":${T('F32', [1], 0, 4)},"b":${T('F32', [1], 0, 4)}}`, 4), /overlaps/],
  ['gap between tensors', raw(`{"a":${T('F32', [1], 0, 4)},"b":${T('F32', [1], 8, 12)}}`, 12), /gap/],
  ['gap at start', raw(`{"a":${T('F32', [1], 4, 8)}}`, 8), /gap/],
  ['trailing bytes', raw(`{"a":${T('F32', [1], 0, 4)}}`, 5), /1 trailing bytes/],
  ['data but no tensors', raw(`{}`, 4), /4 trailing bytes/],
  ['offset beyond 2^53', raw(`{"a":${T('U8', [0], 9007199254740993, 9007199254740993)}}`, 0), /too large.*2\^53/],
  ['offset 2^64', raw(`{"a":${T('U8', [1], 0, 18446744073709551616)}}`, 1), /too large/],
  ['end before begin', raw(`{"a":${T('U8', [0], 4, 0)}}`, 4), /end 0 < begin 4/],
  ['offset past file', raw(`{"a":${T('U8', [100], 0, 100)}}`, 4), /past the data section/],
  ['negative dim', raw(`{"a":${T('F32', [-1], 0, 4)}}`, 4), /shape\[0\] must be a non-negative integer, got -1/],
  ['non-integer dim', raw(`{"a":${T('F32', [1.5], 0, 6)}}`, 6), /shape\[0\] must be a non-negative integer, got 1.5/],
  ['dim 1.0 (float literal)', raw(`{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}`, 4), /got 1.0/],
  ['dim as string', raw(`{"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}`, 4), /got "1"/],
  ['huge numel overflow', raw(`{"a":${T('F32', [4294967296, 4294967296], 0, 4)}}`, 4), /overflows/],
  ['rank 17', raw(`{"a":${T('U8', new Array(17).fill(1), 0, 1)}}`, 1), /rank 17/],
  ['shape not array', raw(`{"a":{"dtype":"F32","shape":4,"data_offsets":[0,4]}}`, 4), /shape must be an array/],
  ['data_offsets of 3', raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}`, 4), /must be \[begin, end\]/],
  ['negative offset', raw(`{"a":${T('U8', [0], -1, -1)}}`, 0), /data_offsets\[0\] must be a non-negative integer/],
  ['missing data_offsets', raw(`{"a":{"dtype":"F32","shape":[1]}}`, 4), /must have dtype, shape and data_offsets/],
  ['extra field', raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}`, 4), /unexpected field "x"/],
  ['entry not an object', raw(`{"a":[1,2]}`, 0), /must be an object/],
  ['metadata not an object', raw(`{"__metadata__":"x"}`, 0), /__metadata__ must be an object/],
  ['metadata non-string value', raw(`{"__metadata__":{"format":1}}`, 0), /__metadata__\["format"\] must be a string, got 1/],
  ['metadata nested object', raw(`{"__metadata__":{"format":{"a":"b"}}}`, 0), /must be a string, got an object/],
  ['deep nesting', raw(`{"a":${'['.repeat(5000)}${']'.repeat(5000)}}`, 0), /nesting deeper/],
  ['empty tensor name', raw(`{"":${T('F32', [1], 0, 4)}}`, 4), /empty name/],
  ['pickle (zip torch.save)', new Uint8Array([0x50, 0x4b, 0x03, 0x04, 20, 0, 0, 0, 8, 0, 0, 0, 0, 0]), /pickle/],
  ['pickle (legacy protocol 2)', new Uint8Array([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]), /pickle/],
];

describe('parseSafetensors refuses malformed files with a clear SafetensorsError', () => {
  test('the valid base file parses (so the cases below fail for their own reason)', () => {
    const p = parseSafetensors(valid);
    expect([...p.tensors.keys()]).toEqual(['a', 'b']);
  });
  for (const [name, bytes, re] of MALFORMED) {
    test(name, () => {
      const t0 = performance.now();
      let err: unknown;
      try {
        parseSafetensors(bytes);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SafetensorsError);
      expect((err as Error).message).toMatch(re);
      expect(performance.now() - t0).toBeLessThan(1000);
    });
  }
  test(`at least 20 cases (${MALFORMED.length})`, () => expect(MALFORMED.length).toBeGreaterThanOrEqual(20));
});

describe('parseSafetensors accepts valid edge cases', () => {
  test('header length 640 (whose first bytes equal pickle protocol 2 magic) is not mistaken for pickle', () => {
    const h = `{"__metadata__":{"pad":"${'x'.repeat(600)}"}}`;
    const bytes = raw(h.padEnd(640, ' '), 0);
    expect(bytes[0]).toBe(0x80);
    expect(bytes[1]).toBe(0x02);
    expect(parseSafetensors(bytes).metadata.pad!.length).toBe(600);
  });
  test('zero-size tensors, scalar shape, metadata, unicode names, whitespace inside JSON', () => {
    const bytes = raw(
      `{ "__metadata__" : {"format":"pt","é":"ü"} , "z": ${T('F32', [0, 3], 0, 0)}, "s":${T('F32', [], 0, 4)}, "ñ":${T('I8', [3], 4, 7)} }`,
      7,
      { pad: 8 },
    );
    const p = parseSafetensors(bytes);
    expect(p.metadata).toEqual({ format: 'pt', 'é': 'ü' });
    expect(p.tensors.get('z')!.shape).toEqual([0, 3]);
    expect(p.tensors.get('s')!.shape).toEqual([]);
    expect([...p.tensors.get('ñ')!.data]).toEqual([4, 5, 6]);
  });
  test('maxHeaderBytes option bounds the header', () => {
    expect(() => parseSafetensors(valid, { maxHeaderBytes: 16 })).toThrow(/exceeds the limit of 16/);
  });
});

describe('writer', () => {
  test('round-trip F32/F16/BF16/I32/U8 with metadata, deterministic bytes, sorted names, 8-byte padding', () => {
    const rng = new Rng(1);
    const f32 = Float32Array.from({ length: 12 }, () => rng.normal());
    const f16 = Uint16Array.from(f32, (x) => f32ToF16Bits(x));
    const bf16 = Uint16Array.from(f32, (x) => f32ToBf16Bits(x));
    const i32 = Int32Array.from([1, -2, 3]);
    const u8 = Uint8Array.from([7, 8, 9, 10, 11]);
    const input = {
      'w.f32': { dtype: 'F32' as const, shape: [3, 4], data: f32 },
      'b.f16': { dtype: 'F16' as const, shape: [12], data: f16 },
      'c.bf16': { dtype: 'BF16' as const, shape: [4, 3], data: bf16 },
      'a.i32': { dtype: 'I32' as const, shape: [3], data: i32 },
      'd.u8': { dtype: 'U8' as const, shape: [5], data: u8 },
    };
    const bytes = encodeSafetensors(input, { format: 'pt' });
    const again = encodeSafetensors(input, { format: 'pt' });
    expect(Buffer.from(bytes).equals(Buffer.from(again))).toBe(true);
    const hl = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect((8 + hl) % 8).toBe(0);
    const p = parseSafetensors(bytes);
    expect([...p.tensors.keys()]).toEqual(['a.i32', 'b.f16', 'c.bf16', 'd.u8', 'w.f32']);
    expect(p.metadata).toEqual({ format: 'pt' });
    expect(toFloat32(p.tensors.get('w.f32')!)).toEqual(f32);
    expect([...new Int32Array(p.tensors.get('a.i32')!.data.slice().buffer)]).toEqual([1, -2, 3]);
    expect([...p.tensors.get('d.u8')!.data]).toEqual([7, 8, 9, 10, 11]);
    // f16 keeps 11 significant bits: relative error <= 2^-11; bf16 keeps 8: <= 2^-8.
    const h = toFloat32(p.tensors.get('b.f16')!);
    const b = toFloat32(p.tensors.get('c.bf16')!);
    for (let i = 0; i < 12; i++) {
      expect(Math.abs(h[i]! - f32[i]!)).toBeLessThanOrEqual(Math.abs(f32[i]!) * 2 ** -11 + 1e-7);
      expect(Math.abs(b[i]! - f32[i]!)).toBeLessThanOrEqual(Math.abs(f32[i]!) * 2 ** -8);
    }
  });

  test('f16 decoding of special values and subnormals', () => {
    const bits = Uint16Array.from([0x0000, 0x8000, 0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x7c00, 0xfc00, 0x7e00]);
    const v = toFloat32({ dtype: 'F16', shape: [bits.length], data: new Uint8Array(bits.buffer) });
    expect([...v.slice(0, 9)]).toEqual([0, -0, 1, -2, 65504, 2 ** -24, 1023 * 2 ** -24, Infinity, -Infinity]);
    expect(Number.isNaN(v[9])).toBe(true);
    for (const x of [0, 1, -2, 65504, 2 ** -24, 0.1, 3.14159]) {
      const r = toFloat32({ dtype: 'F16', shape: [1], data: new Uint8Array(Uint16Array.of(f32ToF16Bits(x)).buffer) })[0]!;
      expect(Math.abs(r - x)).toBeLessThanOrEqual(Math.abs(x) * 2 ** -11 + 2 ** -25);
    }
  });

  test('unaligned F32 data is copied; aligned is a view unless copy is asked', () => {
    const bytes = raw(`{"a":${T('U8', [1], 0, 1)},"b":${T('F32', [1], 1, 5)}}`, 5);
    const p = parseSafetensors(bytes);
    const b = p.tensors.get('b')!;
    expect(b.data.byteOffset % 4).not.toBe(0);
    const v = toFloat32(b);
    expect(v.length).toBe(1);
    const f = new Float32Array([1.5]);
    const good = parseSafetensors(encodeSafetensors({ x: { dtype: 'F32', shape: [1], data: f } }));
    const view = toFloat32(good.tensors.get('x')!);
    expect(view.buffer).toBe(good.tensors.get('x')!.data.buffer as ArrayBuffer);
    expect(toFloat32(good.tensors.get('x')!, { copy: true }).buffer).not.toBe(view.buffer);
  });

  test('writer refuses inconsistent input', () => {
    expect(() => encodeSafetensors({ a: { dtype: 'F32', shape: [3], data: new Float32Array(2) } })).toThrow(SafetensorsError);
    expect(() => encodeSafetensors(new Map([['constructor', { dtype: 'F32' as const, shape: [1], data: new Float32Array(1) }]]))).toThrow(/invalid tensor name/);
    expect(() => encodeSafetensors({ a: { dtype: 'F32', shape: [-1], data: new Float32Array(0) } })).toThrow(/invalid dimension/);
  });

  test('fuzz: random byte flips never crash or hang (only SafetensorsError or success)', () => {
    const rng = new Rng(99);
    const base = encodeSafetensors({
      a: { dtype: 'F32', shape: [2, 3], data: new Float32Array(6) },
      b: { dtype: 'BF16', shape: [4], data: new Uint16Array(4) },
    }, { format: 'pt' });
    for (let it = 0; it < 2000; it++) {
      const b = base.slice();
      const flips = 1 + (rng.nextU32() % 3);
      for (let k = 0; k < flips; k++) b[rng.nextU32() % b.length] = rng.nextU32() & 0xff;
      const cut = rng.nextU32() % 4 === 0 ? rng.nextU32() % b.length : b.length;
      try {
        parseSafetensors(b.subarray(0, cut));
      } catch (e) {
        expect(e).toBeInstanceOf(SafetensorsError);
      }
    }
  });
});
