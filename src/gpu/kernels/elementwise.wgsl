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
