// RMSNorm and LayerNorm over the last dimension, plus deterministic column sums (dw, db, bias grads).
//
// Row kernels: one workgroup per row (one CPU thread on lavapipe); lanes stride over the row so
// neighbouring lanes touch neighbouring addresses, and row statistics are combined by a fixed
// shared-memory tree, so results do not depend on scheduling (bit-reproducible).
// Column sums: two stages with a fixed split (ROWS rows per block), again order-fixed.
override C: u32;          // row length
// The row count N comes in a uniform: batch × sequence changes between calls, and every new
// override value costs a shader compile (~0.5 s on lavapipe), while C is fixed per model.
struct Params { n: u32 }
override WG: u32 = 64;    // lanes per workgroup, a power of two
override EPS: f32 = 1e-5;
override ROWS: u32 = 64;  // rows per column-sum block

var<workgroup> red: array<f32, WG>;
var<workgroup> red2: array<vec2f, WG>;

// Sum of v over the workgroup, in a fixed tree order; every lane gets the total.
fn wgSum(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier(); // red is reused by the next call
  return r;
}

fn wgSum2(lid: u32, v: vec2f) -> vec2f {
  red2[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red2[lid] = red2[lid] + red2[lid + s]; }
    workgroupBarrier();
  }
  let r = red2[0];
  workgroupBarrier();
  return r;
}

fn rowOf(wid: vec3u, nwg: vec3u) -> u32 { return wid.x + wid.y * nwg.x; }

// ---------------------------------------------------------------- RMSNorm forward
@group(0) @binding(0) var<storage, read> rf_x: array<f32>;          // (N, C)
@group(0) @binding(1) var<storage, read> rf_w: array<f32>;          // (C)
@group(0) @binding(2) var<storage, read_write> rf_y: array<f32>;    // (N, C)
@group(0) @binding(3) var<storage, read_write> rf_rstd: array<f32>; // (N)
@group(0) @binding(4) var<uniform> rf_p: Params;                   // rows

@compute @workgroup_size(WG)
fn rms_fwd(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let row = rowOf(wid, nwg);
  if (row >= rf_p.n) { return; } // uniform per workgroup
  let base = row * C;
  var ss = 0.0;
  for (var c = lid; c < C; c += WG) { let v = rf_x[base + c]; ss += v * v; }
  let r = 1.0 / sqrt(wgSum(lid, ss) / f32(C) + EPS);
  for (var c = lid; c < C; c += WG) { rf_y[base + c] = rf_x[base + c] * r * rf_w[c]; }
  if (lid == 0u) { rf_rstd[row] = r; }
}

// ---------------------------------------------------------------- RMSNorm backward (dx)
@group(0) @binding(0) var<storage, read> rb_dy: array<f32>;         // (N, C)
@group(0) @binding(1) var<storage, read> rb_x: array<f32>;          // (N, C)
@group(0) @binding(2) var<storage, read> rb_w: array<f32>;          // (C)
@group(0) @binding(3) var<storage, read> rb_rstd: array<f32>;       // (N)
@group(0) @binding(4) var<storage, read_write> rb_dx: array<f32>;   // (N, C)
@group(0) @binding(5) var<uniform> rb_p: Params;                   // rows

// dx = r·(dy·w) − r³/C · x · Σ(dy·w·x)
@compute @workgroup_size(WG)
fn rms_bwd(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let row = rowOf(wid, nwg);
  if (row >= rb_p.n) { return; }
  let base = row * C;
  let r = rb_rstd[row];
  var s = 0.0;
  for (var c = lid; c < C; c += WG) { s += rb_dy[base + c] * rb_w[c] * rb_x[base + c]; }
  let k = r * r * r * wgSum(lid, s) / f32(C);
  for (var c = lid; c < C; c += WG) { rb_dx[base + c] = r * rb_dy[base + c] * rb_w[c] - k * rb_x[base + c]; }
}

// ---------------------------------------------------------------- LayerNorm forward
@group(0) @binding(0) var<storage, read> lf_x: array<f32>;          // (N, C)
@group(0) @binding(1) var<storage, read> lf_w: array<f32>;          // (C)
@group(0) @binding(2) var<storage, read> lf_b: array<f32>;          // (C)
@group(0) @binding(3) var<storage, read_write> lf_y: array<f32>;    // (N, C)
@group(0) @binding(4) var<storage, read_write> lf_mean: array<f32>; // (N)
@group(0) @binding(5) var<storage, read_write> lf_rstd: array<f32>; // (N)
@group(0) @binding(6) var<uniform> lf_p: Params;                   // rows

@compute @workgroup_size(WG)
fn ln_fwd(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let row = rowOf(wid, nwg);
  if (row >= lf_p.n) { return; }
  let base = row * C;
  var s = 0.0;
  for (var c = lid; c < C; c += WG) { s += lf_x[base + c]; }
  let m = wgSum(lid, s) / f32(C);
  // Two-pass variance: no cancellation when |mean| ≫ std.
  var v = 0.0;
  for (var c = lid; c < C; c += WG) { let d = lf_x[base + c] - m; v += d * d; }
  let r = 1.0 / sqrt(wgSum(lid, v) / f32(C) + EPS);
  for (var c = lid; c < C; c += WG) { lf_y[base + c] = (lf_x[base + c] - m) * r * lf_w[c] + lf_b[c]; }
  if (lid == 0u) { lf_mean[row] = m; lf_rstd[row] = r; }
}

// ---------------------------------------------------------------- LayerNorm backward (dx)
@group(0) @binding(0) var<storage, read> lb_dy: array<f32>;         // (N, C)
@group(0) @binding(1) var<storage, read> lb_x: array<f32>;          // (N, C)
@group(0) @binding(2) var<storage, read> lb_w: array<f32>;          // (C)
@group(0) @binding(3) var<storage, read> lb_mean: array<f32>;       // (N)
@group(0) @binding(4) var<storage, read> lb_rstd: array<f32>;       // (N)
@group(0) @binding(5) var<storage, read_write> lb_dx: array<f32>;   // (N, C)
@group(0) @binding(6) var<uniform> lb_p: Params;                   // rows

// xhat = (x − mean)·r, g = dy·w: dx = r·(g − Σg/C − xhat·Σ(g·xhat)/C)
@compute @workgroup_size(WG)
fn ln_bwd(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let row = rowOf(wid, nwg);
  if (row >= lb_p.n) { return; }
  let base = row * C;
  let m = lb_mean[row];
  let r = lb_rstd[row];
  var s = vec2f(0.0);
  for (var c = lid; c < C; c += WG) {
    let g = lb_dy[base + c] * lb_w[c];
    s += vec2f(g, g * (lb_x[base + c] - m) * r);
  }
  let t = wgSum2(lid, s) / f32(C);
  for (var c = lid; c < C; c += WG) {
    let xh = (lb_x[base + c] - m) * r;
    lb_dx[base + c] = r * (lb_dy[base + c] * lb_w[c] - t.x - xh * t.y);
  }
}

// ---------------------------------------------------------------- row-per-lane variants
// For CPU drivers (lavapipe): every storage load is a per-lane scalar access there anyway, while a
// workgroup barrier splits the shader and costs microseconds, so one lane per row with no barriers
// and a sequential (deterministic) sum is ~10× faster at C ≈ 300. They use the bindings above.

fn laneRow(gid: vec3u, nwg: vec3u) -> u32 { return gid.x + gid.y * nwg.x * WG; }

@compute @workgroup_size(WG)
fn rms_fwd_lane(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = laneRow(gid, nwg);
  if (row >= rf_p.n) { return; }
  let base = row * C;
  var ss = 0.0;
  for (var c = 0u; c < C; c++) { let v = rf_x[base + c]; ss += v * v; }
  let r = 1.0 / sqrt(ss / f32(C) + EPS);
  for (var c = 0u; c < C; c++) { rf_y[base + c] = rf_x[base + c] * r * rf_w[c]; }
  rf_rstd[row] = r;
}

@compute @workgroup_size(WG)
fn rms_bwd_lane(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = laneRow(gid, nwg);
  if (row >= rb_p.n) { return; }
  let base = row * C;
  let r = rb_rstd[row];
  var s = 0.0;
  for (var c = 0u; c < C; c++) { s += rb_dy[base + c] * rb_w[c] * rb_x[base + c]; }
  let k = r * r * r * s / f32(C);
  for (var c = 0u; c < C; c++) { rb_dx[base + c] = r * rb_dy[base + c] * rb_w[c] - k * rb_x[base + c]; }
}

@compute @workgroup_size(WG)
fn ln_fwd_lane(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = laneRow(gid, nwg);
  if (row >= lf_p.n) { return; }
  let base = row * C;
  var s = 0.0;
  for (var c = 0u; c < C; c++) { s += lf_x[base + c]; }
  let m = s / f32(C);
  var v = 0.0;
  for (var c = 0u; c < C; c++) { let d = lf_x[base + c] - m; v += d * d; }
  let r = 1.0 / sqrt(v / f32(C) + EPS);
  for (var c = 0u; c < C; c++) { lf_y[base + c] = (lf_x[base + c] - m) * r * lf_w[c] + lf_b[c]; }
  lf_mean[row] = m;
  lf_rstd[row] = r;
}

@compute @workgroup_size(WG)
fn ln_bwd_lane(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = laneRow(gid, nwg);
  if (row >= lb_p.n) { return; }
  let base = row * C;
  let m = lb_mean[row];
  let r = lb_rstd[row];
  var s1 = 0.0;
  var s2 = 0.0;
  for (var c = 0u; c < C; c++) {
    let g = lb_dy[base + c] * lb_w[c];
    s1 += g;
    s2 += g * (lb_x[base + c] - m) * r;
  }
  let t1 = s1 / f32(C);
  let t2 = s2 / f32(C);
  for (var c = 0u; c < C; c++) {
    let xh = (lb_x[base + c] - m) * r;
    lb_dx[base + c] = r * (lb_dy[base + c] * lb_w[c] - t1 - xh * t2);
  }
}

// Row-per-lane with vec4 loads when C % 4 == 0 (2.5× faster again at C = 4096 on lavapipe).
// Each lane keeps 4 partial sums, combined in a fixed order. C4 = C / 4.
override C4: u32 = C / 4u;
@group(0) @binding(0) var<storage, read> rf4_x: array<vec4f>;         // (N, C/4)
@group(0) @binding(1) var<storage, read> rf4_w: array<vec4f>;         // (C/4)
@group(0) @binding(2) var<storage, read_write> rf4_y: array<vec4f>;   // (N, C/4)
@group(0) @binding(0) var<storage, read> rb4_dy: array<vec4f>;        // (N, C/4)
@group(0) @binding(1) var<storage, read> rb4_x: array<vec4f>;         // (N, C/4)
@group(0) @binding(2) var<storage, read> rb4_w: array<vec4f>;         // (C/4)
@group(0) @binding(4) var<storage, read_write> rb4_dx: array<vec4f>;  // (N, C/4)
@group(0) @binding(0) var<storage, read> lf4_x: array<vec4f>;         // (N, C/4)
@group(0) @binding(1) var<storage, read> lf4_w: array<vec4f>;         // (C/4)
@group(0) @binding(2) var<storage, read> lf4_b: array<vec4f>;         // (C/4)
@group(0) @binding(3) var<storage, read_write> lf4_y: array<vec4f>;   // (N, C/4)
@group(0) @binding(0) var<storage, read> lb4_dy: array<vec4f>;        // (N, C/4)
@group(0) @binding(1) var<storage, read> lb4_x: array<vec4f>;         // (N, C/4)
@group(0) @binding(2) var<storage, read> lb4_w: array<vec4f>;         // (C/4)
@group(0) @binding(5) var<storage, read_write> lb4_dx: array<vec4f>;  // (N, C/4)

fn hsum4(v: vec4f) -> f32 { return (v.x + v.y) + (v.z + v.w); }

@compute @workgroup_size(WG)
fn rms_fwd_lane4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = laneRow(gid, nwg);
  if (row >= rf_p.n) { return; }
  let base = row * C4;
  var ss = vec4f(0.0);
  for (var c = 0u; c < C4; c++) { let v = rf4_x[base + c]; ss += v * v; }
  let r = 1.0 / sqrt(hsum4(ss) / f32(C) + EPS);
  for (var c = 0u; c < C4; c++) { rf4_y[base + c] = rf4_x[base + c] * r * rf4_w[c]; }
  rf_rstd[row] = r;
}

@compute @workgroup_size(WG)
fn rms_bwd_lane4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = laneRow(gid, nwg);
  if (row >= rb_p.n) { return; }
  let base = row * C4;
  let r = rb_rstd[row];
  var s = vec4f(0.0);
  for (var c = 0u; c < C4; c++) { s += rb4_dy[base + c] * rb4_w[c] * rb4_x[base + c]; }
  let k = r * r * r * hsum4(s) / f32(C);
  for (var c = 0u; c < C4; c++) { rb4_dx[base + c] = r * rb4_dy[base + c] * rb4_w[c] - k * rb4_x[base + c]; }
}

@compute @workgroup_size(WG)
fn ln_fwd_lane4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = laneRow(gid, nwg);
  if (row >= lf_p.n) { return; }
  let base = row * C4;
  var s = vec4f(0.0);
  for (var c = 0u; c < C4; c++) { s += lf4_x[base + c]; }
  let m = hsum4(s) / f32(C);
  var v = vec4f(0.0);
  for (var c = 0u; c < C4; c++) { let d = lf4_x[base + c] - m; v += d * d; }
  let r = 1.0 / sqrt(hsum4(v) / f32(C) + EPS);
  for (var c = 0u; c < C4; c++) { lf4_y[base + c] = (lf4_x[base + c] - m) * r * lf4_w[c] + lf4_b[c]; }
  lf_mean[row] = m;
  lf_rstd[row] = r;
}

@compute @workgroup_size(WG)
fn ln_bwd_lane4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = laneRow(gid, nwg);
  if (row >= lb_p.n) { return; }
  let base = row * C4;
  let m = lb_mean[row];
  let r = lb_rstd[row];
  var s1 = vec4f(0.0);
  var s2 = vec4f(0.0);
  for (var c = 0u; c < C4; c++) {
    let g = lb4_dy[base + c] * lb4_w[c];
    s1 += g;
    s2 += g * (lb4_x[base + c] - m) * r;
  }
  let t1 = hsum4(s1) / f32(C);
  let t2 = hsum4(s2) / f32(C);
  for (var c = 0u; c < C4; c++) {
    let xh = (lb4_x[base + c] - m) * r;
    lb4_dx[base + c] = r * (lb4_dy[base + c] * lb4_w[c] - t1 - xh * t2);
  }
}

// ---------------------------------------------------------------- column sums
// Stage 1: thread (column j, block b) sums rows [b·ROWS, min(N, (b+1)·ROWS)) of column j in
// ascending order into part[b, j]; grid (ceil(C/WG), nBlocks). Stage 2 (col_final) sums the
// blocks in ascending order. With one block, stage 1 writes the result directly.

@group(0) @binding(0) var<storage, read> cs_a: array<f32>;           // (N, C)
@group(0) @binding(1) var<storage, read_write> cs_out: array<f32>;   // (nBlocks, C)
@group(0) @binding(2) var<uniform> cs_p: Params;                   // rows

@compute @workgroup_size(WG)
fn col_sum(@builtin(global_invocation_id) gid: vec3u) {
  let j = gid.x;
  if (j >= C) { return; }
  let r0 = gid.y * ROWS;
  let r1 = min(cs_p.n, r0 + ROWS);
  var s = 0.0;
  for (var n = r0; n < r1; n++) { s += cs_a[n * C + j]; }
  cs_out[gid.y * C + j] = s;
}

// Σ dy·x·rstd (RMSNorm dw)
@group(0) @binding(0) var<storage, read> cr_dy: array<f32>;          // (N, C)
@group(0) @binding(1) var<storage, read> cr_x: array<f32>;           // (N, C)
@group(0) @binding(2) var<storage, read> cr_rstd: array<f32>;        // (N)
@group(0) @binding(3) var<storage, read_write> cr_out: array<f32>;   // (nBlocks, C)
@group(0) @binding(4) var<uniform> cr_p: Params;                   // rows

@compute @workgroup_size(WG)
fn col_rms(@builtin(global_invocation_id) gid: vec3u) {
  let j = gid.x;
  if (j >= C) { return; }
  let r0 = gid.y * ROWS;
  let r1 = min(cr_p.n, r0 + ROWS);
  var s = 0.0;
  for (var n = r0; n < r1; n++) { s += cr_dy[n * C + j] * cr_x[n * C + j] * cr_rstd[n]; }
  cr_out[gid.y * C + j] = s;
}

// (Σ dy·xhat, Σ dy) (LayerNorm dw, db): out holds dw blocks then db blocks
@group(0) @binding(0) var<storage, read> cl_dy: array<f32>;          // (N, C)
@group(0) @binding(1) var<storage, read> cl_x: array<f32>;           // (N, C)
@group(0) @binding(2) var<storage, read> cl_mean: array<f32>;        // (N)
@group(0) @binding(3) var<storage, read> cl_rstd: array<f32>;        // (N)
@group(0) @binding(4) var<storage, read_write> cl_dw: array<f32>;    // (nBlocks, C)
@group(0) @binding(5) var<storage, read_write> cl_db: array<f32>;    // (nBlocks, C)
@group(0) @binding(6) var<uniform> cl_p: Params;                   // rows

@compute @workgroup_size(WG)
fn col_ln(@builtin(global_invocation_id) gid: vec3u) {
  let j = gid.x;
  if (j >= C) { return; }
  let r0 = gid.y * ROWS;
  let r1 = min(cl_p.n, r0 + ROWS);
  var sw = 0.0;
  var sb = 0.0;
  for (var n = r0; n < r1; n++) {
    let dy = cl_dy[n * C + j];
    sw += dy * (cl_x[n * C + j] - cl_mean[n]) * cl_rstd[n];
    sb += dy;
  }
  cl_dw[gid.y * C + j] = sw;
  cl_db[gid.y * C + j] = sb;
}

// Stage 2: out[j] = Σ_b part[b, j], b ascending. NB = number of blocks.
override NB: u32 = 1;
@group(0) @binding(0) var<storage, read> cf_part: array<f32>;        // (NB, C)
@group(0) @binding(1) var<storage, read_write> cf_out: array<f32>;   // (C)

@compute @workgroup_size(WG)
fn col_final(@builtin(global_invocation_id) gid: vec3u) {
  let j = gid.x;
  if (j >= C) { return; }
  var s = 0.0;
  for (var b = 0u; b < NB; b++) { s += cf_part[b * C + j]; }
  cf_out[j] = s;
}
