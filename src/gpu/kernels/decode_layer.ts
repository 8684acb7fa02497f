// Fused kernels for the layer-by-layer decode path (issue 11, item 5): a Llama-layout layer in five
// dispatches instead of ~12 — q/k/v product with the attention RMSNorm folded in; one attention
// kernel that ropes q/k, appends k/v to the cache and attends over 0..pos; o product + residual;
// gate/up product with the FFN RMSNorm folded in and SiLU·mul; down product + residual.
//
// GEMV layout (after gemv.wgsl): a workgroup of 256 = 8 groups × 32 lanes; each group owns one
// output row n and its 32 lanes split K, every weight load is shared by the MR input rows, a
// fixed-order tree sums the partials. Weights are read 8 values per lane-load: one vec4<u32> of
// packed 16-bit values (kernels/half.ts), or two vec4<f32>; accumulation is f32. K is a multiple of 8.
//
// RMSNorm in-kernel (not folded into the weights): every workgroup first sums x² of its MR rows
// (K values each, a second pass over x, which is ≤ 1/8 of the bytes of the 8 weight rows it then
// reads) and scales its dot products by the row's 1/rms; the norm weight multiplies x as it is
// loaded. The weights stay exactly what training and LoRA merges see.
//
// Sizes that change per model (N of each segment, K) come from a uniform, so one pipeline per
// (mode, weight dtypes, MR, bias, norm) serves every layer and every model (lavapipe compiles are
// seconds each).
import type { HalfKind } from './half.ts';
import { invFreqWGSL } from './decode_llama.ts';

export type WeightKind = 'f32' | HalfKind;

export type GemvMode =
  /** y (MR, NQ+NK+NV) = [q | k | v] of rmsnorm(x)·W{q,k,v}ᵀ (+ one concatenated bias). */
  | 'qkv'
  /** y (MR, F) = silu(rmsnorm(x)·Wgᵀ) ⊙ (rmsnorm(x)·Wuᵀ). */
  | 'gateup'
  /** y (MR, N) += x·Wᵀ (+ bias): the o and down products with the residual add. */
  | 'resid';

export interface FusedGemvSpec {
  mode: GemvMode;
  /** Stored precision of each weight binding (qkv: 3, gateup: 2, resid: 1). */
  kinds: WeightKind[];
  MR: number;
  bias: boolean;
}

export const GEMV_WG = 256;
export const GEMV_ROWS_PER_WG = 8;

export function fusedGemvKey(s: FusedGemvSpec): string {
  return `decode_gemv.${s.mode}.${s.kinds.join('_')}.${s.MR}.${s.bias ? 'b' : 'nb'}`;
}

function h2Fn(kind: HalfKind): string {
  return kind === 'f16'
    ? 'fn h2_f16(w: u32) -> vec2f { return unpack2x16float(w); }'
    : 'fn h2_bf16(w: u32) -> vec2f { return vec2f(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u)); }';
}

/**
 * Bindings: 0 x (MR, K) f32 · 1 y (MR, Ntot) · 2 uniform · then the norm weight (K) (qkv, gateup),
 * the bias (Ntot) when spec.bias, and the weights.
 */
export function fusedGemvWGSL(s: FusedGemvSpec): string {
  const norm = s.mode !== 'resid';
  // Bindings after x, y, P: the norm weight (qkv, gateup), the bias (when given), the weights.
  // Only bindings the kernel reads are declared (the pipelines' 'auto' layouts drop unused ones).
  const gB = 3;
  const biasB = norm ? 4 : 3;
  const w0B = biasB + (s.bias ? 1 : 0);
  const NW = s.mode === 'gateup' ? 2 : 1; // partial sums per group
  const R = s.MR;
  const wDecl = s.kinds
    .map((k, i) => (k === 'f32' ? `@group(0) @binding(${w0B + i}) var<storage, read> w${i}: array<vec4<f32>>; // (N${i}, K/4)` : `@group(0) @binding(${w0B + i}) var<storage, read> w${i}: array<vec4<u32>>; // (N${i}, K/8) ${k}, 8 values per vec4 of words`))
    .join('\n');
  const halfFns = [...new Set(s.kinds.filter((k): k is HalfKind => k !== 'f32'))].map(h2Fn).join('\n');
  const rows = Array.from({ length: R }, (_, m) => m);
  // Accumulates x·W{i}[row] into s{acc}[m] over this lane's K chunks.
  const loop = (i: number, row: string, acc: number) => {
    const k = s.kinds[i]!;
    const load =
      k === 'f32'
        ? `let wa = w${i}[(${row} * P.K8 + c) * 2u]; let wb = w${i}[(${row} * P.K8 + c) * 2u + 1u];`
        : `let p = w${i}[${row} * P.K8 + c]; let wa = vec4f(h2_${k}(p.x), h2_${k}(p.y)); let wb = vec4f(h2_${k}(p.z), h2_${k}(p.w));`;
    return `for (var c = lane; c < P.K8; c += 32u) {
      ${load}
      ${norm ? 'let ga = g[2u * c]; let gb = g[2u * c + 1u];' : ''}
      ${rows.map((m) => `s${acc}[${m}] += dot(x[${m}u * 2u * P.K8 + 2u * c]${norm ? ' * ga' : ''}, wa) + dot(x[${m}u * 2u * P.K8 + 2u * c + 1u]${norm ? ' * gb' : ''}, wb);`).join('\n      ')}
    }`;
  };
  let body: string;
  if (s.mode === 'qkv') {
    body = `if (n < P.n0) { ${loop(0, 'n', 0)} }
    else if (n < P.n0 + P.n1) { ${loop(1, '(n - P.n0)', 0)} }
    else if (n < P.n0 + P.n1 + P.n2) { ${loop(2, '(n - P.n0 - P.n1)', 0)} }`;
  } else if (s.mode === 'gateup') {
    body = `if (n < P.n0) { ${loop(0, 'n', 0)} ${loop(1, 'n', 1)} }`;
  } else body = `if (n < P.n0) { ${loop(0, 'n', 0)} }`;
  const ntot = s.mode === 'qkv' ? 'P.n0 + P.n1 + P.n2' : 'P.n0';
  const out = rows
    .map((m) => {
      const r = norm ? ` * rs[${m}]` : '';
      if (s.mode === 'gateup') return `{ let gv = red[${2 * m}u * ${GEMV_WG}u + li]${r}; let uv = red[${2 * m + 1}u * ${GEMV_WG}u + li]${r}; y[${m}u * NT + n] = gv * sigmoid(gv) * uv; }`;
      const b = s.bias ? ' + bias[n]' : '';
      if (s.mode === 'qkv') return `y[${m}u * NT + n] = red[${m}u * ${GEMV_WG}u + li]${r}${b};`;
      return `y[${m}u * NT + n] = red[${m}u * ${GEMV_WG}u + li]${b} + y[${m}u * NT + n];`;
    })
    .join('\n    ');
  return `// Generated by src/gpu/kernels/decode_layer.ts (${fusedGemvKey(s)})
struct Params { n0: u32, n1: u32, n2: u32, K8: u32, eps: f32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;      // (MR, K/4)
@group(0) @binding(1) var<storage, read_write> y: array<f32>;      // (MR, Ntot)
@group(0) @binding(2) var<uniform> P: Params;
${norm ? `@group(0) @binding(${gB}) var<storage, read> g: array<vec4<f32>>;      // (K/4) norm weight` : ''}
${s.bias ? `@group(0) @binding(${biasB}) var<storage, read> bias: array<f32>;         // (Ntot)` : ''}
${wDecl}
${halfFns}
fn sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); } // as activation.wgsl

var<workgroup> red: array<f32, ${GEMV_WG * R * NW}>;
var<workgroup> rs: array<f32, ${R}>;

@compute @workgroup_size(${GEMV_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let grp = li / 32u;
  let lane = li % 32u;
  let n = (wid.x + wid.y * nwg.x) * ${GEMV_ROWS_PER_WG}u + grp;
  let NT = ${ntot};
  ${
    norm
      ? `// 1/rms of each input row (all 256 lanes, then a tree).
  ${rows.map((m) => `{ var p = 0.0; for (var k = li; k < 2u * P.K8; k += ${GEMV_WG}u) { let v = x[${m}u * 2u * P.K8 + k]; p += dot(v, v); } red[${m}u * ${GEMV_WG}u + li] = p; }`).join('\n  ')}
  workgroupBarrier();
  for (var off = ${GEMV_WG / 2}u; off > 0u; off = off >> 1u) {
    if (li < off) { ${rows.map((m) => `red[${m}u * ${GEMV_WG}u + li] += red[${m}u * ${GEMV_WG}u + li + off];`).join(' ')} }
    workgroupBarrier();
  }
  if (li == 0u) { ${rows.map((m) => `rs[${m}] = 1.0 / sqrt(red[${m}u * ${GEMV_WG}u] / f32(8u * P.K8) + P.eps);`).join(' ')} }
  workgroupBarrier();`
      : ''
  }
  ${Array.from({ length: NW }, (_, j) => `var s${j}: array<f32, ${R}>;`).join(' ')}
  ${Array.from({ length: NW }, (_, j) => rows.map((m) => `s${j}[${m}] = 0.0;`).join(' ')).join(' ')}
  ${body}
  ${Array.from({ length: NW }, (_, j) => rows.map((m) => `red[${m * NW + j}u * ${GEMV_WG}u + li] = s${j}[${m}];`).join(' ')).join(' ')}
  workgroupBarrier();
  for (var off = 16u; off > 0u; off = off >> 1u) {
    if (lane < off) { for (var r = 0u; r < ${R * NW}u; r++) { red[r * ${GEMV_WG}u + li] += red[r * ${GEMV_WG}u + li + off]; } }
    workgroupBarrier();
  }
  if (lane == 0u && n < NT) {
    ${out}
  }
}
`;
}

// ---------------------------------------------------------------- attention + cache append

export interface AttnAppendSpec {
  H: number;
  HKV: number;
  D: number; // head dim (even)
  rope: boolean;
  interleaved: boolean;
  invFreq: Float32Array | null; // (D/2) baked as constants
  WG: number; // lanes splitting the keys of one head
}

/**
 * One workgroup per query head h (kv head h / (H/HKV)), batch 1, contiguous cache (MAXT, HKV, D):
 * ropes q_h and the new k, writes k/v at row pos (only the first query head of each kv group
 * writes; the others use their own copy for key pos, so no workgroup reads a row another writes in
 * this dispatch), then online softmax over keys 0..pos split across WG lanes, combined in a
 * fixed order. Bindings: 0 qkv (NQ+2·NKV) · 1 k cache · 2 v cache · 3 out (H·D) · 4 uniform {pos}.
 */
export function attnAppendWGSL(s: AttnAppendSpec): string {
  const { H, HKV, D, WG } = s;
  const G = H / HKV;
  const NQ = H * D;
  const NKV = HKV * D;
  const pair = s.interleaved ? ['2u * p', '2u * p + 1u'] : ['p', `p + ${D / 2}u`];
  const scale = 1 / Math.sqrt(D);
  return `// Generated by src/gpu/kernels/decode_layer.ts (attention + KV append)
struct U { pos: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<storage, read> qkv: array<f32>;            // (NQ + 2·NKV) = [q | k | v] of this token
@group(0) @binding(1) var<storage, read_write> kc: array<f32>;       // (MAXT, HKV, D) roped keys
@group(0) @binding(2) var<storage, read_write> vc: array<f32>;       // (MAXT, HKV, D)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;      // (H, D)
@group(0) @binding(4) var<uniform> u: U;
${s.rope ? invFreqWGSL(s.invFreq!) : ''}
const D: u32 = ${D}u;
const SCALE: f32 = bitcast<f32>(0x${new Uint32Array(Float32Array.of(scale).buffer)[0]!.toString(16)}u);

var<workgroup> qs: array<f32, ${D}>;
var<workgroup> kn: array<f32, ${D}>;
var<workgroup> vn: array<f32, ${D}>;
var<workgroup> wm: array<f32, ${WG}>;
var<workgroup> wl: array<f32, ${WG}>;
var<workgroup> wacc: array<f32, ${WG * D}>;

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) i: u32, @builtin(workgroup_id) wid: vec3u) {
  let h = wid.x;
  let hk = h / ${G}u;
  let pos = u.pos;
  for (var p = i; p < ${D / 2}u; p += ${WG}u) {
    let a = ${pair[0]};
    let b = ${pair[1]};
    let q0 = qkv[h * D + a]; let q1 = qkv[h * D + b];
    let k0 = qkv[${NQ}u + hk * D + a]; let k1 = qkv[${NQ}u + hk * D + b];
    ${
      s.rope
        ? `let ang = f32(pos) * INV_FREQ[p]; // f32, as the unfused kernels
    let c = cos(ang); let sn = sin(ang);
    qs[a] = (q0 * c - q1 * sn) * SCALE; qs[b] = (q0 * sn + q1 * c) * SCALE;
    kn[a] = k0 * c - k1 * sn; kn[b] = k0 * sn + k1 * c;`
        : `qs[a] = q0 * SCALE; qs[b] = q1 * SCALE; kn[a] = k0; kn[b] = k1;`
    }
    vn[a] = qkv[${NQ + NKV}u + hk * D + a]; vn[b] = qkv[${NQ + NKV}u + hk * D + b];
  }
  workgroupBarrier();
  if (h % ${G}u == 0u) {
    for (var d = i; d < D; d += ${WG}u) { kc[(pos * ${HKV}u + hk) * D + d] = kn[d]; vc[(pos * ${HKV}u + hk) * D + d] = vn[d]; }
  }
  var qv: array<f32, ${D}>;
  var acc: array<f32, ${D}>;
  for (var d = 0u; d < D; d++) { qv[d] = qs[d]; acc[d] = 0.0; }
  var m = -3.0e38;
  var l = 0.0;
  // keys 0..pos-1 from the cache, key pos (this token) from the workgroup copy
  for (var j = i; j <= pos; j += ${WG}u) {
    var sc = 0.0;
    let ko = (j * ${HKV}u + hk) * D;
    if (j == pos) { for (var d = 0u; d < D; d++) { sc += qv[d] * kn[d]; } }
    else { for (var d = 0u; d < D; d++) { sc += qv[d] * kc[ko + d]; } }
    if (sc > m) {
      let alpha = exp(m - sc);
      l *= alpha;
      for (var d = 0u; d < D; d++) { acc[d] *= alpha; }
      m = sc;
    }
    let pr = exp(sc - m);
    l += pr;
    if (j == pos) { for (var d = 0u; d < D; d++) { acc[d] += pr * vn[d]; } }
    else { for (var d = 0u; d < D; d++) { acc[d] += pr * vc[ko + d]; } }
  }
  wm[i] = m;
  workgroupBarrier();
  var M = -3.0e38;
  for (var x = 0u; x < ${WG}u; x++) { M = max(M, wm[x]); }
  let f = select(0.0, exp(m - M), l > 0.0);
  wl[i] = l * f;
  for (var d = 0u; d < D; d++) { wacc[i * D + d] = acc[d] * f; }
  workgroupBarrier();
  var L = 0.0;
  for (var x = 0u; x < ${WG}u; x++) { L += wl[x]; }
  let inv = 1.0 / L;
  for (var d = i; d < D; d += ${WG}u) {
    var t = 0.0;
    for (var x = 0u; x < ${WG}u; x++) { t += wacc[x * D + d]; }
    out[h * D + d] = t * inv;
  }
}
`;
}
