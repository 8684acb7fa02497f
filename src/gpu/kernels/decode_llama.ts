// A whole Llama decode step (one token, batch 1) in ONE dispatch of ONE workgroup, for small models.
//
// Why: decoding a small model is bound by the number of dispatches, not by arithmetic. On lavapipe a
// dispatch costs tens of microseconds whatever it does, and the layer-by-layer path issues ~12 per
// layer; stories260K (260K parameters) then spends >90% of a token in dispatch overhead. Here the
// phases of a layer (RMSNorm, q/k/v + RoPE + cache write, attention, o + residual, RMSNorm,
// gate/up + SiLU, down + residual) are separated by workgroup barriers inside one invocation of the
// kernel. One workgroup runs on one CPU thread on lavapipe, so this only pays for models small
// enough that a token's arithmetic is cheap (ops/decode.ts decides).
//
// Layout: `w` packs every weight (offsets below, in 32-bit words, baked in as constants); `kv` holds
// the cache (L, 2, MAXT, HKV, DH); `logits` (V) is the output; `u` = {token, pos}. With
// PackedLayout.half the matrices (embedding, projections, classifier) are 16-bit values packed two
// per word (kernels/half.ts) and read as such; norms stay f32; all arithmetic is f32.
import { halfWGSL, type HalfKind } from './half.ts';
export interface DecodeSpec {
  D: number; // model width
  L: number; // layers
  H: number; // query heads
  HKV: number; // kv heads
  DH: number; // head dim (even)
  F: number; // FFN width
  V: number; // vocabulary
  MAXT: number; // capacity: the longest cache the kernel serves (workgroup arrays are sized by it)
  EPS: number; // RMSNorm epsilon
  INV_FREQ: Float32Array; // RoPE inverse frequencies (DH/2), src/model/rope.ts
  INTERLEAVED: boolean; // RoPE pairs (2i, 2i+1) (llama2.c) or (i, i + DH/2) (HF)
  WG: number; // invocations
}

/** Offsets (in 32-bit words) of each weight inside the packed buffer. */
export interface PackedLayout {
  /** Matrices stored 16-bit (n/2 words for n values); unset: f32. */
  half?: HalfKind;
  /** Parameters (values, not words). */
  params: number;
  emb: number; // (V, D)
  layers: { attnNorm: number; wq: number; wk: number; wv: number; wo: number; ffnNorm: number; wg: number; wu: number; wd: number }[];
  finalNorm: number; // (D)
  cls: number; // (V, D)
  total: number;
}

export function packedLayout(s: DecodeSpec, tied: boolean, half?: HalfKind): PackedLayout {
  let o = 0;
  let params = 0;
  // Every matrix has a multiple of 4 values (D, F, H·DH, HKV·DH are), so 16-bit offsets stay even.
  const take = (n: number, matrix = true) => ((params += n), (o += half && matrix ? n / 2 : n), o - (half && matrix ? n / 2 : n));
  const Dq = s.H * s.DH;
  const Dkv = s.HKV * s.DH;
  const emb = take(s.V * s.D);
  const layers = [];
  for (let l = 0; l < s.L; l++) {
    layers.push({
      attnNorm: take(s.D, false),
      wq: take(Dq * s.D),
      wk: take(Dkv * s.D),
      wv: take(Dkv * s.D),
      wo: take(s.D * Dq),
      ffnNorm: take(s.D, false),
      wg: take(s.F * s.D),
      wu: take(s.F * s.D),
      wd: take(s.D * s.F),
    });
  }
  const finalNorm = take(s.D, false);
  const cls = tied ? emb : take(s.V * s.D);
  return { emb, layers, finalNorm, cls, total: o, params, ...(half ? { half } : {}) };
}

/**
 * WGSL shared by both fused decoders for reading the packed matrices: `W4(i)` is the i-th group of 4
 * values from a row start `row` (in words) given as `R4(row)`, `EMB(j)` the j-th value of the
 * embedding (j counted in values from the embedding's start), and `rowWords(K)` a row's length in words.
 */
export function packedReads(lay: PackedLayout): { decl: string; R4: (row: string) => string; W4: (i: string) => string; EMB: (j: string) => string; rowWords: (K: number) => number } {
  if (!lay.half) {
    return {
      decl: '@group(0) @binding(0) var<storage, read> w: array<vec4<f32>>;    // packed weights (vec4 view)',
      R4: (row) => `${row} / 4u`,
      W4: (i) => `w[${i}]`,
      EMB: (j) => `ws[${lay.emb}u + ${j}]`,
      rowWords: (K) => K,
    };
  }
  return {
    decl: `@group(0) @binding(0) var<storage, read> w: array<vec2<u32>>;   // packed weights: ${lay.half} matrices, 4 values per vec2 of words
${halfWGSL(lay.half)}
fn w4h(i: u32) -> vec4<f32> { let p = w[i]; return vec4<f32>(h2(p.x), h2(p.y)); }
fn embh(j: u32) -> f32 { let p = w[j >> 2u]; let v = h2(select(p.x, p.y, ((j >> 1u) & 1u) == 1u)); return select(v.x, v.y, (j & 1u) == 1u); }`,
    R4: (row) => `${row} / 2u`,
    W4: (i) => `w4h(${i})`,
    EMB: (j) => `embh(${2 * lay.emb}u + ${j})`,
    rowWords: (K) => K / 2,
  };
}

/** The inverse frequencies as a WGSL constant array, exact (f32 bit patterns). */
export function invFreqWGSL(invFreq: Float32Array): string {
  const bits = new Uint32Array(Float32Array.from(invFreq).buffer);
  return `const INV_FREQ = array<f32, ${bits.length}>(${Array.from(bits, (b) => `bitcast<f32>(0x${b.toString(16)}u)`).join(', ')});`;
}

/** A pipeline-key part naming the inverse frequencies exactly. */
export function invFreqKey(invFreq: Float32Array): string {
  return Array.from(new Uint32Array(Float32Array.from(invFreq).buffer), (b) => b.toString(36)).join('_');
}

export function decodeLlamaWGSL(s: DecodeSpec, lay: PackedLayout): string {
  const rd = packedReads(lay);
  const Dq = s.H * s.DH;
  const Dkv = s.HKV * s.DH;
  const G = s.H / s.HKV;
  const f = (x: number) => (Number.isInteger(x) ? `${x}.0` : `${x}`);
  const u = (x: number) => `${x}u`;
  // dot of a weight row (K floats at float offset `row`) with a workgroup vector, vec4 loads of W.
  const dot = (vec: string, row: string, K: number) => `dot_${vec}(${row}, ${K}u)`;
  const dotFn = (vec: string, len: number) => `
fn dot_${vec}(row: u32, K: u32) -> f32 {
  var acc = vec4<f32>(0.0);
  let r4 = ${rd.R4('row')};
  for (var k = 0u; k < K / 4u; k++) { // K comes from the uniform: a constant bound would be fully unrolled at every call site
    acc += ${rd.W4('r4 + k')} * vec4<f32>(${vec}[4u * k], ${vec}[4u * k + 1u], ${vec}[4u * k + 2u], ${vec}[4u * k + 3u]);
  }
  return (acc.x + acc.y) + (acc.z + acc.w);
}`;
  void dot;
  const norm = (wOff: string) => `
  // RMSNorm: xn = x · rstd · w
  {
    var p = 0.0;
    for (var i = lid; i < ${u(s.D)}; i += ${u(s.WG)}) { p += x[i] * x[i]; }
    red[lid] = p;
    workgroupBarrier();
    if (lid == 0u) {
      var t = 0.0;
      for (var j = 0u; j < ${u(s.WG)}; j++) { t += red[j]; }
      red[0] = 1.0 / sqrt(t / ${f(s.D)} + ${f(s.EPS)});
    }
    workgroupBarrier();
    let rstd = red[0];
    for (var i = lid; i < ${u(s.D)}; i += ${u(s.WG)}) { xn[i] = x[i] * rstd * ws[${wOff} + i]; }
    workgroupBarrier();
  }`;
  const pair = s.INTERLEAVED ? ['2u * i', '2u * i + 1u'] : ['i', 'i + ' + u(s.DH / 2)];
  const layer = `
  for (var l = 0u; l < un.layers; l++) { // run-time bound: keeps LLVM from unrolling the layer stack
    let base = ${u(lay.layers[0]!.attnNorm)} + l * ${u(s.L > 1 ? lay.layers[1]!.attnNorm - lay.layers[0]!.attnNorm : 0)};
    ${norm('base')}
    // q, k, v rows with RoPE; k, v go to the cache at row pos. One lane per rotation pair.
    let kvBase = l * 2u * un.maxT * ${u(Dkv)};
    for (var pi = lid; pi < ${u((Dq + 2 * Dkv) / 2)}; pi += ${u(s.WG)}) {
      let hd = pi / ${u(s.DH / 2)};      // head slot: H q heads, then HKV k, then HKV v
      let i = pi % ${u(s.DH / 2)};
      let r0 = hd * ${u(s.DH)} + ${pair[0]};
      let r1 = hd * ${u(s.DH)} + ${pair[1]};
      let a = dot_xn(base + ${u(lay.layers[0]!.wq - lay.layers[0]!.attnNorm)} + r0 * ${u(rd.rowWords(s.D))}, un.d);
      let b = dot_xn(base + ${u(lay.layers[0]!.wq - lay.layers[0]!.attnNorm)} + r1 * ${u(rd.rowWords(s.D))}, un.d);
      let ang = f32(pos) * INV_FREQ[i]; // f32, as llama2.c and HF
      let c = cos(ang);
      let sn = sin(ang);
      if (hd < ${u(s.H)}) {
        q[r0] = a * c - b * sn;
        q[r1] = a * sn + b * c;
      } else if (hd < ${u(s.H + s.HKV)}) {
        let kr0 = r0 - ${u(Dq)};
        let kr1 = r1 - ${u(Dq)};
        kv[kvBase + pos * ${u(Dkv)} + kr0] = a * c - b * sn;
        kv[kvBase + pos * ${u(Dkv)} + kr1] = a * sn + b * c;
      } else {
        let vr0 = r0 - ${u(Dq + Dkv)};
        let vr1 = r1 - ${u(Dq + Dkv)};
        kv[kvBase + un.maxT * ${u(Dkv)} + pos * ${u(Dkv)} + vr0] = a;
        kv[kvBase + un.maxT * ${u(Dkv)} + pos * ${u(Dkv)} + vr1] = b;
      }
    }
    workgroupBarrier();
    // Attention scores: one lane per (head, key position).
    for (var ht = lid; ht < ${u(s.H)} * (pos + 1u); ht += ${u(s.WG)}) {
      let h = ht / (pos + 1u);
      let t = ht % (pos + 1u);
      let kOff = kvBase + t * ${u(Dkv)} + (h / ${u(G)}) * ${u(s.DH)};
      var sc = 0.0;
      for (var d = 0u; d < ${u(s.DH)}; d++) { sc += q[h * ${u(s.DH)} + d] * kv[kOff + d]; }
      att[h * un.maxT + t] = sc * ${f(1 / Math.sqrt(s.DH))};
    }
    workgroupBarrier();
    // Softmax per head: one lane per head.
    for (var h = lid; h < ${u(s.H)}; h += ${u(s.WG)}) {
      var m = -3.0e38;
      for (var t = 0u; t <= pos; t++) { m = max(m, att[h * un.maxT + t]); }
      var z = 0.0;
      for (var t = 0u; t <= pos; t++) { let e = exp(att[h * un.maxT + t] - m); att[h * un.maxT + t] = e; z += e; }
      red[h] = 1.0 / z;
    }
    workgroupBarrier();
    // Weighted values: one lane per (head, dim).
    for (var hd = lid; hd < ${u(Dq)}; hd += ${u(s.WG)}) {
      let h = hd / ${u(s.DH)};
      let d = hd % ${u(s.DH)};
      let vOff = kvBase + un.maxT * ${u(Dkv)} + (h / ${u(G)}) * ${u(s.DH)} + d;
      var acc = 0.0;
      for (var t = 0u; t <= pos; t++) { acc += att[h * un.maxT + t] * kv[vOff + t * ${u(Dkv)}]; }
      ao[hd] = acc * red[h];
    }
    workgroupBarrier();
    // x += ao · Woᵀ
    for (var r = lid; r < ${u(s.D)}; r += ${u(s.WG)}) {
      x[r] += dot_ao(base + ${u(lay.layers[0]!.wo - lay.layers[0]!.attnNorm)} + r * ${u(rd.rowWords(Dq))}, un.dq);
    }
    workgroupBarrier();
    ${norm(`base + ${u(lay.layers[0]!.ffnNorm - lay.layers[0]!.attnNorm)}`)}
    // hb = silu(xn·Wgᵀ) ⊙ (xn·Wuᵀ)
    for (var r = lid; r < ${u(s.F)}; r += ${u(s.WG)}) {
      let g = dot_xn(base + ${u(lay.layers[0]!.wg - lay.layers[0]!.attnNorm)} + r * ${u(rd.rowWords(s.D))}, un.d);
      let v = dot_xn(base + ${u(lay.layers[0]!.wu - lay.layers[0]!.attnNorm)} + r * ${u(rd.rowWords(s.D))}, un.d);
      hb[r] = g / (1.0 + exp(-g)) * v;
    }
    workgroupBarrier();
    // x += hb · Wdᵀ
    for (var r = lid; r < ${u(s.D)}; r += ${u(s.WG)}) {
      x[r] += dot_hb(base + ${u(lay.layers[0]!.wd - lay.layers[0]!.attnNorm)} + r * ${u(rd.rowWords(s.F))}, un.f);
    }
    workgroupBarrier();
  }`;
  return `// Generated by src/gpu/kernels/decode_llama.ts
// Sizes that bound loops come from here, not from constants: with constant trip counts LLVM unrolled
// the whole layer stack and every dot product, and one pipeline took minutes to compile on lavapipe.
struct U { token: u32, pos: u32, layers: u32, maxT: u32, d: u32, dq: u32, f: u32, _a: u32 }
${rd.decl}
@group(0) @binding(1) var<storage, read> ws: array<f32>;         // the same buffer, scalar view (norms)
@group(0) @binding(2) var<storage, read_write> kv: array<f32>;   // (L, 2, MAXT, HKV, DH)
@group(0) @binding(3) var<storage, read_write> logits: array<f32>; // (V)
@group(0) @binding(4) var<uniform> un: U;
${invFreqWGSL(s.INV_FREQ)}

var<workgroup> x: array<f32, ${s.D}>;
var<workgroup> xn: array<f32, ${s.D}>;
var<workgroup> q: array<f32, ${Dq}>;
var<workgroup> ao: array<f32, ${Dq}>;
var<workgroup> hb: array<f32, ${s.F}>;
var<workgroup> att: array<f32, ${s.H * s.MAXT}>; // (H, maxT): MAXT here is the capacity (model context)
var<workgroup> red: array<f32, ${Math.max(s.WG, s.H)}>;
${dotFn('xn', s.D)}
${dotFn('ao', Dq)}
${dotFn('hb', s.F)}

@compute @workgroup_size(${s.WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  let pos = un.pos;
  for (var i = lid; i < ${u(s.D)}; i += ${u(s.WG)}) { x[i] = ${rd.EMB(`un.token * ${u(s.D)} + i`)}; }
  workgroupBarrier();
${layer}
  ${norm(u(lay.finalNorm))}
  for (var r = lid; r < ${u(s.V)}; r += ${u(s.WG)}) { logits[r] = dot_xn(${u(lay.cls)} + r * ${u(rd.rowWords(s.D))}, un.d); }
}
`;
}
