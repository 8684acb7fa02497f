// Embedding gather and its deterministic scatter-add backward.
//
// Backward without float atomics: for every token n, emb_links finds the next token with the same
// id (nxt[n], −1 if none) and whether n is the first one (head[n]). Then emb_scatter runs one lane
// per (head token, column) and walks its chain, summing dy rows in ascending token order, and
// writes the vocabulary row once. The result is bit-reproducible and independent of scheduling.
// emb_links costs O(N²) integer compares (≈1M for N = 1024 tokens), far below the O(N·C) float
// work for realistic C; a sort-based variant would be needed only for N in the tens of thousands.
override C: u32;       // embedding width
override WG: u32 = 64;

// tokens, vocabulary size; the gather reads rows [lo, hi) of the vocabulary from a table chunk
// bound from row lo (a table over the storage-binding limit is gathered chunk by chunk).
struct Params { n: u32, v: u32, lo: u32, hi: u32 }

// ---------------------------------------------------------------- gather
@group(0) @binding(0) var<storage, read> g_ids: array<i32>;        // (N)
@group(0) @binding(1) var<storage, read> g_table: array<f32>;      // (V, C)
@group(0) @binding(2) var<storage, read_write> g_out: array<f32>;  // (N, C)
@group(0) @binding(3) var<uniform> g_p: Params; // (N tokens, V)

// Ids outside [0, V) (e.g. −1 padding) give a zero row.
@compute @workgroup_size(WG)
fn emb_fwd(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= g_p.n * C) { return; }
  let n = i / C;
  let c = i - n * C;
  let id = g_ids[n];
  var v = 0.0;
  if (id >= 0 && u32(id) < g_p.v) {
    if (u32(id) < g_p.lo || u32(id) >= g_p.hi) { return; } // another chunk's row
    v = g_table[(u32(id) - g_p.lo) * C + c];
  }
  g_out[i] = v;
}

// ---------------------------------------------------------------- backward, step 1: chains
@group(0) @binding(0) var<storage, read> l_ids: array<i32>;        // (N)
@group(0) @binding(1) var<storage, read_write> l_nxt: array<i32>;  // (N) next token with the same id, or −1
@group(0) @binding(2) var<storage, read_write> l_head: array<u32>; // (N) 1 if first token of a valid id
@group(0) @binding(3) var<uniform> l_p: Params; // (N tokens, V)

@compute @workgroup_size(WG)
fn emb_links(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let n = gid.x + gid.y * nwg.x * WG;
  if (n >= l_p.n) { return; }
  let id = l_ids[n];
  var head = select(0u, 1u, id >= 0 && u32(id) < l_p.v);
  for (var m = 0u; m < n && head == 1u; m++) {
    if (l_ids[m] == id) { head = 0u; }
  }
  var nx = -1;
  for (var m = n + 1u; m < l_p.n; m++) {
    if (l_ids[m] == id) { nx = i32(m); break; }
  }
  l_nxt[n] = nx;
  l_head[n] = head;
}

// ---------------------------------------------------------------- backward, step 2: chain sums
@group(0) @binding(0) var<storage, read> s_dy: array<f32>;         // (N, C)
@group(0) @binding(1) var<storage, read> s_ids: array<i32>;        // (N)
@group(0) @binding(2) var<storage, read> s_nxt: array<i32>;        // (N)
@group(0) @binding(3) var<storage, read> s_head: array<u32>;       // (N)
@group(0) @binding(4) var<storage, read_write> s_dt: array<f32>;   // (V, C), zeroed beforehand
@group(0) @binding(5) var<uniform> s_p: Params; // (N tokens, V)

// grid: (ceil(C/WG), tokens folded over y and z)
@compute @workgroup_size(WG)
fn emb_scatter(@builtin(global_invocation_id) gid: vec3u, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let n = wid.y + wid.z * nwg.y;
  let c = gid.x;
  if (n >= s_p.n || c >= C) { return; }
  if (s_head[n] == 0u) { return; }
  var acc = 0.0;
  var m = i32(n);
  loop {
    acc += s_dy[u32(m) * C + c];
    m = s_nxt[u32(m)];
    if (m < 0) { break; }
  }
  s_dt[u32(s_ids[n]) * C + c] = acc;
}
