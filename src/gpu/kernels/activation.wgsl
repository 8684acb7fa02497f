// FFN activations, forward and backward, elementwise over flat f32 arrays.
// The element count is arrayLength(output): the engine binds exactly numel·4 bytes, so no size
// override is needed and a new batch shape does not cost a shader compile.
override WG: u32 = 256;

fn sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); } // exp overflow → 1/inf = 0, no NaN

// tanh via exp of a clamped argument: some drivers' tanh returns NaN for large |x|.
fn tanhSafe(x: f32) -> f32 {
  let z = clamp(x, -15.0, 15.0); // tanh(15) = 1 − 2e-13, already 1.0 in f32
  let e2 = exp(2.0 * z);
  return (e2 - 1.0) / (e2 + 1.0);
}

const GELU_K: f32 = 0.7978845608028654; // sqrt(2/pi)
const GELU_A: f32 = 0.044715;

fn idx(gid: vec3u, nwg: vec3u) -> u32 { return gid.x + gid.y * nwg.x * WG; }

// ---------------------------------------------------------------- swiglu = silu(g)·u
@group(0) @binding(0) var<storage, read> sg_g: array<f32>;         // (N, H) gate
@group(0) @binding(1) var<storage, read> sg_u: array<f32>;         // (N, H) up
@group(0) @binding(2) var<storage, read_write> sg_y: array<f32>;   // (N, H)

@compute @workgroup_size(WG)
fn swiglu(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = idx(gid, nwg);
  if (i >= arrayLength(&sg_y)) { return; }
  let g = sg_g[i];
  sg_y[i] = g * sigmoid(g) * sg_u[i];
}

@group(0) @binding(0) var<storage, read> sb_dy: array<f32>;        // (N, H)
@group(0) @binding(1) var<storage, read> sb_g: array<f32>;         // (N, H)
@group(0) @binding(2) var<storage, read> sb_u: array<f32>;         // (N, H)
@group(0) @binding(3) var<storage, read_write> sb_dg: array<f32>;  // (N, H)
@group(0) @binding(4) var<storage, read_write> sb_du: array<f32>;  // (N, H)

// dU = dy·silu(g);  dG = dy·u·σ(g)·(1 + g·(1 − σ(g)))
@compute @workgroup_size(WG)
fn swiglu_bwd(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = idx(gid, nwg);
  if (i >= arrayLength(&sb_dg)) { return; }
  let g = sb_g[i];
  let s = sigmoid(g);
  let dy = sb_dy[i];
  sb_du[i] = dy * g * s;
  sb_dg[i] = dy * sb_u[i] * s * (1.0 + g * (1.0 - s));
}

// ---------------------------------------------------------------- one-input activations
@group(0) @binding(0) var<storage, read> a_x: array<f32>;          // (N)
@group(0) @binding(1) var<storage, read_write> a_y: array<f32>;    // (N)

@compute @workgroup_size(WG)
fn relu(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = idx(gid, nwg);
  if (i >= arrayLength(&a_y)) { return; }
  a_y[i] = max(a_x[i], 0.0);
}

// GPT-2 gelu_new: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
@compute @workgroup_size(WG)
fn gelu(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = idx(gid, nwg);
  if (i >= arrayLength(&a_y)) { return; }
  let x = a_x[i];
  a_y[i] = 0.5 * x * (1.0 + tanhSafe(GELU_K * (x + GELU_A * x * x * x)));
}

@group(0) @binding(0) var<storage, read> b_dy: array<f32>;         // (N)
@group(0) @binding(1) var<storage, read> b_x: array<f32>;          // (N) forward input
@group(0) @binding(2) var<storage, read_write> b_dx: array<f32>;   // (N)

@compute @workgroup_size(WG)
fn relu_bwd(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = idx(gid, nwg);
  if (i >= arrayLength(&b_dx)) { return; }
  b_dx[i] = select(0.0, b_dy[i], b_x[i] > 0.0);
}

// d/dx = 0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)
@compute @workgroup_size(WG)
fn gelu_bwd(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = idx(gid, nwg);
  if (i >= arrayLength(&b_dx)) { return; }
  let x = b_x[i];
  let t = tanhSafe(GELU_K * (x + GELU_A * x * x * x));
  b_dx[i] = b_dy[i] * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * GELU_A * x * x));
}

// ---------------------------------------------------------------- vec4 variants (numel % 4 == 0)
// Same math on 4 elements per lane: one 16-byte load per operand (~2.5× faster on lavapipe, where
// each load is a per-lane scalar access; 128-bit loads on real GPUs). Counts are in vec4s.

fn sigmoid4(x: vec4f) -> vec4f { return 1.0 / (1.0 + exp(-x)); }
fn tanhSafe4(x: vec4f) -> vec4f {
  let e2 = exp(2.0 * clamp(x, vec4f(-15.0), vec4f(15.0)));
  return (e2 - 1.0) / (e2 + 1.0);
}

@group(0) @binding(0) var<storage, read> sg4_g: array<vec4f>;        // (N·H/4) gate
@group(0) @binding(1) var<storage, read> sg4_u: array<vec4f>;        // (N·H/4) up
@group(0) @binding(2) var<storage, read_write> sg4_y: array<vec4f>;  // (N·H/4)

@compute @workgroup_size(WG)
fn swiglu4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = idx(gid, nwg);
  if (i >= arrayLength(&sg4_y)) { return; }
  let g = sg4_g[i];
  sg4_y[i] = g * sigmoid4(g) * sg4_u[i];
}

@group(0) @binding(0) var<storage, read> sb4_dy: array<vec4f>;       // (N·H/4)
@group(0) @binding(1) var<storage, read> sb4_g: array<vec4f>;        // (N·H/4)
@group(0) @binding(2) var<storage, read> sb4_u: array<vec4f>;        // (N·H/4)
@group(0) @binding(3) var<storage, read_write> sb4_dg: array<vec4f>; // (N·H/4)
@group(0) @binding(4) var<storage, read_write> sb4_du: array<vec4f>; // (N·H/4)

@compute @workgroup_size(WG)
fn swiglu_bwd4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = idx(gid, nwg);
  if (i >= arrayLength(&sb4_dg)) { return; }
  let g = sb4_g[i];
  let s = sigmoid4(g);
  let dy = sb4_dy[i];
  sb4_du[i] = dy * g * s;
  sb4_dg[i] = dy * sb4_u[i] * s * (1.0 + g * (1.0 - s));
}

@group(0) @binding(0) var<storage, read> a4_x: array<vec4f>;         // (N/4)
@group(0) @binding(1) var<storage, read_write> a4_y: array<vec4f>;   // (N/4)

@compute @workgroup_size(WG)
fn relu4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = idx(gid, nwg);
  if (i >= arrayLength(&a4_y)) { return; }
  a4_y[i] = max(a4_x[i], vec4f(0.0));
}

@compute @workgroup_size(WG)
fn gelu4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = idx(gid, nwg);
  if (i >= arrayLength(&a4_y)) { return; }
  let x = a4_x[i];
  a4_y[i] = 0.5 * x * (1.0 + tanhSafe4(GELU_K * (x + GELU_A * x * x * x)));
}

@group(0) @binding(0) var<storage, read> b4_dy: array<vec4f>;        // (N/4)
@group(0) @binding(1) var<storage, read> b4_x: array<vec4f>;         // (N/4) forward input
@group(0) @binding(2) var<storage, read_write> b4_dx: array<vec4f>;  // (N/4)

@compute @workgroup_size(WG)
fn relu_bwd4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = idx(gid, nwg);
  if (i >= arrayLength(&b4_dx)) { return; }
  b4_dx[i] = select(vec4f(0.0), b4_dy[i], b4_x[i] > vec4f(0.0));
}

@compute @workgroup_size(WG)
fn gelu_bwd4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = idx(gid, nwg);
  if (i >= arrayLength(&b4_dx)) { return; }
  let x = b4_x[i];
  let t = tanhSafe4(GELU_K * (x + GELU_A * x * x * x));
  b4_dx[i] = b4_dy[i] * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * GELU_A * x * x));
}
