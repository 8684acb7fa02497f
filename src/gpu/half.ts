// Host side of 16-bit weights: rounding f32 values to f16/bf16 (nearest even) and the packed bits the
// kernels read (kernels/half.ts). The f32 values a model keeps on the host for a 16-bit tensor are
// exactly the decoded 16-bit values, so encoding them again is lossless; `halfBits` checks that.
import type { Engine, Tensor } from './engine.ts';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../util/f16.ts';
import type { HalfKind } from './kernels/half.ts';

export type { HalfKind };
export { f32ToBf16 };

export function toHalf(f: Float32Array, kind: HalfKind): Uint16Array {
  return kind === 'bf16' ? f32ToBf16(f) : f32ToF16(f);
}

export function fromHalf(h: Uint16Array, kind: HalfKind): Float32Array {
  return kind === 'bf16' ? bf16ToF32(h) : f16ToF32(h);
}

/** The values rounded to the 16-bit format (as f32; finite values beyond f16's range become ±Inf). */
export function roundToHalf(f: Float32Array, kind: HalfKind): Float32Array {
  return fromHalf(toHalf(f, kind), kind);
}

/** The 16-bit bits of `f` when every value is exactly representable in `kind`, else null. */
export function halfBits(f: Float32Array, kind: HalfKind): Uint16Array | null {
  if (kind === 'bf16') {
    const u = new Uint32Array(f.buffer, f.byteOffset, f.length);
    for (let i = 0; i < u.length; i++) if ((u[i]! & 0xffff) !== 0) return null;
    return f32ToBf16(f);
  }
  const h = f32ToF16(f);
  const back = f16ToF32(h);
  for (let i = 0; i < f.length; i++) if (!Object.is(back[i], f[i]) && !(Number.isNaN(back[i]!) && Number.isNaN(f[i]!))) return null;
  return h;
}

/** Uploads 16-bit bits as an f16/bf16 tensor (two values per u32 word on the device). */
export function uploadHalf(e: Engine, bits: Uint16Array, shape: readonly number[], kind: HalfKind): Tensor {
  return e.upload(bits, shape, kind);
}
