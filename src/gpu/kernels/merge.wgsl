// COLA knot merge: out = W + s·(B·A) for a block of rows, and a "some value is not finite" flag.
// K (columns) and R (rank) are pipeline constants; the row block and scale come from a uniform.
override K: u32;
override R: u32;
override WG: u32 = 256;

struct Params {
  row0: u32,   // first row of W this dispatch covers (w and out are bound from that row on)
  rows: u32,   // rows in this block
  scale: f32,  // s = alpha / r
  _pad: u32,
}

@group(0) @binding(0) var<storage, read> w: array<f32>;             // (rows, K) block of W (d,K)
@group(0) @binding(1) var<storage, read> a: array<f32>;             // (R, K) LoRA A
@group(0) @binding(2) var<storage, read> b: array<f32>;             // (d, R) LoRA B (whole)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;     // (rows, K) block of the scratch copy
@group(0) @binding(4) var<storage, read_write> flag: atomic<u32>;   // (1) set to 1 if any out value is NaN/±Inf
@group(0) @binding(5) var<uniform> p: Params;

// Not-finite test on the bits (exponent all ones): immune to fast-math assumptions about NaN.
fn notFinite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u; }

@compute @workgroup_size(WG)
fn merge(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let idx = gid.x + gid.y * nwg.x * WG;
  if (idx >= p.rows * K) { return; }
  let i = idx / K;
  let j = idx - i * K;
  let bo = (p.row0 + i) * R;
  var acc = 0.0;
  for (var x = 0u; x < R; x++) { acc += b[bo + x] * a[x * K + j]; }
  let v = w[idx] + p.scale * acc;
  out[idx] = v;
  if (notFinite(v)) { atomicOr(&flag, 1u); } // OR of flags: order-independent, so deterministic
}
