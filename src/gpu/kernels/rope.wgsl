// Rotary position embedding on x (B, T, H, D); one lane per rotated pair.
// cos/sin come from a table computed in f64 on the host (see ops/rope.ts): the angle pos·θ^(−2k/D)
// reaches thousands of radians, where f32 angle arithmetic and WGSL's sin/cos (accuracy only
// specified on [−π, π]) would lose ~1e-4 absolute.
override H: u32;              // heads
override D: u32;              // head dim (even)
override INTERLEAVED: bool;   // true: pairs (2k, 2k+1) (llama2.c); false: (k, k + D/2) (HF rotate_half)
override WG: u32 = 256;
override HALF: u32 = D / 2u; // derived, not set by the host

struct Params { pairs: u32, t: u32, pos_offset: u32, sign: f32 } // sign −1: inverse rotation (backward)

@group(0) @binding(0) var<storage, read> x: array<f32>;           // (B, T, H, D)
@group(0) @binding(1) var<storage, read> cs: array<vec2f>;        // (P, D/2) (cos, sin), P ≥ posOffset + T
@group(0) @binding(2) var<storage, read_write> y: array<f32>;     // (B, T, H, D)
@group(0) @binding(3) var<uniform> prm: Params; // (pairs, T, posOffset, sign)

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= prm.pairs) { return; }
  let row = i / HALF;          // (b, t, h) flattened
  let k = i - row * HALF;
  let t = (row / H) % prm.t;
  let c = cs[(prm.pos_offset + t) * HALF + k];
  let s = prm.sign * c.y;
  var ia: u32;
  var ib: u32;
  if (INTERLEAVED) { ia = row * D + 2u * k; ib = ia + 1u; } else { ia = row * D + k; ib = ia + HALF; }
  let a = x[ia];
  let b = x[ib];
  y[ia] = a * c.x - b * s;
  y[ib] = a * s + b * c.x;
}
