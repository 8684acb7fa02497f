// The one IEEE half / bfloat16 codec of the project (safetensors reads and writes, GPU f16
// read-back, tests). Decoding goes through a 64K-entry table (256 KiB, built on first use):
// checkpoints hold up to hundreds of millions of halves and a table lookup is ~5× faster than
// the arithmetic. Encoding rounds to nearest even, as PyTorch's .half() and .bfloat16() do.

let table: Float32Array | null = null;
/** value of every f16 bit pattern (subnormals, ±Inf and NaN included). */
function f16Table(): Float32Array {
  if (table) return table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    t[h] = s * (e === 0 ? m * 2 ** -24 : e === 31 ? (m === 0 ? Infinity : NaN) : (1 + m / 1024) * 2 ** (e - 15));
  }
  return (table = t);
}

/** f16 bits → number. */
export function f16BitsToF32(h: number): number {
  return f16Table()[h & 0xffff]!;
}

/** f16 bit patterns → floats. */
export function f16ToF32(h: Uint16Array): Float32Array {
  const t = f16Table();
  const out = new Float32Array(h.length);
  for (let i = 0; i < h.length; i++) out[i] = t[h[i]!]!;
  return out;
}

/** Little-endian f16 bytes (any alignment) → floats. */
export function f16BytesToF32(d: Uint8Array, n: number): Float32Array {
  const t = f16Table();
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = t[d[2 * i]! | (d[2 * i + 1]! << 8)]!;
  return out;
}

/** bf16 bit patterns → floats (exact: the bits are the f32's high half). */
export function bf16ToF32(h: Uint16Array): Float32Array {
  const out = new Float32Array(h.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < h.length; i++) bits[i] = h[i]! << 16;
  return out;
}

/** Little-endian bf16 bytes (any alignment) → floats (exact: bf16 is the high half of an f32). */
export function bf16BytesToF32(d: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) bits[i] = ((d[2 * i]! | (d[2 * i + 1]! << 8)) << 16) >>> 0;
  return out;
}

const fbuf = new Float32Array(1);
const ubuf = new Uint32Array(fbuf.buffer);

/** f32 → f16 bits, round to nearest even; overflow → ±Inf, NaN stays NaN. */
export function f32ToF16Bits(x: number): number {
  fbuf[0] = x;
  const u = ubuf[0]!;
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    // subnormal half (or zero): shift the implicit-1 mantissa into place, rounding the bits shifted out
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // a carry into the exponent is the right rounding
  return sign | h;
}

/** floats → f16 bit patterns (round to nearest even). */
export function f32ToF16(f: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(f.length);
  for (let i = 0; i < f.length; i++) out[i] = f32ToF16Bits(f[i]!);
  return out;
}

/** f32 → bf16 bits, round to nearest even; NaN stays NaN. */
export function f32ToBf16Bits(x: number): number {
  fbuf[0] = x;
  const u = ubuf[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return (u >>> 16) | 0x40;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** floats → bf16 bit patterns (round to nearest even). */
export function f32ToBf16(f: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(f.length);
  for (let i = 0; i < f.length; i++) out[i] = f32ToBf16Bits(f[i]!);
  return out;
}
