// Column-block copies between row-major matrices, e.g. splitting GPT-2's fused qkv (N, 3D) into
// q, k, v (N, D) and gathering their gradients back. ROWS × W elements are copied.
override ROWS: u32;
override W: u32;       // columns copied
override SRC_C: u32;   // columns of src
override DST_C: u32;   // columns of dst
override SRC_OFF: u32; // first src column
override DST_OFF: u32; // first dst column
override WG: u32 = 256;

@group(0) @binding(0) var<storage, read> src: array<f32>;        // (ROWS, SRC_C)
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;  // (ROWS, DST_C)

@compute @workgroup_size(WG)
fn copy_cols(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= ROWS * W) { return; }
  let r = i / W;
  let c = i % W;
  dst[r * DST_C + DST_OFF + c] = src[r * SRC_C + SRC_OFF + c];
}
