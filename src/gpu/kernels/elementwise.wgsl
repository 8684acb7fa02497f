// Elementwise ops on flat f32 arrays. N = element count (pipeline-overridable).
override N: u32;
override WG: u32 = 256;

@group(0) @binding(0) var<storage, read> a: array<f32>;        // (N)
@group(0) @binding(1) var<storage, read> b: array<f32>;        // (N)
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (N)

// out = a + b (residual add; its backward is the identity to both inputs)
@compute @workgroup_size(WG)
fn add(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i < N) { out[i] = a[i] + b[i]; }
}

// out = a + b on vec4 (N4 = N/4, N % 4 == 0): on lavapipe every per-lane load is a scalar loop, so
// moving 4 floats per load is ~4× fewer loop iterations. The size comes from arrayLength, so no size
// costs a compile.
@group(0) @binding(0) var<storage, read> a4: array<vec4<f32>>;         // (N/4)
@group(0) @binding(1) var<storage, read> b4: array<vec4<f32>>;         // (N/4)
@group(0) @binding(2) var<storage, read_write> out4: array<vec4<f32>>; // (N/4)

@compute @workgroup_size(WG)
fn add4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i < arrayLength(&out4)) { out4[i] = a4[i] + b4[i]; }
}

// out = a·b (elementwise product)
@compute @workgroup_size(WG)
fn mul(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i < N) { out[i] = a[i] * b[i]; }
}

// Scalar helpers: the element count is arrayLength(output) (bindings are exactly numel·4 bytes),
// and the scalar comes in a uniform, so neither a new size nor a new scalar costs a compile.
struct Scalar { s: f32 }

@group(0) @binding(0) var<storage, read> sc_a: array<f32>;         // (N)
@group(0) @binding(1) var<storage, read_write> sc_out: array<f32>; // (N)
@group(0) @binding(2) var<uniform> sc_p: Scalar;                   // s

// out = s·a
@compute @workgroup_size(WG)
fn scale(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i < arrayLength(&sc_out)) { sc_out[i] = sc_p.s * sc_a[i]; }
}

@group(0) @binding(0) var<storage, read> ax_x: array<f32>;         // (N)
@group(0) @binding(1) var<storage, read_write> ax_y: array<f32>;   // (N), updated in place
@group(0) @binding(2) var<uniform> ax_p: Scalar;                   // alpha

// y += alpha·x (gradient accumulation)
@compute @workgroup_size(WG)
fn axpy(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i < arrayLength(&ax_y)) { ax_y[i] = ax_y[i] + ax_p.s * ax_x[i]; }
}
