// Causal grouped-query attention (flash-style: never materialises the T×T score matrix).
//
// Layouts: q, out, dout, dq (B,T,H,D); k, v, dk, dv (B,T,HKV,D); lse, delta (B,H,T); mask (B,T) u32.
// Query head h reads kv head h / (H/HKV). Scores are s = SCALE·q·k; key j is visible to query t
// when j <= t and (P.masked == 0 or mask[b,j] != 0). A row with no visible key outputs 0 and stores
// lse = NO_KEYS (it then contributes nothing to any gradient: no key is visible to it).
//
// Work split (chosen for lavapipe, where one workgroup is one CPU thread running 8 SIMD lanes, and
// fine on real GPUs): one invocation per query row (forward, dq) or per key row (dk/dv), the row's
// q / accumulators in private arrays (DMAX floats). Workgroups hold WG consecutive rows of one
// (b, head), and the loop over the other side (keys for forward/dq, queries for dk/dv) runs over
// the same workgroup-uniform range in every lane, with the causal/padding test as a per-lane
// select. So every k/v (or q/dout) load has a workgroup-uniform offset: on llvmpipe one scalar load
// + splat instead of a per-lane gather loop (a lane-dependent loop bound would make the loop
// variable, and so every load, divergent). Rows are taken 4 at a time (KB = 4, unrolled by hand)
// so the online-softmax rescale and the private-array traffic are paid once per 4 keys.
// dk/dv of a kv head are summed over its query heads in a fixed order inside one invocation:
// deterministic, no atomics.
// Sizes and the scale come from a uniform block (not override constants): one compiled pipeline
// per entry point serves every shape. lavapipe compiles lazily and slowly (seconds per variant,
// much more when LLVM fully unrolls a loop over a small constant D), and sequence lengths vary
// from batch to batch in training and from step to step in decode.
struct Params {
  B: u32,
  T: u32,      // sequence length (decode: MAXT, the cache length)
  H: u32,      // query heads
  HKV: u32,    // kv heads (divides H)
  D: u32,      // head dim (≤ DMAX)
  scale: f32,  // score scale, e.g. 1/sqrt(D)
  pos: u32,    // decode: valid cache rows (incl. the new token)
  masked: u32, // 1: the mask binding holds a (B,T) key mask; 0: it is a placeholder, never read
}
@group(0) @binding(0) var<uniform> P: Params;

override WG: u32 = 64;

const DMAX: u32 = 256u;
const NO_KEYS: f32 = -3.0e38;

// ---------------------------------------------------------------- forward
@group(0) @binding(1) var<storage, read> q: array<f32>;          // (B,T,H,D)
@group(0) @binding(2) var<storage, read> k: array<f32>;          // (B,T,HKV,D)
@group(0) @binding(3) var<storage, read> v: array<f32>;          // (B,T,HKV,D)
@group(0) @binding(4) var<storage, read> mask: array<u32>;       // (B,T) 0 = padding key (unread unless P.masked != 0)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (B,T,H,D)
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;  // (B,H,T) log Σ_j exp(s_tj)

fn keyOk(m: ptr<storage, array<u32>, read>, b: u32, j: u32, t: u32, T: u32) -> bool {
  // j visible to row t: causal, exists, and (if P.masked != 0) not padding.
  return j <= t && j < T && (P.masked == 0u || (*m)[b * T + min(j, T - 1u)] != 0u);
}

// grid (ceil(T/WG), H, B)
@compute @workgroup_size(WG)
fn forward(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let B = P.B; let T = P.T; let H = P.H; let HKV = P.HKV; let D = P.D; let SCALE = P.scale;
  let t0 = wid.x * WG;
  let t = t0 + lid.x; // lanes with t >= T compute on row T-1 and write nothing
  let h = wid.y;
  let b = wid.z;
  let hk = h / (H / HKV);
  let qo = ((b * T + min(t, T - 1u)) * H + h) * D;
  var qv: array<f32, DMAX>;
  var acc: array<f32, DMAX>;
  for (var d = 0u; d < D; d++) { qv[d] = q[qo + d] * SCALE; acc[d] = 0.0; }
  var m = NO_KEYS; // running max of the visible scores
  var l = 0.0;     // running Σ exp(s - m)
  let jEnd = min(t0 + WG, T); // workgroup-uniform: every lane walks the same keys
  for (var j0 = 0u; j0 < jEnd; j0 += 4u) {
    let ko0 = ((b * T + j0) * HKV + hk) * D;
    let ko1 = ((b * T + min(j0 + 1u, T - 1u)) * HKV + hk) * D;
    let ko2 = ((b * T + min(j0 + 2u, T - 1u)) * HKV + hk) * D;
    let ko3 = ((b * T + min(j0 + 3u, T - 1u)) * HKV + hk) * D;
    var s0 = 0.0; var s1 = 0.0; var s2 = 0.0; var s3 = 0.0;
    for (var d = 0u; d < D; d++) {
      let x = qv[d];
      s0 += x * k[ko0 + d]; s1 += x * k[ko1 + d]; s2 += x * k[ko2 + d]; s3 += x * k[ko3 + d];
    }
    let ok0 = keyOk(&mask, b, j0, t, T);
    let ok1 = keyOk(&mask, b, j0 + 1u, t, T);
    let ok2 = keyOk(&mask, b, j0 + 2u, t, T);
    let ok3 = keyOk(&mask, b, j0 + 3u, t, T);
    s0 = select(NO_KEYS, s0, ok0); s1 = select(NO_KEYS, s1, ok1);
    s2 = select(NO_KEYS, s2, ok2); s3 = select(NO_KEYS, s3, ok3);
    let mNew = max(max(m, max(s0, s1)), max(s2, s3));
    let alpha = exp(m - mNew); // 1 while no key has been visible (m = mNew = NO_KEYS)
    let p0 = select(0.0, exp(s0 - mNew), ok0);
    let p1 = select(0.0, exp(s1 - mNew), ok1);
    let p2 = select(0.0, exp(s2 - mNew), ok2);
    let p3 = select(0.0, exp(s3 - mNew), ok3);
    l = l * alpha + ((p0 + p1) + (p2 + p3));
    for (var d = 0u; d < D; d++) {
      acc[d] = acc[d] * alpha + (p0 * v[ko0 + d] + p1 * v[ko1 + d] + p2 * v[ko2 + d] + p3 * v[ko3 + d]);
    }
    m = mNew;
  }
  if (t < T) {
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var d = 0u; d < D; d++) { out[qo + d] = acc[d] * inv; }
    lse[(b * H + h) * T + t] = select(NO_KEYS, m + log(l), l > 0.0);
  }
}

// ---------------------------------------------------------------- backward
@group(0) @binding(1) var<storage, read> dout_d: array<f32>;         // (B,T,H,D)
@group(0) @binding(2) var<storage, read> out_d: array<f32>;          // (B,T,H,D) forward output
@group(0) @binding(3) var<storage, read_write> delta_d: array<f32>;  // (B,H,T) Σ_d dout·out

// delta_t = Σ_d dO_td O_td (= Σ_j P_tj dP_tj, the softmax-backward row term). grid (ceil(T/WG), H, B)
@compute @workgroup_size(WG)
fn delta(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let B = P.B; let T = P.T; let H = P.H; let HKV = P.HKV; let D = P.D; let SCALE = P.scale;
  let t = wid.x * WG + lid.x;
  let h = wid.y;
  let b = wid.z;
  if (t >= T) { return; }
  let o = ((b * T + t) * H + h) * D;
  var s = 0.0;
  for (var d = 0u; d < D; d++) { s += dout_d[o + d] * out_d[o + d]; }
  delta_d[(b * H + h) * T + t] = s;
}

@group(0) @binding(1) var<storage, read> bq: array<f32>;            // (B,T,H,D)
@group(0) @binding(2) var<storage, read> bk: array<f32>;            // (B,T,HKV,D)
@group(0) @binding(3) var<storage, read> bv: array<f32>;            // (B,T,HKV,D)
@group(0) @binding(4) var<storage, read> bmask: array<u32>;         // (B,T)
@group(0) @binding(5) var<storage, read> bdout: array<f32>;         // (B,T,H,D)
@group(0) @binding(6) var<storage, read> blse: array<f32>;          // (B,H,T)
@group(0) @binding(7) var<storage, read> bdelta: array<f32>;        // (B,H,T)
@group(0) @binding(8) var<storage, read_write> bgrad: array<f32>;   // dq (B,T,H,D) (backward_dq) / dk (B,T,HKV,D) (backward_dkdv)
@group(0) @binding(9) var<storage, read_write> bgrad2: array<f32>;  // dv (B,T,HKV,D) (backward_dkdv only)

// dq_t = SCALE Σ_j P_tj (dP_tj − delta_t) k_j, P recomputed as exp(s − lse). grid (ceil(T/WG), H, B)
@compute @workgroup_size(WG)
fn backward_dq(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let B = P.B; let T = P.T; let H = P.H; let HKV = P.HKV; let D = P.D; let SCALE = P.scale;
  let t0 = wid.x * WG;
  let t = t0 + lid.x;
  let h = wid.y;
  let b = wid.z;
  let hk = h / (H / HKV);
  let tc = min(t, T - 1u);
  let qo = ((b * T + tc) * H + h) * D;
  var qv: array<f32, DMAX>;
  var dov: array<f32, DMAX>;
  var acc: array<f32, DMAX>;
  for (var d = 0u; d < D; d++) { qv[d] = bq[qo + d] * SCALE; dov[d] = bdout[qo + d]; acc[d] = 0.0; }
  let L = blse[(b * H + h) * T + tc];
  let dl = bdelta[(b * H + h) * T + tc];
  let jEnd = min(t0 + WG, T);
  for (var j0 = 0u; j0 < jEnd; j0 += 4u) {
    let ko0 = ((b * T + j0) * HKV + hk) * D;
    let ko1 = ((b * T + min(j0 + 1u, T - 1u)) * HKV + hk) * D;
    let ko2 = ((b * T + min(j0 + 2u, T - 1u)) * HKV + hk) * D;
    let ko3 = ((b * T + min(j0 + 3u, T - 1u)) * HKV + hk) * D;
    var s0 = 0.0; var s1 = 0.0; var s2 = 0.0; var s3 = 0.0;
    var e0 = 0.0; var e1 = 0.0; var e2 = 0.0; var e3 = 0.0;
    for (var d = 0u; d < D; d++) {
      let x = qv[d];
      let y = dov[d];
      s0 += x * bk[ko0 + d]; s1 += x * bk[ko1 + d]; s2 += x * bk[ko2 + d]; s3 += x * bk[ko3 + d];
      e0 += y * bv[ko0 + d]; e1 += y * bv[ko1 + d]; e2 += y * bv[ko2 + d]; e3 += y * bv[ko3 + d];
    }
    // select() keeps a masked key's (possibly infinite) exp out of the sum
    let ds0 = select(0.0, exp(s0 - L) * (e0 - dl), keyOk(&bmask, b, j0, t, T));
    let ds1 = select(0.0, exp(s1 - L) * (e1 - dl), keyOk(&bmask, b, j0 + 1u, t, T));
    let ds2 = select(0.0, exp(s2 - L) * (e2 - dl), keyOk(&bmask, b, j0 + 2u, t, T));
    let ds3 = select(0.0, exp(s3 - L) * (e3 - dl), keyOk(&bmask, b, j0 + 3u, t, T));
    for (var d = 0u; d < D; d++) {
      acc[d] += ds0 * bk[ko0 + d] + ds1 * bk[ko1 + d] + ds2 * bk[ko2 + d] + ds3 * bk[ko3 + d];
    }
  }
  if (t < T) {
    for (var d = 0u; d < D; d++) { bgrad[qo + d] = acc[d] * SCALE; }
  }
}

// One invocation per key row (b, kv head, j): dv_j = Σ_{h in group} Σ_{t>=j} P_tj dO_t,
// dk_j = SCALE Σ_h Σ_t P_tj (dP_tj − delta_t) q_t. grid (ceil(T/WG), HKV, B)
@compute @workgroup_size(WG)
fn backward_dkdv(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let B = P.B; let T = P.T; let H = P.H; let HKV = P.HKV; let D = P.D; let SCALE = P.scale;
  let j0 = wid.x * WG;
  let j = j0 + lid.x;
  let hk = wid.y;
  let b = wid.z;
  let G = H / HKV;
  let ko = ((b * T + min(j, T - 1u)) * HKV + hk) * D;
  var kv: array<f32, DMAX>;
  var vv: array<f32, DMAX>;
  var dk: array<f32, DMAX>;
  var dv: array<f32, DMAX>;
  for (var d = 0u; d < D; d++) { kv[d] = bk[ko + d] * SCALE; vv[d] = bv[ko + d]; dk[d] = 0.0; dv[d] = 0.0; }
  // this key is real (exists, not padding); rows t >= j see it
  let real = j < T && (P.masked == 0u || bmask[b * T + min(j, T - 1u)] != 0u);
  for (var g = 0u; g < G; g++) {
    let h = hk * G + g;
    let r0 = (b * H + h) * T;
    for (var t = j0; t < T; t += 4u) { // workgroup-uniform rows; row t_i needs t_i >= j
      let ta = min(t + 1u, T - 1u);
      let tb = min(t + 2u, T - 1u);
      let tc = min(t + 3u, T - 1u);
      let qo0 = ((b * T + t) * H + h) * D;
      let qo1 = ((b * T + ta) * H + h) * D;
      let qo2 = ((b * T + tb) * H + h) * D;
      let qo3 = ((b * T + tc) * H + h) * D;
      var s0 = 0.0; var s1 = 0.0; var s2 = 0.0; var s3 = 0.0;
      var e0 = 0.0; var e1 = 0.0; var e2 = 0.0; var e3 = 0.0;
      for (var d = 0u; d < D; d++) {
        let x = kv[d];
        let y = vv[d];
        s0 += x * bq[qo0 + d]; s1 += x * bq[qo1 + d]; s2 += x * bq[qo2 + d]; s3 += x * bq[qo3 + d];
        e0 += y * bdout[qo0 + d]; e1 += y * bdout[qo1 + d]; e2 += y * bdout[qo2 + d]; e3 += y * bdout[qo3 + d];
      }
      let p0 = select(0.0, exp(s0 - blse[r0 + t]), real && t >= j);
      let p1 = select(0.0, exp(s1 - blse[r0 + ta]), real && t + 1u >= j && t + 1u < T);
      let p2 = select(0.0, exp(s2 - blse[r0 + tb]), real && t + 2u >= j && t + 2u < T);
      let p3 = select(0.0, exp(s3 - blse[r0 + tc]), real && t + 3u >= j && t + 3u < T);
      let ds0 = p0 * (e0 - bdelta[r0 + t]);
      let ds1 = p1 * (e1 - bdelta[r0 + ta]);
      let ds2 = p2 * (e2 - bdelta[r0 + tb]);
      let ds3 = p3 * (e3 - bdelta[r0 + tc]);
      for (var d = 0u; d < D; d++) {
        dv[d] += p0 * bdout[qo0 + d] + p1 * bdout[qo1 + d] + p2 * bdout[qo2 + d] + p3 * bdout[qo3 + d];
        dk[d] += ds0 * bq[qo0 + d] + ds1 * bq[qo1 + d] + ds2 * bq[qo2 + d] + ds3 * bq[qo3 + d];
      }
    }
  }
  if (j < T) {
    for (var d = 0u; d < D; d++) { bgrad[ko + d] = dk[d] * SCALE; bgrad2[ko + d] = dv[d]; }
  }
}

// ---------------------------------------------------------------- vec4 variants (D % 4 == 0)
// Same math and summation structure as the scalar kernels above, 4 head dims per load.
@group(0) @binding(1) var<storage, read> q4: array<vec4<f32>>;          // (B,T,H,D/4)
@group(0) @binding(2) var<storage, read> k4: array<vec4<f32>>;          // (B,T,HKV,D/4)
@group(0) @binding(3) var<storage, read> v4: array<vec4<f32>>;          // (B,T,HKV,D/4)
@group(0) @binding(4) var<storage, read> mask4: array<u32>;             // (B,T)
@group(0) @binding(5) var<storage, read_write> out4: array<vec4<f32>>;  // (B,T,H,D/4)
@group(0) @binding(6) var<storage, read_write> lse4: array<f32>;        // (B,H,T)

// forward with vec4 loads and vec4 private rows (D % 4 == 0): a quarter of the load and
// private-array instructions (on llvmpipe private arrays are per-lane scratch). grid (ceil(T/WG), H, B)
@compute @workgroup_size(WG)
fn forward4(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let T = P.T; let H = P.H; let HKV = P.HKV; let D4 = P.D / 4u; let SCALE = P.scale;
  let t0 = wid.x * WG;
  let t = t0 + lid.x;
  let h = wid.y;
  let b = wid.z;
  let hk = h / (H / HKV);
  let qo = ((b * T + min(t, T - 1u)) * H + h) * D4;
  var qv: array<vec4<f32>, DMAX / 4>;
  var acc: array<vec4<f32>, DMAX / 4>;
  for (var d = 0u; d < D4; d++) { qv[d] = q4[qo + d] * SCALE; acc[d] = vec4<f32>(0.0); }
  var m = NO_KEYS;
  var l = 0.0;
  let jEnd = min(t0 + WG, T);
  for (var j0 = 0u; j0 < jEnd; j0 += 4u) {
    let ko0 = ((b * T + j0) * HKV + hk) * D4;
    let ko1 = ((b * T + min(j0 + 1u, T - 1u)) * HKV + hk) * D4;
    let ko2 = ((b * T + min(j0 + 2u, T - 1u)) * HKV + hk) * D4;
    let ko3 = ((b * T + min(j0 + 3u, T - 1u)) * HKV + hk) * D4;
    var s0 = vec4<f32>(0.0); var s1 = vec4<f32>(0.0); var s2 = vec4<f32>(0.0); var s3 = vec4<f32>(0.0);
    for (var d = 0u; d < D4; d++) {
      let x = qv[d];
      s0 += x * k4[ko0 + d]; s1 += x * k4[ko1 + d]; s2 += x * k4[ko2 + d]; s3 += x * k4[ko3 + d];
    }
    let ok0 = keyOk(&mask4, b, j0, t, T);
    let ok1 = keyOk(&mask4, b, j0 + 1u, t, T);
    let ok2 = keyOk(&mask4, b, j0 + 2u, t, T);
    let ok3 = keyOk(&mask4, b, j0 + 3u, t, T);
    let z0 = select(NO_KEYS, (s0.x + s0.y) + (s0.z + s0.w), ok0);
    let z1 = select(NO_KEYS, (s1.x + s1.y) + (s1.z + s1.w), ok1);
    let z2 = select(NO_KEYS, (s2.x + s2.y) + (s2.z + s2.w), ok2);
    let z3 = select(NO_KEYS, (s3.x + s3.y) + (s3.z + s3.w), ok3);
    let mNew = max(max(m, max(z0, z1)), max(z2, z3));
    let alpha = exp(m - mNew);
    let p0 = select(0.0, exp(z0 - mNew), ok0);
    let p1 = select(0.0, exp(z1 - mNew), ok1);
    let p2 = select(0.0, exp(z2 - mNew), ok2);
    let p3 = select(0.0, exp(z3 - mNew), ok3);
    l = l * alpha + ((p0 + p1) + (p2 + p3));
    for (var d = 0u; d < D4; d++) {
      acc[d] = acc[d] * alpha + (p0 * v4[ko0 + d] + p1 * v4[ko1 + d] + p2 * v4[ko2 + d] + p3 * v4[ko3 + d]);
    }
    m = mNew;
  }
  if (t < T) {
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var d = 0u; d < D4; d++) { out4[qo + d] = acc[d] * inv; }
    lse4[(b * H + h) * T + t] = select(NO_KEYS, m + log(l), l > 0.0);
  }
}

@group(0) @binding(1) var<storage, read> cq: array<vec4<f32>>;            // (B,T,H,D/4)
@group(0) @binding(2) var<storage, read> ck: array<vec4<f32>>;            // (B,T,HKV,D/4)
@group(0) @binding(3) var<storage, read> cv: array<vec4<f32>>;            // (B,T,HKV,D/4)
@group(0) @binding(4) var<storage, read> cmask: array<u32>;               // (B,T)
@group(0) @binding(5) var<storage, read> cdout: array<vec4<f32>>;         // (B,T,H,D/4)
@group(0) @binding(6) var<storage, read> clse: array<f32>;                // (B,H,T)
@group(0) @binding(7) var<storage, read> cdelta: array<f32>;              // (B,H,T)
@group(0) @binding(8) var<storage, read_write> cgrad: array<vec4<f32>>;   // dq (B,T,H,D/4) (backward_dq4) / dk (B,T,HKV,D/4) (backward_dkdv4)
@group(0) @binding(9) var<storage, read_write> cgrad2: array<vec4<f32>>;  // dv (B,T,HKV,D/4) (backward_dkdv4 only)

fn hsum(x: vec4<f32>) -> f32 { return (x.x + x.y) + (x.z + x.w); }

// backward_dq with vec4 loads (D % 4 == 0). grid (ceil(T/WG), H, B)
@compute @workgroup_size(WG)
fn backward_dq4(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let T = P.T; let H = P.H; let HKV = P.HKV; let D4 = P.D / 4u; let SCALE = P.scale;
  let t0 = wid.x * WG;
  let t = t0 + lid.x;
  let h = wid.y;
  let b = wid.z;
  let hk = h / (H / HKV);
  let tc = min(t, T - 1u);
  let qo = ((b * T + tc) * H + h) * D4;
  var qv: array<vec4<f32>, DMAX / 4>;
  var dov: array<vec4<f32>, DMAX / 4>;
  var acc: array<vec4<f32>, DMAX / 4>;
  for (var d = 0u; d < D4; d++) { qv[d] = cq[qo + d] * SCALE; dov[d] = cdout[qo + d]; acc[d] = vec4<f32>(0.0); }
  let L = clse[(b * H + h) * T + tc];
  let dl = cdelta[(b * H + h) * T + tc];
  let jEnd = min(t0 + WG, T);
  for (var j0 = 0u; j0 < jEnd; j0 += 4u) {
    let ko0 = ((b * T + j0) * HKV + hk) * D4;
    let ko1 = ((b * T + min(j0 + 1u, T - 1u)) * HKV + hk) * D4;
    let ko2 = ((b * T + min(j0 + 2u, T - 1u)) * HKV + hk) * D4;
    let ko3 = ((b * T + min(j0 + 3u, T - 1u)) * HKV + hk) * D4;
    var s0 = vec4<f32>(0.0); var s1 = vec4<f32>(0.0); var s2 = vec4<f32>(0.0); var s3 = vec4<f32>(0.0);
    var e0 = vec4<f32>(0.0); var e1 = vec4<f32>(0.0); var e2 = vec4<f32>(0.0); var e3 = vec4<f32>(0.0);
    for (var d = 0u; d < D4; d++) {
      let x = qv[d];
      let y = dov[d];
      s0 += x * ck[ko0 + d]; s1 += x * ck[ko1 + d]; s2 += x * ck[ko2 + d]; s3 += x * ck[ko3 + d];
      e0 += y * cv[ko0 + d]; e1 += y * cv[ko1 + d]; e2 += y * cv[ko2 + d]; e3 += y * cv[ko3 + d];
    }
    let ds0 = select(0.0, exp(hsum(s0) - L) * (hsum(e0) - dl), keyOk(&cmask, b, j0, t, T));
    let ds1 = select(0.0, exp(hsum(s1) - L) * (hsum(e1) - dl), keyOk(&cmask, b, j0 + 1u, t, T));
    let ds2 = select(0.0, exp(hsum(s2) - L) * (hsum(e2) - dl), keyOk(&cmask, b, j0 + 2u, t, T));
    let ds3 = select(0.0, exp(hsum(s3) - L) * (hsum(e3) - dl), keyOk(&cmask, b, j0 + 3u, t, T));
    for (var d = 0u; d < D4; d++) {
      acc[d] += ds0 * ck[ko0 + d] + ds1 * ck[ko1 + d] + ds2 * ck[ko2 + d] + ds3 * ck[ko3 + d];
    }
  }
  if (t < T) {
    for (var d = 0u; d < D4; d++) { cgrad[qo + d] = acc[d] * SCALE; }
  }
}

// backward_dkdv with vec4 loads (D % 4 == 0). grid (ceil(T/WG), HKV, B)
@compute @workgroup_size(WG)
fn backward_dkdv4(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let T = P.T; let H = P.H; let HKV = P.HKV; let D4 = P.D / 4u; let SCALE = P.scale;
  let j0 = wid.x * WG;
  let j = j0 + lid.x;
  let hk = wid.y;
  let b = wid.z;
  let G = H / HKV;
  let ko = ((b * T + min(j, T - 1u)) * HKV + hk) * D4;
  var kv: array<vec4<f32>, DMAX / 4>;
  var vv: array<vec4<f32>, DMAX / 4>;
  var dk: array<vec4<f32>, DMAX / 4>;
  var dv: array<vec4<f32>, DMAX / 4>;
  for (var d = 0u; d < D4; d++) { kv[d] = ck[ko + d] * SCALE; vv[d] = cv[ko + d]; dk[d] = vec4<f32>(0.0); dv[d] = vec4<f32>(0.0); }
  let real = j < T && (P.masked == 0u || cmask[b * T + min(j, T - 1u)] != 0u);
  for (var g = 0u; g < G; g++) {
    let h = hk * G + g;
    let r0 = (b * H + h) * T;
    for (var t = j0; t < T; t += 4u) {
      let ta = min(t + 1u, T - 1u);
      let tb = min(t + 2u, T - 1u);
      let tc = min(t + 3u, T - 1u);
      let qo0 = ((b * T + t) * H + h) * D4;
      let qo1 = ((b * T + ta) * H + h) * D4;
      let qo2 = ((b * T + tb) * H + h) * D4;
      let qo3 = ((b * T + tc) * H + h) * D4;
      var s0 = vec4<f32>(0.0); var s1 = vec4<f32>(0.0); var s2 = vec4<f32>(0.0); var s3 = vec4<f32>(0.0);
      var e0 = vec4<f32>(0.0); var e1 = vec4<f32>(0.0); var e2 = vec4<f32>(0.0); var e3 = vec4<f32>(0.0);
      for (var d = 0u; d < D4; d++) {
        let x = kv[d];
        let y = vv[d];
        s0 += x * cq[qo0 + d]; s1 += x * cq[qo1 + d]; s2 += x * cq[qo2 + d]; s3 += x * cq[qo3 + d];
        e0 += y * cdout[qo0 + d]; e1 += y * cdout[qo1 + d]; e2 += y * cdout[qo2 + d]; e3 += y * cdout[qo3 + d];
      }
      let p0 = select(0.0, exp(hsum(s0) - clse[r0 + t]), real && t >= j);
      let p1 = select(0.0, exp(hsum(s1) - clse[r0 + ta]), real && t + 1u >= j && t + 1u < T);
      let p2 = select(0.0, exp(hsum(s2) - clse[r0 + tb]), real && t + 2u >= j && t + 2u < T);
      let p3 = select(0.0, exp(hsum(s3) - clse[r0 + tc]), real && t + 3u >= j && t + 3u < T);
      let ds0 = p0 * (hsum(e0) - cdelta[r0 + t]);
      let ds1 = p1 * (hsum(e1) - cdelta[r0 + ta]);
      let ds2 = p2 * (hsum(e2) - cdelta[r0 + tb]);
      let ds3 = p3 * (hsum(e3) - cdelta[r0 + tc]);
      for (var d = 0u; d < D4; d++) {
        dv[d] += p0 * cdout[qo0 + d] + p1 * cdout[qo1 + d] + p2 * cdout[qo2 + d] + p3 * cdout[qo3 + d];
        dk[d] += ds0 * cq[qo0 + d] + ds1 * cq[qo1 + d] + ds2 * cq[qo2 + d] + ds3 * cq[qo3 + d];
      }
    }
  }
  if (j < T) {
    for (var d = 0u; d < D4; d++) { cgrad[ko + d] = dk[d] * SCALE; cgrad2[ko + d] = dv[d]; }
  }
}

// ---------------------------------------------------------------- decode
// One new query per sequence against a KV cache; `pos` (valid cache rows) comes from a uniform so
// one pipeline serves every step. One workgroup of WG lanes per (b, h): lane i runs an online
// softmax over keys i, i+WG, ...; the partial (m, l, acc) are then merged through workgroup memory.

@group(0) @binding(1) var<storage, read> dq_q: array<f32>;          // (B,1,H,D)
@group(0) @binding(2) var<storage, read> dk_cache: array<f32>;      // (B,MAXT,HKV,D)
@group(0) @binding(3) var<storage, read> dv_cache: array<f32>;      // (B,MAXT,HKV,D)
@group(0) @binding(4) var<storage, read> dmask: array<u32>;         // (B,MAXT) (unread unless P.masked != 0)
@group(0) @binding(5) var<storage, read_write> dout: array<f32>;    // (B,1,H,D)

var<workgroup> wm: array<f32, WG>;       // per-lane running max
var<workgroup> wl: array<f32, WG>;       // per-lane Σ exp(s − m)
var<workgroup> wacc: array<f32, WG * DMAX>; // (WG, D) per-lane unnormalised outputs, rescaled to the global max

// grid (H, B); P.T = MAXT
@compute @workgroup_size(WG)
fn decode(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let B = P.B; let T = P.T; let H = P.H; let HKV = P.HKV; let D = P.D; let SCALE = P.scale;
  let h = wid.x;
  let b = wid.y;
  let i = lid.x;
  let hk = h / (H / HKV);
  let MAXT = P.T;
  let pos = min(P.pos, MAXT);
  let qo = (b * H + h) * D;
  var qv: array<f32, DMAX>;
  var acc: array<f32, DMAX>;
  for (var d = 0u; d < D; d++) { qv[d] = dq_q[qo + d] * SCALE; acc[d] = 0.0; }
  var m = NO_KEYS;
  var l = 0.0;
  for (var j = i; j < pos; j += WG) {
    if ((P.masked != 0u) && dmask[b * MAXT + j] == 0u) { continue; }
    let ko = ((b * MAXT + j) * HKV + hk) * D;
    var s = 0.0;
    for (var d = 0u; d < D; d++) { s += qv[d] * dk_cache[ko + d]; }
    if (s > m) {
      let alpha = exp(m - s);
      l *= alpha;
      for (var d = 0u; d < D; d++) { acc[d] *= alpha; }
      m = s;
    }
    let p = exp(s - m);
    l += p;
    for (var d = 0u; d < D; d++) { acc[d] += p * dv_cache[ko + d]; }
  }
  wm[i] = m;
  workgroupBarrier();
  var M = NO_KEYS;
  for (var x = 0u; x < WG; x++) { M = max(M, wm[x]); }
  let f = select(0.0, exp(m - M), l > 0.0);
  wl[i] = l * f;
  for (var d = 0u; d < D; d++) { wacc[i * D + d] = acc[d] * f; }
  workgroupBarrier();
  var L = 0.0;
  for (var x = 0u; x < WG; x++) { L += wl[x]; }
  let inv = select(0.0, 1.0 / L, L > 0.0);
  for (var d = i; d < D; d += WG) {
    var s = 0.0;
    for (var x = 0u; x < WG; x++) { s += wacc[x * D + d]; }
    dout[qo + d] = s * inv;
  }
}
