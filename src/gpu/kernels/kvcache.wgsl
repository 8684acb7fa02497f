// Generation: apply RoPE to the new positions' q and k and write k, v into the KV cache, in one
// dispatch (decode is bound by dispatch count). Positions are start + t; `start` comes from a
// uniform so one pipeline serves every decode step.
//
// q, k, v are read from (possibly the same) row-major buffers with a row stride and a column
// offset, so GPT-2's fused c_attn output (N, 3·H·D) needs no split.
override B: u32;
override T: u32;        // new positions per sequence
override H: u32;        // query heads
override HKV: u32;      // key/value heads
override D: u32;        // head dim (even when ROPE = 1)
override MAXT: u32;     // cache length
override Q_STRIDE: u32;
override Q_OFF: u32;
override K_STRIDE: u32;
override K_OFF: u32;
override V_STRIDE: u32;
override V_OFF: u32;
override ROPE: u32;        // 1 = rotate q and k
override INTERLEAVED: u32; // 1 = llama2.c pairs (2i, 2i+1); 0 = HF rotate_half pairs (i, i + D/2)
override WG: u32 = 64;

struct Params { start: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> qsrc: array<f32>;            // (B·T, Q_STRIDE)
@group(0) @binding(1) var<storage, read> ksrc: array<f32>;            // (B·T, K_STRIDE)
@group(0) @binding(2) var<storage, read> vsrc: array<f32>;            // (B·T, V_STRIDE)
@group(0) @binding(3) var<storage, read_write> qout: array<f32>;      // (B, T, H, D)
@group(0) @binding(4) var<storage, read_write> kcache: array<f32>;    // (B, MAXT, HKV, D)
@group(0) @binding(5) var<storage, read_write> vcache: array<f32>;    // (B, MAXT, HKV, D)
@group(0) @binding(6) var<uniform> params: Params;
@group(0) @binding(7) var<storage, read> inv_freq: array<f32>;     // (D/2) the model's RoPE inverse frequencies (src/model/rope.ts); any buffer when ROPE = 0

fn pair_index(i: u32) -> vec2u {
  if (INTERLEAVED == 1u) { return vec2u(2u * i, 2u * i + 1u); }
  return vec2u(i, i + D / 2u);
}

// One invocation per (row = b·T + t, head slot, pair i); slots: H q heads, then HKV k, then HKV v.
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let idx = gid.x + gid.y * nwg.x * WG;
  let P = D / 2u;
  let slots = H + 2u * HKV;
  if (idx >= B * T * slots * P) { return; }
  let i = idx % P;
  let slot = (idx / P) % slots;
  let row = idx / (P * slots);
  let b = row / T;
  let t = row % T;
  let pos = params.start + t;
  let pr = pair_index(i);
  // angle = pos · inv_freq[i], in f32 as llama2.c and HF compute it (inv_freq = θ^(−2i/D), scaled)
  var c = 1.0;
  var s = 0.0;
  if (ROPE == 1u) {
    let ang = f32(pos) * inv_freq[i];
    c = cos(ang);
    s = sin(ang);
  }
  if (slot < H) {
    let base = row * Q_STRIDE + Q_OFF + slot * D;
    let x0 = qsrc[base + pr.x];
    let x1 = qsrc[base + pr.y];
    let o = ((b * T + t) * H + slot) * D;
    if (ROPE == 1u) {
      qout[o + pr.x] = x0 * c - x1 * s;
      qout[o + pr.y] = x0 * s + x1 * c;
    } else {
      qout[o + pr.x] = x0;
      qout[o + pr.y] = x1;
    }
  } else if (slot < H + HKV) {
    let hk = slot - H;
    let base = row * K_STRIDE + K_OFF + hk * D;
    let x0 = ksrc[base + pr.x];
    let x1 = ksrc[base + pr.y];
    let o = ((b * MAXT + pos) * HKV + hk) * D;
    if (ROPE == 1u) {
      kcache[o + pr.x] = x0 * c - x1 * s;
      kcache[o + pr.y] = x0 * s + x1 * c;
    } else {
      kcache[o + pr.x] = x0;
      kcache[o + pr.y] = x1;
    }
  } else {
    let hv = slot - H - HKV;
    let base = row * V_STRIDE + V_OFF + hv * D;
    let o = ((b * MAXT + pos) * HKV + hv) * D;
    vcache[o + pr.x] = vsrc[base + pr.x];
    vcache[o + pr.y] = vsrc[base + pr.y];
  }
}
