// Optimizer updates (in place) and deterministic gradient-norm reductions.
// Sizes and hyper-parameters come from a uniform block, so one pipeline per entry point serves
// every parameter tensor and every step (the learning rate changes each step).
// Formulas: see ../ref/optim.ts (PyTorch's single-tensor AdamW / SGD / Adagrad).
override WG: u32 = 256;

struct Hp {
  n: u32,        // element count
  flag: u32,     // sgd: 1 on the first step after a reset (momentum buffer := d); unused otherwise
  lr: f32,       // adamw: step size lr/(1−β1^t); sgd: lr; adagrad: clr = lr/(1+(t−1)·lr_decay)
  decay: f32,    // adamw: 1 − lr·λ; sgd / adagrad: λ (weight decay)
  beta1: f32,    // adamw: 1 − β1 (the lerp weight); sgd: momentum μ
  beta2: f32,    // adamw: β2; sgd: 1 − dampening
  eps: f32,      // adamw / adagrad: ε; sgd: 1 if nesterov
  bc2sqrt: f32,  // adamw: √(1−β2^t)
  omb2: f32,     // adamw: 1 − β2, computed on the host in f64 (as PyTorch's Python float), not 1 − f32(β2)
}

@group(0) @binding(0) var<storage, read_write> param: array<f32>; // (n)
@group(0) @binding(1) var<storage, read> grad: array<f32>;        // (n)
@group(0) @binding(2) var<uniform> hp: Hp;
@group(0) @binding(3) var<storage, read_write> s1: array<f32>;    // (n) adamw m / sgd momentum buffer / adagrad Σg²
@group(0) @binding(4) var<storage, read_write> s2: array<f32>;    // (n) adamw v (unused by sgd / adagrad)

fn lerp(a: f32, b: f32, w: f32) -> f32 {
  // at::lerp: a + w·(b−a) for |w| < 0.5, else b − (b−a)·(1−w)
  if (abs(w) < 0.5) { return a + w * (b - a); }
  return b - (b - a) * (1.0 - w);
}

@compute @workgroup_size(WG)
fn adamw(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= hp.n) { return; }
  let g = grad[i];
  let p = param[i] * hp.decay;
  let m = lerp(s1[i], g, hp.beta1);
  let v = s2[i] * hp.beta2 + hp.omb2 * (g * g);
  s1[i] = m;
  s2[i] = v;
  let denom = sqrt(v) / hp.bc2sqrt + hp.eps;
  param[i] = p - hp.lr * (m / denom);
}

@compute @workgroup_size(WG)
fn sgd(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= hp.n) { return; }
  let p = param[i];
  var d = grad[i];
  if (hp.decay != 0.0) { d = d + hp.decay * p; }
  if (hp.beta1 != 0.0) {
    var b = d;
    if (hp.flag == 0u) { b = s1[i] * hp.beta1 + hp.beta2 * d; }
    s1[i] = b;
    if (hp.eps != 0.0) { d = d + hp.beta1 * b; } else { d = b; }
  }
  param[i] = p - hp.lr * d;
}

@compute @workgroup_size(WG)
fn adagrad(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= hp.n) { return; }
  let p = param[i];
  var g = grad[i];
  if (hp.decay != 0.0) { g = g + hp.decay * p; }
  let s = s1[i] + g * g;
  s1[i] = s;
  param[i] = p - hp.lr * (g / (sqrt(s) + hp.eps));
}

// ---------------------------------------------------------------- norms
// Σ x² in two fixed-shape stages (per-workgroup strided sums + a tree, then one workgroup over
// the partials), so the result is bit-identical from run to run (no atomics).
struct RedParams {
  n: u32,       // sumsq_partial: elements of x; finalize / scale: number of partials / elements
  offset: u32,  // sumsq_partial: first partial slot this tensor writes
  maxNorm: f32, // scale: clip threshold
  mode: u32,    // finalize: 0 = write Σx², 1 = write √Σx²
}

@group(0) @binding(0) var<storage, read> rx: array<f32>;               // (n) a gradient
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;   // (total partials) one per workgroup per tensor
@group(0) @binding(2) var<uniform> rp: RedParams;

var<workgroup> red: array<f32, WG>;

fn tree(lid: u32) -> f32 {
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s / 2u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  return red[0];
}

// grid (P): lane (w, l) sums x[w·WG + l + k·P·WG]; partials[offset + w] = Σ over the workgroup.
@compute @workgroup_size(WG)
fn sumsq_partial(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let stride = nwg.x * WG;
  var acc = 0.0;
  for (var i = wid.x * WG + lid.x; i < rp.n; i += stride) { let x = rx[i]; acc += x * x; }
  red[lid.x] = acc;
  let total = tree(lid.x);
  if (lid.x == 0u) { partials[rp.offset + wid.x] = total; }
}

@group(0) @binding(0) var<storage, read> fparts: array<f32>;         // (n) partial sums
@group(0) @binding(1) var<storage, read_write> fout: array<f32>;     // (1) Σx² or the norm
@group(0) @binding(2) var<uniform> fp: RedParams;

// grid (1)
@compute @workgroup_size(WG)
fn finalize(@builtin(local_invocation_id) lid: vec3u) {
  var acc = 0.0;
  for (var i = lid.x; i < fp.n; i += WG) { acc += fparts[i]; }
  red[lid.x] = acc;
  let total = tree(lid.x);
  if (lid.x == 0u) { fout[0] = select(total, sqrt(total), fp.mode == 1u); }
}

@group(0) @binding(0) var<storage, read_write> sx: array<f32>;       // (n) a gradient, scaled in place
@group(0) @binding(1) var<storage, read> normv: array<f32>;          // (1) total norm
@group(0) @binding(2) var<uniform> sp: RedParams;

// x *= min(maxNorm / (norm + 1e-6), 1)  (torch.nn.utils.clip_grad_norm_)
@compute @workgroup_size(WG)
fn scale(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= sp.n) { return; }
  let coef = min(sp.maxNorm / (normv[0] + 1e-6), 1.0);
  sx[i] = sx[i] * coef;
}
