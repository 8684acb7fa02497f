// 16-bit weights packed two per u32 word (element 2i in the low half of word i, as the bytes of a
// little-endian f16/bf16 array lie). Read with f32 arithmetic on any device, no `shader-f16`:
// f16 by WGSL's core unpack2x16float, bf16 by moving its bits into the high half of an f32.
export type HalfKind = 'f16' | 'bf16';

/** WGSL `fn h2(w: u32) -> vec2f`: the two 16-bit values of one word (low half first). */
export function halfWGSL(kind: HalfKind): string {
  return kind === 'f16'
    ? 'fn h2(w: u32) -> vec2f { return unpack2x16float(w); }'
    : 'fn h2(w: u32) -> vec2f { return vec2f(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u)); }';
}
