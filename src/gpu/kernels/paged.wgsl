// Paged KV cache for continuous batching (vLLM-style blocks): RoPE + cache write, and attention of
// a ragged batch of query rows over each row's own sequence.
//
// A forward of the serving loop carries N query rows from several sequences: one row per decoding
// sequence plus the rows of prompt chunks being prefilled. Row r belongs to the sequence whose
// block table is row `rows[r].x` of `tables` and sits at position `rows[r].y`; it sees the keys at
// positions 0..rows[r].y of that sequence (causal), which were written by this or earlier
// forwards. Position p of a sequence lives in block tables[seq, p / BS] at offset p % BS.
//
// Cache layout of one layer (a slab of the pool, see src/model/kvpool.ts): (NB, 2, BS, HKV, D):
// block b holds BS rows of k then BS rows of v.
//
// write: the row count N comes from the uniform, the model's shape from override constants (one
// pipeline per model shape; the kernel has no loops to unroll). attend: see below.
override H: u32;        // query heads
override HKV: u32;      // kv heads (divides H)
override D: u32;        // head dim
override BS: u32;       // positions per block
override MAXB: u32;     // blocks per table row
override Q_STRIDE: u32; // row stride / column offset of q, k, v in their source rows
override Q_OFF: u32;
override K_STRIDE: u32;
override K_OFF: u32;
override V_STRIDE: u32;
override V_OFF: u32;
override ROPE: u32;        // 1 = rotate q and k
override INTERLEAVED: u32; // 1 = llama2.c pairs (2i, 2i+1); 0 = HF rotate_half pairs (i, i + D/2)
override WG: u32 = 64;

const DMAX: u32 = 256u;
const NO_KEYS: f32 = -3.0e38;

struct Params { n: u32, _p0: u32, _p1: u32, _p2: u32 }

fn kv_row(blk: u32, isV: u32, p: u32) -> u32 {
  return ((blk * 2u + isV) * BS + p % BS) * HKV * D;
}

// ---------------------------------------------------------------- write
@group(0) @binding(0) var<storage, read> qsrc: array<f32>;          // (N, Q_STRIDE)
@group(0) @binding(1) var<storage, read> ksrc: array<f32>;          // (N, K_STRIDE)
@group(0) @binding(2) var<storage, read> vsrc: array<f32>;          // (N, V_STRIDE)
@group(0) @binding(3) var<storage, read_write> qout: array<f32>;    // (N, H, D)
@group(0) @binding(4) var<storage, read_write> wcache: array<f32>;  // (NB, 2, BS, HKV, D)
@group(0) @binding(5) var<storage, read> wrows: array<vec2u>;       // (N) (table row, position)
@group(0) @binding(6) var<storage, read> wtables: array<u32>;       // (S, MAXB) block ids
@group(0) @binding(7) var<uniform> wp: Params;
@group(0) @binding(8) var<storage, read> winv_freq: array<f32>;     // (D/2) RoPE inverse frequencies (src/model/rope.ts); any buffer when ROPE = 0

fn pair_index(i: u32) -> vec2u {
  if (INTERLEAVED == 1u) { return vec2u(2u * i, 2u * i + 1u); }
  return vec2u(i, i + D / 2u);
}

// One invocation per (row, head slot, pair i); slots: H q heads, then HKV k, then HKV v.
@compute @workgroup_size(WG)
fn write(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let idx = gid.x + gid.y * nwg.x * WG;
  let P = D / 2u;
  let slots = H + 2u * HKV;
  if (idx >= wp.n * slots * P) { return; }
  let i = idx % P;
  let slot = (idx / P) % slots;
  let r = idx / (P * slots);
  let seq = wrows[r].x;
  let pos = wrows[r].y;
  let blk = wtables[seq * MAXB + pos / BS];
  let pr = pair_index(i);
  // angle = pos · inv_freq[i], in f32 as llama2.c and HF compute it (inv_freq = θ^(−2i/D), scaled)
  var c = 1.0;
  var s = 0.0;
  if (ROPE == 1u) {
    let ang = f32(pos) * winv_freq[i];
    c = cos(ang);
    s = sin(ang);
  }
  if (slot < H) {
    let base = r * Q_STRIDE + Q_OFF + slot * D;
    let x0 = qsrc[base + pr.x];
    let x1 = qsrc[base + pr.y];
    let o = (r * H + slot) * D;
    if (ROPE == 1u) {
      qout[o + pr.x] = x0 * c - x1 * s;
      qout[o + pr.y] = x0 * s + x1 * c;
    } else {
      qout[o + pr.x] = x0;
      qout[o + pr.y] = x1;
    }
  } else if (slot < H + HKV) {
    let hk = slot - H;
    let base = r * K_STRIDE + K_OFF + hk * D;
    let x0 = ksrc[base + pr.x];
    let x1 = ksrc[base + pr.y];
    let o = kv_row(blk, 0u, pos) + hk * D;
    if (ROPE == 1u) {
      wcache[o + pr.x] = x0 * c - x1 * s;
      wcache[o + pr.y] = x0 * s + x1 * c;
    } else {
      wcache[o + pr.x] = x0;
      wcache[o + pr.y] = x1;
    }
  } else {
    let hv = slot - H - HKV;
    let base = r * V_STRIDE + V_OFF + hv * D;
    let o = kv_row(blk, 1u, pos) + hv * D;
    wcache[o + pr.x] = vsrc[base + pr.x];
    wcache[o + pr.y] = vsrc[base + pr.y];
  }
}

// ---------------------------------------------------------------- attend
// One workgroup of WG lanes per (head, row): lane i runs an online softmax over keys i, i+WG, ...
// of the row's sequence; the partial (m, l, acc) are then merged through workgroup memory in a
// fixed order (deterministic, and independent of which other rows share the batch). Sizes come
// from the uniform so that LLVM does not unroll the loops over D at compile time (lavapipe compile
// times explode for D ≥ 32, see ops/attention.ts); for D ≤ 8 the op bakes D in (`let D = DMAX;`).
struct AParams { n: u32, h: u32, hkv: u32, d: u32, bs: u32, maxb: u32, scale: f32, _p: u32 }
@group(0) @binding(0) var<storage, read> aq: array<f32>;            // (N, H, D) roped queries
@group(0) @binding(1) var<storage, read> acache: array<f32>;        // (NB, 2, BS, HKV, D)
@group(0) @binding(2) var<storage, read> arows: array<vec2u>;       // (N) (table row, position)
@group(0) @binding(3) var<storage, read> atables: array<u32>;       // (S, MAXB)
@group(0) @binding(4) var<storage, read_write> aout: array<f32>;    // (N, H, D)
@group(0) @binding(5) var<uniform> ap: AParams;

var<workgroup> wm: array<f32, WG>;
var<workgroup> wl: array<f32, WG>;
var<workgroup> wacc: array<f32, WG * DMAX>;

// grid (H, N)
@compute @workgroup_size(WG)
fn attend(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let D = ap.d;
  let NH = ap.h;
  let NKV = ap.hkv;
  let B = ap.bs;
  let h = wid.x;
  let r = wid.y;
  let i = lid.x;
  let hk = h / (NH / NKV);
  let seq = arows[r].x;
  let len = arows[r].y + 1u;
  let qo = (r * NH + h) * D;
  var qv: array<f32, DMAX>;
  var acc: array<f32, DMAX>;
  for (var d = 0u; d < D; d++) { qv[d] = aq[qo + d] * ap.scale; acc[d] = 0.0; }
  var m = NO_KEYS;
  var l = 0.0;
  for (var j = i; j < len; j += WG) {
    let blk = atables[seq * ap.maxb + j / B];
    let ko = ((blk * 2u) * B + j % B) * NKV * D + hk * D;
    let vo = ko + B * NKV * D;
    var s = 0.0;
    for (var d = 0u; d < D; d++) { s += qv[d] * acache[ko + d]; }
    if (s > m) {
      let alpha = exp(m - s);
      l *= alpha;
      for (var d = 0u; d < D; d++) { acc[d] *= alpha; }
      m = s;
    }
    let p = exp(s - m);
    l += p;
    for (var d = 0u; d < D; d++) { acc[d] += p * acache[vo + d]; }
  }
  wm[i] = m;
  workgroupBarrier();
  var M = NO_KEYS;
  for (var x = 0u; x < WG; x++) { M = max(M, wm[x]); }
  let f = select(0.0, exp(m - M), l > 0.0);
  wl[i] = l * f;
  for (var d = 0u; d < D; d++) { wacc[i * D + d] = acc[d] * f; }
  workgroupBarrier();
  var L = 0.0;
  for (var x = 0u; x < WG; x++) { L += wl[x]; }
  let inv = select(0.0, 1.0 / L, L > 0.0);
  for (var d = i; d < D; d += WG) {
    var s = 0.0;
    for (var x = 0u; x < WG; x++) { s += wacc[x * D + d]; }
    aout[qo + d] = s * inv;
  }
}
