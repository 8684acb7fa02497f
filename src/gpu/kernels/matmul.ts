// WGSL generators for C = alpha·op(A)·op(B) (+ bias) (+ C), f32, batched over workgroup_id.z.
//
// Three families (ops/matmul.ts picks one from the device):
//  - 'sg'    subgroup register tile (CPU drivers with subgroups). One workgroup = one subgroup of SG
//            lanes owning an R × (SG·CN) tile of C; lane l keeps R·CN accumulators. Each lane loads
//            KU consecutive-k values of A for rows p·SG+l and they are shared by subgroupBroadcast,
//            B values are read once per subgroup (lane-contiguous columns).
//  - 'uni'   uniform-load register tile (no subgroups needed; the fallback). LW lanes own an
//            R × (LW·CN) tile; every lane reads the same A address (workgroup-uniform offset: on
//            llvmpipe one scalar load + splat instead of a per-lane gather loop).
//  - 'tiled' workgroup-shared-memory tiles for real GPUs: BM×BN tile of C per workgroup, BK-deep
//            tiles of A and B staged in workgroup memory, TM×TN outputs per invocation.
// Why the register tiles for lavapipe (Mesa 25's llvmpipe compiler): on Mesa 25 a load whose
// offset varies per lane is a scalar loop and fma is mul+add, so the cost is set by loaded
// elements per multiply-add; shared memory does not help there.
//
// Problem sizes and flags (M, N, K, batch strides, ALPHA, ACC, HAS_BIAS) come from a uniform block
// or override constants (SizeMode below); everything that changes the code's structure (tile
// sizes, transposes, vector loads) is baked into the module text, whose name (`matmulKernelName`)
// encodes it.
//
// Logical shapes: A is (M,K) — stored (K,M) when TA; B is (K,N) — stored (N,K) when TB; C (M,N).
// Edges: loads clamp row/column indices into range (the clamped products are discarded) and
// stores are guarded, so any M, N ≥ 1 works; K is split into KU-deep chunks plus a scalar tail.

import { halfWGSL, type HalfKind } from './half.ts';

export type MatmulVariant = 'sg' | 'uni' | 'tiled';

export interface RegTileSpec {
  variant: 'sg' | 'uni';
  transA: boolean;
  transB: boolean;
  /** Rows of C per workgroup (sg: multiple of SG). */
  R: number;
  /** Columns per lane (strided by the lane count). */
  CN: number;
  /** k-steps per loaded chunk (1, 2 or 4). */
  KU: number;
  /** Lanes per workgroup: the subgroup size for 'sg'. */
  LW: number;
  /** Read A / B as vec4 along k (needs K % 4 == 0 and the k axis contiguous). */
  aVec: boolean;
  bVec: boolean;
  /** Each lane owns groups of 4 adjacent columns read/written as vec4 (needs !transB, N % 4 == 0, CN % 4 == 0). */
  nVec: boolean;
  sizes: SizeMode;
  /** B holds 16-bit values packed in u32 (a frozen weight, kernels/half.ts); unset: f32. */
  bHalf?: HalfKind;
}

export interface TiledSpec {
  variant: 'tiled';
  transA: boolean;
  transB: boolean;
  BM: number;
  BN: number;
  BK: number;
  TM: number;
  TN: number;
  sizes: SizeMode;
  bHalf?: HalfKind;
}

export type MatmulSpec = RegTileSpec | TiledSpec;

export function matmulKernelName(s: MatmulSpec): string {
  const t = `${s.transA ? 'T' : 'N'}${s.transB ? 'T' : 'N'}${s.sizes === 'uniform' ? '.u' : ''}${s.bHalf ? `.${s.bHalf}` : ''}`;
  if (s.variant === 'tiled') return `matmul.tiled.${t}.${s.BM}x${s.BN}x${s.BK}.${s.TM}x${s.TN}`;
  return `matmul.${s.variant}.${t}.R${s.R}.CN${s.CN}.KU${s.KU}.LW${s.LW}.${s.aVec ? 'av' : 'as'}${s.bVec ? 'bv' : 'bs'}${s.nVec ? 'nv' : ''}`;
}

// Problem sizes either baked in as override constants ('override': Dawn folds them into the code;
// one compiled pipeline per shape) or read from a uniform block at binding 4 ('uniform': one
// pipeline per tile configuration; lavapipe compiles a pipeline lazily in ~0.5–1.5 s, which matters
// when shapes vary, e.g. decode batches). bench/matmul.ts measures both.
export type SizeMode = 'override' | 'uniform';

function common(sizes: SizeMode): string {
  if (sizes === 'override') {
    return `
override M: u32;          // rows of C
override N: u32;          // columns of C
override K: u32;          // reduction length
override SA: u32 = 0u;    // batch stride of A in elements (0 = broadcast)
override SB: u32 = 0u;    // batch stride of B in elements (0 = broadcast)
override SC: u32 = 0u;    // batch stride of C in elements
override ALPHA: f32 = 1.0;
override ACC: bool = false;      // C += result instead of C = result
override HAS_BIAS: bool = false; // + bias[col] (added once, not scaled by ALPHA)
`;
  }
  return `
// Same meaning as the override constants of the 'override' mode; FLAGS bit 0 = ACC, bit 1 = HAS_BIAS.
struct Sizes { M: u32, N: u32, K: u32, SA: u32, SB: u32, SC: u32, ALPHA: f32, FLAGS: u32 }
@group(0) @binding(4) var<uniform> sizes: Sizes;
`;
}

/** Statements at the top of main() that bring the uniform sizes into scope under the same names. */
function sizeLets(sizes: SizeMode): string {
  return sizes === 'override'
    ? ''
    : '  let M = sizes.M; let N = sizes.N; let K = sizes.K; let SA = sizes.SA; let SB = sizes.SB; let SC = sizes.SC; let ALPHA = sizes.ALPHA;\n' +
        '  let ACC = (sizes.FLAGS & 1u) != 0u; let HAS_BIAS = (sizes.FLAGS & 2u) != 0u;\n';
}

const VT = (n: number) => (n === 1 ? 'f32' : `vec${n}f`);
const COMP = ['x', 'y', 'z', 'w'];
const range = (n: number) => [...Array(n).keys()];

/**
 * B loads over 16-bit packed words: b1(i) is element i, b4(i) elements i..i+3 (i a multiple of 4,
 * so the two words are one aligned pair).
 */
function halfLoads(kind: HalfKind): string {
  return `${halfWGSL(kind)}
fn b1(i: u32) -> f32 { let v = h2(b[i >> 1u]); return select(v.x, v.y, (i & 1u) == 1u); }
fn b4(i: u32) -> vec4f { let j = i >> 1u; return vec4f(h2(b[j]), h2(b[j + 1u])); }`;
}

/** Epilogue for one output element: scale, bias, accumulate, store. */
function store(idx: string, col: string, acc: string): string {
  return `{ let i = ${idx}; var v = ALPHA * ${acc}; if (HAS_BIAS) { v += bias[${col}]; } if (ACC) { v += c[i]; } c[i] = v; }`;
}

export function regTileWGSL(s: RegTileSpec): string {
  const { R, CN, KU, LW, transA: TA, transB: TB } = s;
  const sg = s.variant === 'sg';
  if (sg && R % LW) throw new Error(`sg tile: R=${R} must be a multiple of the subgroup size ${LW}`);
  if (![1, 2, 4].includes(KU)) throw new Error('KU must be 1, 2 or 4');
  const aVec = s.aVec && !TA && KU === 4;
  const bVec = s.bVec && TB && KU === 4;
  const NV = s.nVec && !TB && CN % 4 === 0 ? 4 : 1; // adjacent columns per lane group
  const G = CN / NV; // column groups per lane, LW·NV columns apart
  const P = sg ? R / LW : R; // A-row loads per lane (sg) or per workgroup (uni)
  const rows = range(R);
  const groups = range(G);
  const CT = NV === 4 ? 'vec4f' : 'f32';
  const L: string[] = [];
  L.push(sg ? 'enable subgroups;' : '');
  L.push(common(s.sizes));
  L.push(`@group(0) @binding(0) var<storage, read> a: array<${aVec ? 'vec4f' : 'f32'}>; // (batch|1, ${TA ? 'K, M' : 'M, K'})${aVec ? ' as vec4 along K' : ''}`);
  const bh = s.bHalf;
  if (bh) L.push(`@group(0) @binding(1) var<storage, read> b: array<u32>; // (${TB ? 'N, K' : 'K, N'}) ${bh} packed two per word\n${halfLoads(bh)}`);
  else L.push(`@group(0) @binding(1) var<storage, read> b: array<${bVec || NV === 4 ? 'vec4f' : 'f32'}>; // (batch|1, ${TB ? 'N, K' : 'K, N'})${bVec ? ' as vec4 along K' : NV === 4 ? ' as vec4 along N' : ''}`);
  L.push(`@group(0) @binding(2) var<storage, read_write> c: array<${CT}>; // (batch, M, N)${NV === 4 ? ' as vec4 along N' : ''}`);
  L.push(`@group(0) @binding(3) var<storage, read> bias: array<${CT}>; // (N), or a dummy (4 floats) when !HAS_BIAS`);
  const laneB = sg ? '@builtin(subgroup_invocation_id) lane: u32' : '@builtin(local_invocation_index) lane: u32';
  L.push(`@compute @workgroup_size(${LW})`);
  L.push(`fn main(@builtin(workgroup_id) w: vec3u, ${laneB}) {`);
  L.push(sizeLets(s.sizes));
  L.push(`  let aOff = w.z * SA; let bOff = w.z * SB; let cOff = w.z * SC;`);
  L.push(`  let row0 = w.x * ${R}u;`);
  L.push(`  let col0 = w.y * ${LW * CN}u + lane * ${NV}u;`);
  // Row indices used for A loads (clamped: rows past M compute garbage that is never stored).
  for (const p of range(P)) {
    const r = sg ? `row0 + ${p * LW}u + lane` : `row0 + ${p}u`;
    L.push(`  let ar${p} = min(${r}, M - 1u);`);
  }
  // First column of each group, clamped likewise (N % 4 == 0 when NV = 4, so N - 4 is aligned).
  for (const q of groups) L.push(`  let bc${q} = min(col0 + ${q * LW * NV}u, N - ${NV}u);`);
  for (const r of rows) L.push('  ' + groups.map((q) => `var c${r}_${q} = ${CT}(0.0);`).join(' '));

  // One chunk of `ku` k-steps starting at k (a WGSL expression).
  const chunk = (ku: number, vecOk: boolean): string[] => {
    const o: string[] = [];
    const av = vecOk && aVec && ku === 4;
    const bv = vecOk && bVec && ku === 4;
    // A fragment: ap{p} holds A[ar_p, k..k+ku-1].
    for (const p of range(P)) {
      let e: string;
      if (av) e = `a[(aOff + ar${p} * K + k) / 4u]`;
      else if (TA) e = `${VT(ku)}(${range(ku).map((u) => `a[aOff + (k + ${u}u) * M + ar${p}]`).join(', ')})`;
      else e = `${VT(ku)}(${range(ku).map((u) => `a[aOff + ar${p} * K + k + ${u}u]`).join(', ')})`;
      o.push(`    let ap${p} = ${e};`);
    }
    // B fragment: b{u}_{q} = B[k+u, group q's column(s)].
    for (const q of groups) {
      if (bv) {
        o.push(bh ? `    let bq${q} = b4(bOff + bc${q} * K + k);` : `    let bq${q} = b[(bOff + bc${q} * K + k) / 4u];`);
        for (const u of range(ku)) o.push(`    let b${u}_${q} = bq${q}.${COMP[u]};`);
      } else {
        for (const u of range(ku)) {
          let e: string;
          if (NV === 4) e = bh ? `b4(bOff + (k + ${u}u) * N + bc${q})` : `b[(bOff + (k + ${u}u) * N + bc${q}) / 4u]`;
          else if (bh) e = TB ? `b1(bOff + bc${q} * K + k + ${u}u)` : `b1(bOff + (k + ${u}u) * N + bc${q})`;
          else e = TB ? `b[bOff + bc${q} * K + k + ${u}u]` : `b[bOff + (k + ${u}u) * N + bc${q}]`;
          o.push(`    let b${u}_${q} = ${e};`);
        }
      }
    }
    for (const r of rows) {
      const src = sg ? `subgroupBroadcast(ap${Math.floor(r / LW)}, ${r % LW}u)` : `ap${r}`;
      const comp = (u: number) => {
        const x = ku === 1 ? 'ar' : `ar.${COMP[u]}`;
        return NV === 4 ? `vec4f(${x})` : x;
      };
      const fmas = range(ku)
        .map((u) => groups.map((q) => `c${r}_${q} = fma(${comp(u)}, b${u}_${q}, c${r}_${q});`).join(' '))
        .join(' ');
      o.push(`    { let ar = ${src}; ${fmas} }`);
    }
    return o;
  };
  if (KU > 1) {
    L.push(`  for (var k = 0u; k < K / ${KU}u * ${KU}u; k += ${KU}u) {`);
    L.push(...chunk(KU, true));
    L.push('  }');
  }
  // Scalar tail over K % KU. Vector-typed A/B bindings along K imply K % 4 == 0 (the planner guarantees it).
  if (KU === 1 || (!aVec && !bVec)) {
    L.push(`  for (var k = K / ${KU}u * ${KU}u; k < K; k++) {`);
    L.push(...chunk(1, false));
    L.push('  }');
  }
  // Epilogue: scale, bias, accumulate, store (a vec4 group is entirely in or out since N % 4 == 0).
  for (const r of rows) {
    L.push(`  if (row0 + ${r}u < M) {`);
    for (const q of groups) {
      const col = `col0 + ${q * LW * NV}u`;
      L.push(
        `    if (${col} < N) { let i = (cOff + (row0 + ${r}u) * N + ${col}) / ${NV}u; var v = ALPHA * c${r}_${q}; ` +
          `if (HAS_BIAS) { v += bias[(${col}) / ${NV}u]; } if (ACC) { v += c[i]; } c[i] = v; }`,
      );
    }
    L.push('  }');
  }
  L.push('}');
  return L.join('\n');
}

export function tiledWGSL(s: TiledSpec): string {
  const { BM, BN, BK, TM, TN, transA: TA, transB: TB } = s;
  const TX = BN / TN; // invocations along columns
  const TY = BM / TM; // invocations along rows
  const NT = TX * TY;
  if (!Number.isInteger(TX) || !Number.isInteger(TY)) throw new Error('tiled: BM/TM and BN/TN must be integers');
  const idx = (i: number, j: number) => i * TN + j;
  return `${common(s.sizes)}
@group(0) @binding(0) var<storage, read> a: array<f32>; // (batch|1, ${TA ? 'K, M' : 'M, K'})
${s.bHalf ? `@group(0) @binding(1) var<storage, read> b: array<u32>; // (${TB ? 'N, K' : 'K, N'}) ${s.bHalf} packed two per word\n${halfLoads(s.bHalf)}` : `@group(0) @binding(1) var<storage, read> b: array<f32>; // (batch|1, ${TB ? 'N, K' : 'K, N'})`}
@group(0) @binding(2) var<storage, read_write> c: array<f32>; // (batch, M, N)
@group(0) @binding(3) var<storage, read> bias: array<f32>; // (N), or a dummy when !HAS_BIAS

var<workgroup> As: array<f32, ${BK * BM}>; // [kk][m] tile of A
var<workgroup> Bs: array<f32, ${BK * BN}>; // [kk][n] tile of B

@compute @workgroup_size(${TX}, ${TY})
fn main(@builtin(workgroup_id) w: vec3u, @builtin(local_invocation_id) l: vec3u, @builtin(local_invocation_index) li: u32) {
${sizeLets(s.sizes)}  let aOff = w.z * SA; let bOff = w.z * SB; let cOff = w.z * SC;
  let m0 = w.y * ${BM}u;
  let n0 = w.x * ${BN}u;
  var acc: array<f32, ${TM * TN}>;
  for (var k0 = 0u; k0 < K; k0 += ${BK}u) {
    // Cooperative loads; the fastest-varying index follows the contiguous axis in memory so that
    // neighbouring invocations read neighbouring addresses. Out-of-range elements load as 0.
    for (var i = li; i < ${BK * BM}u; i += ${NT}u) {
      ${TA ? `let kk = i / ${BM}u; let mm = i % ${BM}u;` : `let mm = i / ${BK}u; let kk = i % ${BK}u;`}
      let gm = m0 + mm; let gk = k0 + kk;
      let inb = gm < M && gk < K;
      let src = ${TA ? 'min(gk, K - 1u) * M + min(gm, M - 1u)' : 'min(gm, M - 1u) * K + min(gk, K - 1u)'};
      As[kk * ${BM}u + mm] = select(0.0, a[aOff + src], inb);
    }
    for (var i = li; i < ${BK * BN}u; i += ${NT}u) {
      ${TB ? `let nn = i / ${BK}u; let kk = i % ${BK}u;` : `let kk = i / ${BN}u; let nn = i % ${BN}u;`}
      let gn = n0 + nn; let gk = k0 + kk;
      let inb = gn < N && gk < K;
      let src = ${TB ? 'min(gn, N - 1u) * K + min(gk, K - 1u)' : 'min(gk, K - 1u) * N + min(gn, N - 1u)'};
      Bs[kk * ${BN}u + nn] = select(0.0, ${s.bHalf ? 'b1(bOff + src)' : 'b[bOff + src]'}, inb);
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${BK}u; kk++) {
${range(TM).map((i) => `      let a${i} = As[kk * ${BM}u + l.y * ${TM}u + ${i}u];`).join('\n')}
${range(TN).map((j) => `      let b${j} = Bs[kk * ${BN}u + l.x + ${j * TX}u];`).join('\n')}
${range(TM)
  .map((i) => '      ' + range(TN).map((j) => `acc[${idx(i, j)}] = fma(a${i}, b${j}, acc[${idx(i, j)}]);`).join(' '))
  .join('\n')}
    }
    workgroupBarrier();
  }
  // Rows are contiguous per invocation (l.y·TM + i); columns strided by TX so that stores coalesce.
${range(TM)
  .map(
    (i) =>
      `  { let row = m0 + l.y * ${TM}u + ${i}u; if (row < M) {\n` +
      range(TN)
        .map((j) => `    { let col = n0 + l.x + ${j * TX}u; if (col < N) ${store('cOff + row * N + col', 'col', `acc[${idx(i, j)}]`)} }`)
        .join('\n') +
      '\n  } }',
  )
  .join('\n')}
}`;
}

export function matmulWGSL(s: MatmulSpec): string {
  return s.variant === 'tiled' ? tiledWGSL(s) : regTileWGSL(s);
}

/** Column sums: out[j] (+)= Σ_i x[i, j] for x (ROWS, COLS). One invocation per column. */
export const COLSUM_WGSL = `
override ROWS: u32;
override COLS: u32;
override ACC: bool = false; // out += sums instead of out = sums
override WG: u32 = 64;
@group(0) @binding(0) var<storage, read> x: array<f32>;        // (ROWS, COLS)
@group(0) @binding(1) var<storage, read_write> out: array<f32>; // (COLS)
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = gid.x + gid.y * nwg.x * WG;
  if (j >= COLS) { return; }
  var s = 0.0;
  for (var i = 0u; i < ROWS; i++) { s += x[i * COLS + j]; }
  if (ACC) { s += out[j]; }
  out[j] = s;
}
`;

/**
 * y = xᵀ for x (ROWS, COLS), both multiples of 4, one 4×4 block per invocation: four vec4 row loads,
 * a register transpose, four vec4 stores. Lets x·Wᵀ run on the faster untransposed register tile
 * (lavapipe: the vec4-along-N B loads of 'nVec' are lane-contiguous; vec4-along-K loads of Wᵀ are not).
 */
export const TRANSPOSE4_WGSL = `
struct Dims { ROWS: u32, COLS: u32 }
override WG: u32 = 64;
@group(0) @binding(0) var<storage, read> x: array<vec4f>;        // (ROWS, COLS) as vec4 along COLS
@group(0) @binding(1) var<storage, read_write> y: array<vec4f>;  // (COLS, ROWS) as vec4 along ROWS
@group(0) @binding(2) var<uniform> d: Dims;
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let t = gid.x + gid.y * nwg.x * WG;
  let bc = d.COLS / 4u;
  let br = d.ROWS / 4u;
  if (t >= br * bc) { return; }
  let rb = t / bc; // block row (rows 4rb..4rb+3)
  let cb = t % bc; // block column (cols 4cb..4cb+3)
  let a0 = x[(4u * rb + 0u) * bc + cb];
  let a1 = x[(4u * rb + 1u) * bc + cb];
  let a2 = x[(4u * rb + 2u) * bc + cb];
  let a3 = x[(4u * rb + 3u) * bc + cb];
  y[(4u * cb + 0u) * br + rb] = vec4f(a0.x, a1.x, a2.x, a3.x);
  y[(4u * cb + 1u) * br + rb] = vec4f(a0.y, a1.y, a2.y, a3.y);
  y[(4u * cb + 2u) * br + rb] = vec4f(a0.z, a1.z, a2.z, a3.z);
  y[(4u * cb + 3u) * br + rb] = vec4f(a0.w, a1.w, a2.w, a3.w);
}
`;

/** TRANSPOSE4_WGSL reading a 16-bit (f16/bf16) x packed two per word, writing f32 y. */
export function transpose4HalfWGSL(kind: HalfKind): string {
  const src = TRANSPOSE4_WGSL.replace(
    '@group(0) @binding(0) var<storage, read> x: array<vec4f>;        // (ROWS, COLS) as vec4 along COLS',
    `@group(0) @binding(0) var<storage, read> x: array<vec2<u32>>;    // (ROWS, COLS) ${kind}, 4 values per vec2 of words\n${halfWGSL(kind)}\nfn x4(i: u32) -> vec4f { let p = x[i]; return vec4f(h2(p.x), h2(p.y)); }`,
  ).replace(/let a(\d) = x\[([^\]]+)\];/g, 'let a$1 = x4($2);');
  if (!src.includes('fn x4') || /let a\d = x\[/.test(src)) throw new Error('transpose4HalfWGSL: template changed');
  return src;
}
