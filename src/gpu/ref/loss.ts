// CPU reference: softmax cross-entropy with ignored targets (−1), and per-token log-probs, in f64.
//   loss   = −(1/count)·Σ_{n: t[n] ≠ −1} log softmax(logits[n])[t[n]]   (0 when count = 0)
//   dLogits[n] = (softmax(logits[n]) − onehot(t[n])) / count for kept rows, 0 for ignored rows.

type Num = ArrayLike<number>;

function logSumExp(logits: Num, off: number, V: number): number {
  let m = -Infinity;
  for (let v = 0; v < V; v++) m = Math.max(m, logits[off + v]!);
  let s = 0;
  for (let v = 0; v < V; v++) s += Math.exp(logits[off + v]! - m);
  return m + Math.log(s);
}

/** log softmax(logits[n])[targets[n]] for each row; 0 for ignored (−1) rows. */
export function tokenLogprobsRef(logits: Num, targets: Num, N: number, V: number): Float64Array {
  const out = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    const t = targets[n]!;
    if (t === -1) continue;
    out[n] = logits[n * V + t]! - logSumExp(logits, n * V, V);
  }
  return out;
}

export function crossEntropyRef(logits: Num, targets: Num, N: number, V: number): { loss: number; dLogits: Float64Array; count: number } {
  let count = 0;
  for (let n = 0; n < N; n++) if (targets[n] !== -1) count++;
  const dLogits = new Float64Array(N * V);
  let sum = 0;
  for (let n = 0; n < N; n++) {
    const t = targets[n]!;
    if (t === -1) continue;
    const lse = logSumExp(logits, n * V, V);
    sum += lse - logits[n * V + t]!;
    for (let v = 0; v < V; v++) dLogits[n * V + v] = (Math.exp(logits[n * V + v]! - lse) - (v === t ? 1 : 0)) / count;
  }
  return { loss: count ? sum / count : 0, dLogits, count };
}
