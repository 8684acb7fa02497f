// CPU reference of the COLA knot merge W ← W + s·B·A (PyTorch Linear layout, W (d,k)).
export type Vec = Float64Array | Float32Array | number[];

/** Returns W + s·(B·A) as a new Float64Array (d,k); w (d,k), a (r,k), b (d,r). */
export function mergeLoraRef(w: Vec, a: Vec, b: Vec, d: number, k: number, r: number, scale: number): Float64Array {
  if (w.length !== d * k || a.length !== r * k || b.length !== d * r) throw new Error('mergeLoraRef: bad sizes');
  const out = new Float64Array(d * k);
  for (let i = 0; i < d; i++)
    for (let j = 0; j < k; j++) {
      let acc = 0;
      for (let x = 0; x < r; x++) acc += b[i * r + x]! * a[x * k + j]!;
      out[i * k + j] = w[i * k + j]! + scale * acc;
    }
  return out;
}
