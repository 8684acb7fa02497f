// y = alpha · x·Wᵀ (+ bias) (+ y) for ONE row x: the decode-time product on GPUs. The tiled matmul
// gives a (1 × N) output only N/64 workgroups, each walking K serially between barriers, and on an
// H200 spent ~280 µs per 768×768 product; here 32 invocations share each output row's K and a
// fixed-order tree sums their partials (deterministic), 8 rows per workgroup.
struct Params { N: u32, K4: u32, acc: u32, hasBias: u32, alpha: f32, _a: u32, _b: u32, _c: u32 }

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;      // (K/4)
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;      // (N, K/4)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;      // (N)
@group(0) @binding(3) var<storage, read> bias: array<f32>;         // (N) or a placeholder
@group(0) @binding(4) var<uniform> P: Params;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) li: u32) {
  let g = li / 32u;
  let lane = li % 32u;
  let n = (wid.x + wid.y * nwg.x) * 8u + g;
  var s = 0.0;
  if (n < P.N) {
    for (var k = lane; k < P.K4; k += 32u) { s += dot(x[k], w[n * P.K4 + k]); }
  }
  red[li] = s;
  workgroupBarrier();
  for (var off = 16u; off > 0u; off = off >> 1u) {
    if (lane < off) { red[li] += red[li + off]; }
    workgroupBarrier();
  }
  if (lane == 0u && n < P.N) {
    var v = P.alpha * red[li];
    if (P.hasBias == 1u) { v += bias[n]; }
    if (P.acc == 1u) { v += y[n]; }
    y[n] = v;
  }
}
