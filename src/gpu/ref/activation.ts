// CPU reference: FFN activations and bias gradient, in f64.

type Num = ArrayLike<number>;

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
const GELU_K = Math.sqrt(2 / Math.PI);
const GELU_A = 0.044715;

/** swiglu(g, u) = silu(g)·u = g·σ(g)·u (Llama FFN). */
export function swigluRef(g: Num, u: Num): Float64Array {
  const out = new Float64Array(g.length);
  for (let i = 0; i < g.length; i++) out[i] = g[i]! * sigmoid(g[i]!) * u[i]!;
  return out;
}

/** dU = dy·silu(g);  dG = dy·u·σ(g)·(1 + g·(1 − σ(g))). */
export function swigluBackwardRef(dy: Num, g: Num, u: Num): { dGate: Float64Array; dUp: Float64Array } {
  const dGate = new Float64Array(g.length);
  const dUp = new Float64Array(g.length);
  for (let i = 0; i < g.length; i++) {
    const s = sigmoid(g[i]!);
    dUp[i] = dy[i]! * g[i]! * s;
    dGate[i] = dy[i]! * u[i]! * s * (1 + g[i]! * (1 - s));
  }
  return { dGate, dUp };
}

export function reluRef(x: Num): Float64Array {
  return Float64Array.from(x, (v) => (v > 0 ? v : 0));
}

/** dx = dy where x > 0, else 0 (subgradient 0 at x = 0). */
export function reluBackwardRef(dy: Num, x: Num): Float64Array {
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i]! > 0 ? dy[i]! : 0;
  return out;
}

/** GPT-2 "gelu_new": 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). */
export function geluRef(x: Num): Float64Array {
  return Float64Array.from(x, (v) => 0.5 * v * (1 + Math.tanh(GELU_K * (v + GELU_A * v * v * v))));
}

/** d/dx = 0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²), t = tanh(...). */
export function geluBackwardRef(dy: Num, x: Num): Float64Array {
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    const t = Math.tanh(GELU_K * (v + GELU_A * v * v * v));
    out[i] = dy[i]! * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * GELU_K * (1 + 3 * GELU_A * v * v));
  }
  return out;
}

/** Column sums of dy (N, C) → (C): the gradient of a bias added to every row. */
export function biasGradRef(dy: Num, N: number, C: number): Float64Array {
  const out = new Float64Array(C);
  for (let n = 0; n < N; n++) for (let c = 0; c < C; c++) out[c] += dy[n * C + c]!;
  return out;
}
