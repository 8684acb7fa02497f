// Softmax cross-entropy with ignored targets (−1) and per-token log-probs, over (N, V) logits.
//
// One workgroup per row (a CPU thread on lavapipe): lanes stride over the vocabulary, max and
// sum-of-exp are combined by a fixed tree, so every result is bit-reproducible. Logits larger than
// one storage binding (128 MiB on lavapipe) are processed in row chunks: the host binds the byte
// range of rows [row_start, row_start + rows) and the kernels index the chunk from 0.
override V: u32;        // vocabulary size (row length)
override WG: u32 = 64;  // lanes per workgroup, a power of two

// chunk start, chunk rows, total rows, and a quiet-NaN bit pattern: WGSL rejects a NaN constant,
// so the NaN reported for an out-of-range target is made at run time from the host's bits.
struct Params { row_start: u32, rows: u32, n: u32, nan_bits: u32 }

var<workgroup> red: array<f32, WG>;
var<workgroup> tgt: i32; // the row's target, shared so that branching on it is workgroup-uniform

fn wgMax(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn wgSum(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

const NEG_BIG: f32 = -0x1.fffffep+127f; // the lowest finite f32: max() starts here

// ---------------------------------------------------------------- count of kept targets
@group(0) @binding(0) var<storage, read> c_t: array<i32>;            // (N)
@group(0) @binding(1) var<storage, read_write> c_count: array<f32>;  // (1)
@group(0) @binding(2) var<uniform> c_p: Params; // (row_start, rows, n, nan_bits)

// One workgroup. Counts are integers < 2^24, so the f32 sum is exact.
@compute @workgroup_size(WG)
fn count_kept(@builtin(local_invocation_index) lid: u32) {
  var k = 0.0;
  for (var n = lid; n < c_p.n; n += WG) { if (c_t[n] != -1) { k += 1.0; } }
  let tot = wgSum(lid, k);
  if (lid == 0u) { c_count[0] = tot; }
}

// ---------------------------------------------------------------- log-prob of the target
@group(0) @binding(0) var<storage, read> lp_logits: array<f32>;      // (rows, V) chunk of (N, V)
@group(0) @binding(1) var<storage, read> lp_t: array<i32>;           // (N)
@group(0) @binding(2) var<storage, read_write> lp_out: array<f32>;   // (N) log p(target); 0 if ignored
@group(0) @binding(3) var<uniform> lp_p: Params; // (row_start, rows, n, nan_bits)

// log p[t] = l[t] − (max + log Σ exp(l − max)); NaN for a target outside [0, V) other than −1.
@compute @workgroup_size(WG)
fn logprob_rows(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wid.x + wid.y * nwg.x;
  if (r >= lp_p.rows) { return; } // uniform per workgroup
  let base = r * V;
  var m = NEG_BIG;
  for (var v = lid; v < V; v += WG) { m = max(m, lp_logits[base + v]); }
  m = wgMax(lid, m);
  var s = 0.0;
  for (var v = lid; v < V; v += WG) { s += exp(lp_logits[base + v] - m); }
  let lse = m + log(wgSum(lid, s));
  if (lid == 0u) {
    let n = lp_p.row_start + r;
    let t = lp_t[n];
    var o = 0.0;
    if (t != -1) { o = select(bitcast<f32>(lp_p.nan_bits), lp_logits[base + u32(select(0, t, t >= 0 && u32(t) < V))] - lse, t >= 0 && u32(t) < V); }
    lp_out[n] = o;
  }
}

// ---------------------------------------------------------------- log-probs and dLogits
@group(0) @binding(0) var<storage, read> ce_logits: array<f32>;      // (rows, V) chunk of (N, V)
@group(0) @binding(1) var<storage, read> ce_t: array<i32>;           // (N)
@group(0) @binding(2) var<storage, read> ce_count: array<f32>;       // (1) kept targets
@group(0) @binding(3) var<storage, read_write> ce_lp: array<f32>;    // (N) log p(target); 0 if ignored
@group(0) @binding(4) var<storage, read_write> ce_d: array<f32>;     // (rows, V) chunk of dLogits (N, V)
@group(0) @binding(5) var<uniform> ce_p: Params; // (row_start, rows, n, nan_bits)

// dLogits = (softmax − onehot(t)) / count for kept rows, 0 for ignored rows.
@compute @workgroup_size(WG)
fn ce_rows(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wid.x + wid.y * nwg.x;
  if (r >= ce_p.rows) { return; }
  let base = r * V;
  let n = ce_p.row_start + r;
  if (lid == 0u) { tgt = ce_t[n]; }
  let t = workgroupUniformLoad(&tgt); // uniform: the early return below may precede barriers
  if (t == -1) {
    for (var v = lid; v < V; v += WG) { ce_d[base + v] = 0.0; }
    if (lid == 0u) { ce_lp[n] = 0.0; }
    return;
  }
  var m = NEG_BIG;
  for (var v = lid; v < V; v += WG) { m = max(m, ce_logits[base + v]); }
  m = wgMax(lid, m);
  var s = 0.0;
  for (var v = lid; v < V; v += WG) { s += exp(ce_logits[base + v] - m); }
  let lse = m + log(wgSum(lid, s));
  let valid = t >= 0 && u32(t) < V;
  if (lid == 0u) { ce_lp[n] = select(bitcast<f32>(ce_p.nan_bits), ce_logits[base + u32(select(0, t, valid))] - lse, valid); }
  let inv = 1.0 / ce_count[0];
  for (var v = lid; v < V; v += WG) {
    let p = exp(ce_logits[base + v] - lse);
    ce_d[base + v] = (p - select(0.0, 1.0, i32(v) == t)) * inv;
  }
}

// Same, writing dLogits over the logits (saves an (N, V) buffer in training).
@group(0) @binding(0) var<storage, read_write> ci_logits: array<f32>; // (rows, V) chunk: logits in, dLogits out
@group(0) @binding(1) var<storage, read> ci_t: array<i32>;            // (N)
@group(0) @binding(2) var<storage, read> ci_count: array<f32>;        // (1)
@group(0) @binding(3) var<storage, read_write> ci_lp: array<f32>;     // (N)
@group(0) @binding(4) var<uniform> ci_p: Params; // (row_start, rows, n, nan_bits)

@compute @workgroup_size(WG)
fn ce_rows_inplace(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wid.x + wid.y * nwg.x;
  if (r >= ci_p.rows) { return; }
  let base = r * V;
  let n = ci_p.row_start + r;
  if (lid == 0u) { tgt = ci_t[n]; }
  let t = workgroupUniformLoad(&tgt); // uniform: the early return below may precede barriers
  if (t == -1) {
    for (var v = lid; v < V; v += WG) { ci_logits[base + v] = 0.0; }
    if (lid == 0u) { ci_lp[n] = 0.0; }
    return;
  }
  var m = NEG_BIG;
  for (var v = lid; v < V; v += WG) { m = max(m, ci_logits[base + v]); }
  m = wgMax(lid, m);
  var s = 0.0;
  for (var v = lid; v < V; v += WG) { s += exp(ci_logits[base + v] - m); }
  let lse = m + log(wgSum(lid, s));
  let valid = t >= 0 && u32(t) < V;
  // Every lane must read l[t] before any lane overwrites it.
  let lt = select(0.0, ci_logits[base + u32(select(0, t, valid))], valid);
  workgroupBarrier();
  if (lid == 0u) { ci_lp[n] = select(bitcast<f32>(ci_p.nan_bits), lt - lse, valid); }
  let inv = 1.0 / ci_count[0];
  for (var v = lid; v < V; v += WG) {
    let p = exp(ci_logits[base + v] - lse);
    ci_logits[base + v] = (p - select(0.0, 1.0, i32(v) == t)) * inv;
  }
}

// ---------------------------------------------------------------- lane-per-row vec4 variants
// For CPU drivers (lavapipe), when V % 4 == 0: one lane per row, vec4 loads, no barriers
// (~2.8× faster there at V = 32000: loads are per-lane scalar and barriers are costly). Each lane
// keeps 4 partial max/sum lanes, combined in a fixed order, so results stay bit-reproducible.
override V4: u32 = V / 4u;

@group(0) @binding(0) var<storage, read> lp4_logits: array<vec4f>;       // (rows, V/4) chunk
@group(0) @binding(0) var<storage, read> ce4_logits: array<vec4f>;       // (rows, V/4) chunk
@group(0) @binding(4) var<storage, read_write> ce4_d: array<vec4f>;      // (rows, V/4) chunk of dLogits
@group(0) @binding(0) var<storage, read_write> ci4_logits: array<vec4f>; // (rows, V/4) chunk: logits in, dLogits out

fn hmax(v: vec4f) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }
fn hsum(v: vec4f) -> f32 { return (v.x + v.y) + (v.z + v.w); }
fn onehot4(v: u32, t: i32) -> vec4f { return select(vec4f(0.0), vec4f(1.0), vec4i(vec4u(4u * v) + vec4u(0u, 1u, 2u, 3u)) == vec4i(t)); }

@compute @workgroup_size(WG)
fn logprob_rows_lane4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = gid.x + gid.y * nwg.x * WG;
  if (r >= lp_p.rows) { return; }
  let base = r * V4;
  var m4 = vec4f(NEG_BIG);
  for (var v = 0u; v < V4; v++) { m4 = max(m4, lp4_logits[base + v]); }
  let m = hmax(m4);
  var s4 = vec4f(0.0);
  for (var v = 0u; v < V4; v++) { s4 += exp(lp4_logits[base + v] - m); }
  let lse = m + log(hsum(s4));
  let n = lp_p.row_start + r;
  let t = lp_t[n];
  var o = 0.0;
  if (t != -1) {
    let valid = t >= 0 && u32(t) < V;
    let tt = u32(select(0, t, valid));
    o = select(bitcast<f32>(lp_p.nan_bits), lp4_logits[base + tt / 4u][tt % 4u] - lse, valid);
  }
  lp_out[n] = o;
}

@compute @workgroup_size(WG)
fn ce_rows_lane4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = gid.x + gid.y * nwg.x * WG;
  if (r >= ce_p.rows) { return; }
  let base = r * V4;
  let n = ce_p.row_start + r;
  let t = ce_t[n];
  if (t == -1) {
    for (var v = 0u; v < V4; v++) { ce4_d[base + v] = vec4f(0.0); }
    ce_lp[n] = 0.0;
    return;
  }
  var m4 = vec4f(NEG_BIG);
  for (var v = 0u; v < V4; v++) { m4 = max(m4, ce4_logits[base + v]); }
  let m = hmax(m4);
  var s4 = vec4f(0.0);
  for (var v = 0u; v < V4; v++) { s4 += exp(ce4_logits[base + v] - m); }
  let lse = m + log(hsum(s4));
  let valid = t >= 0 && u32(t) < V;
  let tt = u32(select(0, t, valid));
  ce_lp[n] = select(bitcast<f32>(ce_p.nan_bits), ce4_logits[base + tt / 4u][tt % 4u] - lse, valid);
  let inv = 1.0 / ce_count[0];
  for (var v = 0u; v < V4; v++) {
    ce4_d[base + v] = (exp(ce4_logits[base + v] - lse) - onehot4(v, t)) * inv;
  }
}

@compute @workgroup_size(WG)
fn ce_rows_inplace_lane4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = gid.x + gid.y * nwg.x * WG;
  if (r >= ci_p.rows) { return; }
  let base = r * V4;
  let n = ci_p.row_start + r;
  let t = ci_t[n];
  if (t == -1) {
    for (var v = 0u; v < V4; v++) { ci4_logits[base + v] = vec4f(0.0); }
    ci_lp[n] = 0.0;
    return;
  }
  var m4 = vec4f(NEG_BIG);
  for (var v = 0u; v < V4; v++) { m4 = max(m4, ci4_logits[base + v]); }
  let m = hmax(m4);
  var s4 = vec4f(0.0);
  for (var v = 0u; v < V4; v++) { s4 += exp(ci4_logits[base + v] - m); }
  let lse = m + log(hsum(s4));
  let valid = t >= 0 && u32(t) < V;
  let tt = u32(select(0, t, valid));
  ci_lp[n] = select(bitcast<f32>(ci_p.nan_bits), ci4_logits[base + tt / 4u][tt % 4u] - lse, valid); // read before the row is overwritten
  let inv = 1.0 / ci_count[0];
  for (var v = 0u; v < V4; v++) {
    ci4_logits[base + v] = (exp(ci4_logits[base + v] - lse) - onehot4(v, t)) * inv;
  }
}

// ---------------------------------------------------------------- mean loss
@group(0) @binding(0) var<storage, read> m_lp: array<f32>;           // (N)
@group(0) @binding(1) var<storage, read> m_count: array<f32>;        // (1)
@group(0) @binding(2) var<storage, read_write> m_loss: array<f32>;   // (1)
@group(0) @binding(3) var<uniform> m_p: Params; // (row_start, rows, n, nan_bits)

// One workgroup, fixed order: loss = −Σ lp / count (0 when nothing is kept).
@compute @workgroup_size(WG)
fn ce_mean(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var n = lid; n < m_p.n; n += WG) { s += m_lp[n]; }
  let tot = wgSum(lid, s);
  if (lid == 0u) {
    let k = m_count[0];
    m_loss[0] = select(-tot / k, 0.0, k == 0.0);
  }
}
