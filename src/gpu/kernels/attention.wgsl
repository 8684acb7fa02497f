// Causal grouped-query attention (flash-style: never materialises the T×T score matrix).
//
// Layouts: q, out, dout, dq (B,T,H,D); k, v, dk, dv (B,T,HKV,D); lse, delta (B,H,T); mask (B,T) u32.
// Query head h reads kv head h / (H/HKV). Scores are s = SCALE·q·k; key j is visible to query t
// when j <= t and (not MASKED or mask[b,j] != 0). A row with no visible key outputs 0 and stores
// lse = NO_KEYS (it then contributes nothing to any gradient: no key is visible to it).
//
// Work split (chosen for lavapipe, where one workgroup is one CPU thread running 8 SIMD lanes, and
// fine on real GPUs): one invocation per query row (forward, dq) or per key row (dk/dv), the row's
// q / accumulators in private arrays (DMAX floats). Workgroups of WG consecutive rows of one
// (b, head) so all lanes of a workgroup read the same k/v (forward, dq) or q/dout (dk/dv) rows.
// dk/dv of a kv head are summed over its query heads in a fixed order inside one invocation:
// deterministic, no atomics.
override B: u32;
override T: u32;
override H: u32;
override HKV: u32;
override D: u32;
override SCALE: f32;
override MASKED: bool = false;
override WG: u32 = 64;

const DMAX: u32 = 256u;
const NO_KEYS: f32 = -3.0e38;

// ---------------------------------------------------------------- forward
@group(0) @binding(0) var<storage, read> q: array<f32>;          // (B,T,H,D)
@group(0) @binding(1) var<storage, read> k: array<f32>;          // (B,T,HKV,D)
@group(0) @binding(2) var<storage, read> v: array<f32>;          // (B,T,HKV,D)
@group(0) @binding(3) var<storage, read> mask: array<u32>;       // (B,T) 0 = padding key (unread unless MASKED)
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // (B,T,H,D)
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;  // (B,H,T) log Σ_j exp(s_tj)

// grid (ceil(T/WG), H, B)
@compute @workgroup_size(WG)
fn forward(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let t = wid.x * WG + lid.x;
  let h = wid.y;
  let b = wid.z;
  if (t >= T) { return; }
  let hk = h / (H / HKV);
  let qo = ((b * T + t) * H + h) * D;
  var qv: array<f32, DMAX>;
  var acc: array<f32, DMAX>;
  for (var d = 0u; d < D; d++) { qv[d] = q[qo + d] * SCALE; acc[d] = 0.0; }
  var m = NO_KEYS; // running max of the scores seen
  var l = 0.0;     // running Σ exp(s - m)
  for (var j = 0u; j <= t; j++) {
    if (MASKED && mask[b * T + j] == 0u) { continue; }
    let ko = ((b * T + j) * HKV + hk) * D;
    var s = 0.0;
    for (var d = 0u; d < D; d++) { s += qv[d] * k[ko + d]; }
    if (s > m) { // new max: rescale what we have (online softmax)
      let alpha = exp(m - s);
      l *= alpha;
      for (var d = 0u; d < D; d++) { acc[d] *= alpha; }
      m = s;
    }
    let p = exp(s - m);
    l += p;
    for (var d = 0u; d < D; d++) { acc[d] += p * v[ko + d]; }
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  for (var d = 0u; d < D; d++) { out[qo + d] = acc[d] * inv; }
  lse[(b * H + h) * T + t] = select(NO_KEYS, m + log(l), l > 0.0);
}

// ---------------------------------------------------------------- backward
@group(0) @binding(0) var<storage, read> dout_d: array<f32>;         // (B,T,H,D)
@group(0) @binding(1) var<storage, read> out_d: array<f32>;          // (B,T,H,D) forward output
@group(0) @binding(2) var<storage, read_write> delta_d: array<f32>;  // (B,H,T) Σ_d dout·out

// delta_t = Σ_d dO_td O_td (= Σ_j P_tj dP_tj, the softmax-backward row term). grid (ceil(T/WG), H, B)
@compute @workgroup_size(WG)
fn delta(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let t = wid.x * WG + lid.x;
  let h = wid.y;
  let b = wid.z;
  if (t >= T) { return; }
  let o = ((b * T + t) * H + h) * D;
  var s = 0.0;
  for (var d = 0u; d < D; d++) { s += dout_d[o + d] * out_d[o + d]; }
  delta_d[(b * H + h) * T + t] = s;
}

@group(0) @binding(0) var<storage, read> bq: array<f32>;            // (B,T,H,D)
@group(0) @binding(1) var<storage, read> bk: array<f32>;            // (B,T,HKV,D)
@group(0) @binding(2) var<storage, read> bv: array<f32>;            // (B,T,HKV,D)
@group(0) @binding(3) var<storage, read> bmask: array<u32>;         // (B,T)
@group(0) @binding(4) var<storage, read> bdout: array<f32>;         // (B,T,H,D)
@group(0) @binding(5) var<storage, read> blse: array<f32>;          // (B,H,T)
@group(0) @binding(6) var<storage, read> bdelta: array<f32>;        // (B,H,T)
@group(0) @binding(7) var<storage, read_write> bgrad: array<f32>;   // dq (B,T,H,D)
@group(0) @binding(8) var<storage, read_write> bgrad2: array<f32>;  // dv (B,T,HKV,D) (dkdv only; bgrad = dk)

// dq_t = SCALE Σ_j P_tj (dP_tj − delta_t) k_j, P recomputed as exp(s − lse). grid (ceil(T/WG), H, B)
@compute @workgroup_size(WG)
fn backward_dq(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let t = wid.x * WG + lid.x;
  let h = wid.y;
  let b = wid.z;
  if (t >= T) { return; }
  let hk = h / (H / HKV);
  let qo = ((b * T + t) * H + h) * D;
  var qv: array<f32, DMAX>;
  var dov: array<f32, DMAX>;
  var acc: array<f32, DMAX>;
  for (var d = 0u; d < D; d++) { qv[d] = bq[qo + d] * SCALE; dov[d] = bdout[qo + d]; acc[d] = 0.0; }
  let L = blse[(b * H + h) * T + t];
  let dl = bdelta[(b * H + h) * T + t];
  for (var j = 0u; j <= t; j++) {
    if (MASKED && bmask[b * T + j] == 0u) { continue; }
    let ko = ((b * T + j) * HKV + hk) * D;
    var s = 0.0;
    var dp = 0.0;
    for (var d = 0u; d < D; d++) { s += qv[d] * bk[ko + d]; dp += dov[d] * bv[ko + d]; }
    let ds = exp(s - L) * (dp - dl);
    for (var d = 0u; d < D; d++) { acc[d] += ds * bk[ko + d]; }
  }
  for (var d = 0u; d < D; d++) { bgrad[qo + d] = acc[d] * SCALE; }
}

// One invocation per key row (b, kv head, j): dv_j = Σ_{h in group} Σ_{t>=j} P_tj dO_t,
// dk_j = SCALE Σ_h Σ_t P_tj (dP_tj − delta_t) q_t. grid (ceil(T/WG), HKV, B)
@compute @workgroup_size(WG)
fn backward_dkdv(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let j = wid.x * WG + lid.x;
  let hk = wid.y;
  let b = wid.z;
  if (j >= T) { return; }
  let G = H / HKV;
  let ko = ((b * T + j) * HKV + hk) * D;
  var kv: array<f32, DMAX>;
  var vv: array<f32, DMAX>;
  var dk: array<f32, DMAX>;
  var dv: array<f32, DMAX>;
  for (var d = 0u; d < D; d++) { kv[d] = bk[ko + d] * SCALE; vv[d] = bv[ko + d]; dk[d] = 0.0; dv[d] = 0.0; }
  if (!MASKED || bmask[b * T + j] != 0u) {
    for (var g = 0u; g < G; g++) {
      let h = hk * G + g;
      for (var t = j; t < T; t++) {
        let qo = ((b * T + t) * H + h) * D;
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < D; d++) { s += kv[d] * bq[qo + d]; dp += vv[d] * bdout[qo + d]; }
        let r = (b * H + h) * T + t;
        let p = exp(s - blse[r]);
        let ds = p * (dp - bdelta[r]);
        for (var d = 0u; d < D; d++) { dv[d] += p * bdout[qo + d]; dk[d] += ds * bq[qo + d]; }
      }
    }
  }
  for (var d = 0u; d < D; d++) { bgrad[ko + d] = dk[d] * SCALE; bgrad2[ko + d] = dv[d]; }
}

// ---------------------------------------------------------------- decode
// One new query per sequence against a KV cache; `pos` (valid cache rows) comes from a uniform so
// one pipeline serves every step. One workgroup of WG lanes per (b, h): lane i runs an online
// softmax over keys i, i+WG, ...; the partial (m, l, acc) are then merged through workgroup memory.
override MAXT: u32;

struct DecodeParams { pos: u32, }

@group(0) @binding(0) var<storage, read> dq_q: array<f32>;          // (B,1,H,D)
@group(0) @binding(1) var<storage, read> dk_cache: array<f32>;      // (B,MAXT,HKV,D)
@group(0) @binding(2) var<storage, read> dv_cache: array<f32>;      // (B,MAXT,HKV,D)
@group(0) @binding(3) var<storage, read> dmask: array<u32>;         // (B,MAXT) (unread unless MASKED)
@group(0) @binding(4) var<storage, read_write> dout: array<f32>;    // (B,1,H,D)
@group(0) @binding(5) var<uniform> dparams: DecodeParams;

var<workgroup> wm: array<f32, WG>;       // per-lane running max
var<workgroup> wl: array<f32, WG>;       // per-lane Σ exp(s − m)
var<workgroup> wacc: array<f32, WG * D>; // per-lane unnormalised outputs, rescaled to the global max

// grid (H, B)
@compute @workgroup_size(WG)
fn decode(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let h = wid.x;
  let b = wid.y;
  let i = lid.x;
  let hk = h / (H / HKV);
  let pos = min(dparams.pos, MAXT);
  let qo = (b * H + h) * D;
  var qv: array<f32, DMAX>;
  var acc: array<f32, DMAX>;
  for (var d = 0u; d < D; d++) { qv[d] = dq_q[qo + d] * SCALE; acc[d] = 0.0; }
  var m = NO_KEYS;
  var l = 0.0;
  for (var j = i; j < pos; j += WG) {
    if (MASKED && dmask[b * MAXT + j] == 0u) { continue; }
    let ko = ((b * MAXT + j) * HKV + hk) * D;
    var s = 0.0;
    for (var d = 0u; d < D; d++) { s += qv[d] * dk_cache[ko + d]; }
    if (s > m) {
      let alpha = exp(m - s);
      l *= alpha;
      for (var d = 0u; d < D; d++) { acc[d] *= alpha; }
      m = s;
    }
    let p = exp(s - m);
    l += p;
    for (var d = 0u; d < D; d++) { acc[d] += p * dv_cache[ko + d]; }
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
    dout[qo + d] = s * inv;
  }
}
