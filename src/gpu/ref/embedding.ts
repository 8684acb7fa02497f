// CPU reference: embedding gather and its scatter-add backward, in f64.
// Ids outside [0, V) (e.g. -1 padding) read as a zero row and receive no gradient, as in the GPU op.

type Num = ArrayLike<number>;

/** out[n, :] = table[ids[n], :]. table (V, C) → (N, C). */
export function embeddingRef(ids: Num, table: Num, V: number, C: number): Float64Array {
  const N = ids.length;
  const out = new Float64Array(N * C);
  for (let n = 0; n < N; n++) {
    const id = ids[n]!;
    if (id < 0 || id >= V) continue;
    for (let c = 0; c < C; c++) out[n * C + c] = table[id * C + c]!;
  }
  return out;
}

/** dTable[v, :] = Σ_{n: ids[n] = v} dy[n, :], summed in ascending n. dy (N, C) → (V, C). */
export function embeddingBackwardRef(dy: Num, ids: Num, V: number, C: number): Float64Array {
  const N = ids.length;
  const out = new Float64Array(V * C);
  for (let n = 0; n < N; n++) {
    const id = ids[n]!;
    if (id < 0 || id >= V) continue;
    for (let c = 0; c < C; c++) out[id * C + c] += dy[n * C + c]!;
  }
  return out;
}
