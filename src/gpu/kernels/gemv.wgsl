// y = alpha · x·Wᵀ (+ bias) (+ y) for MR ≤ 8 rows x: the decode-time product on GPUs (one row per
// sequence of a continuous batch). The tiled matmul gives a (M × N) output with M ≤ 8 only N/64
// workgroups, each walking K serially between barriers, and on an H200 spent ~280 µs per 768×768
// product at M = 1; here 32 invocations share each output row's K, every weight vec4 loaded is used
// for all MR rows, and a fixed-order tree sums the partials (deterministic, and the same sums for
// a row whatever MR is), 8 output columns per workgroup.
override MR: u32 = 1u; // rows of x (a constant so the per-row partial sums live in registers)

struct Params { N: u32, K4: u32, acc: u32, hasBias: u32, alpha: f32, _a: u32, _b: u32, _c: u32 }

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;      // (MR, K/4)
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;      // (N, K/4)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;      // (MR, N)
@group(0) @binding(3) var<storage, read> bias: array<f32>;         // (N) or a placeholder
@group(0) @binding(4) var<uniform> P: Params;

var<workgroup> red: array<f32, 256 * MR>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let g = li / 32u;
  let lane = li % 32u;
  let n = (wid.x + wid.y * nwg.x) * 8u + g;
  var s: array<f32, 8>;
  for (var m = 0u; m < MR; m++) { s[m] = 0.0; }
  if (n < P.N) {
    for (var k = lane; k < P.K4; k += 32u) {
      let wv = w[n * P.K4 + k];
      for (var m = 0u; m < MR; m++) { s[m] += dot(x[m * P.K4 + k], wv); }
    }
  }
  for (var m = 0u; m < MR; m++) { red[m * 256u + li] = s[m]; }
  workgroupBarrier();
  for (var off = 16u; off > 0u; off = off >> 1u) {
    if (lane < off) {
      for (var m = 0u; m < MR; m++) { red[m * 256u + li] += red[m * 256u + li + off]; }
    }
    workgroupBarrier();
  }
  if (lane == 0u && n < P.N) {
    for (var m = 0u; m < MR; m++) {
      var v = P.alpha * red[m * 256u + li];
      if (P.hasBias == 1u) { v += bias[n]; }
      if (P.acc == 1u) { v += y[m * P.N + n]; }
      y[m * P.N + n] = v;
    }
  }
}
