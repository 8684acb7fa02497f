// LoRA linear: y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ (+ LoRA bias), W and b frozen. Built from matmul
// dispatches (the rank-r products are thin, so they are cheap next to x·Wᵀ).
import { ShapeError, type Engine, type Tensor } from '../engine.ts';
import { colSum, matmul } from './matmul.ts';

export interface LoraParams {
  a: Tensor; // (r, k)
  b: Tensor; // (d, r)
  scale: number;
  bias?: Tensor; // (d)
}

function dims(x: Tensor, w: Tensor, lora: LoraParams) {
  if (w.shape.length !== 2 || lora.a.shape.length !== 2 || lora.b.shape.length !== 2) throw new ShapeError('loraLinear: w, A, B must be 2-D');
  const [d, k] = w.shape as [number, number];
  const r = lora.a.shape[0]!;
  if (x.shape.at(-1) !== k || lora.a.shape[1] !== k || lora.b.shape[0] !== d || lora.b.shape[1] !== r) {
    throw new ShapeError(`loraLinear: x ${x}, w ${w}, A ${lora.a}, B ${lora.b}`);
  }
  if (lora.bias && lora.bias.numel !== d) throw new ShapeError(`loraLinear: LoRA bias ${lora.bias} for d=${d}`);
  return { n: x.numel / k, k, d, r };
}

/** x: (..., k), w: (d, k), bias: (d) | null → y (..., d) and h = x·Aᵀ (n, r) saved for backward. */
export function loraLinear(e: Engine, x: Tensor, w: Tensor, bias: Tensor | null, lora: LoraParams): { y: Tensor; h: Tensor } {
  const { n, k, d } = dims(x, w, lora);
  const x2 = x.view([n, k]);
  const h = matmul(e, x2, lora.a, { transB: true }); // (n, r)
  const y = matmul(e, x2, w, { transB: true, bias: bias ?? undefined }); // (n, d)
  // y += s·h·Bᵀ (+ LoRA bias) in one accumulating dispatch.
  matmul(e, h, lora.b, { transB: true, alpha: lora.scale, accumulate: y, bias: lora.bias });
  return { y: y.view([...x.shape.slice(0, -1), d]), h };
}

/**
 * Gradients for upstream dy (..., d), never forming dW: dB = s·dyᵀ·h (d, r), dh = s·dy·B (n, r),
 * dA = dhᵀ·x (r, k), dx = dy·W + dh·A (..., k), dBias = Σ_rows dy (d) when the LoRA has a bias.
 */
export function loraLinearBackward(
  e: Engine,
  dy: Tensor,
  x: Tensor,
  w: Tensor,
  h: Tensor,
  lora: LoraParams,
  opts: { needDx: boolean },
): { dx?: Tensor; dA: Tensor; dB: Tensor; dBias?: Tensor } {
  const { n, k, d, r } = dims(x, w, lora);
  if (dy.numel !== n * d || h.numel !== n * r) throw new ShapeError(`loraLinearBackward: dy ${dy}, h ${h} for n=${n}, d=${d}, r=${r}`);
  const dy2 = dy.view([n, d]);
  const x2 = x.view([n, k]);
  const dB = matmul(e, dy2, h.view([n, r]), { transA: true, alpha: lora.scale });
  const dh = matmul(e, dy2, lora.b, { alpha: lora.scale });
  const dA = matmul(e, dh, x2, { transA: true });
  const out: { dx?: Tensor; dA: Tensor; dB: Tensor; dBias?: Tensor } = { dA, dB };
  if (opts.needDx) {
    const dx = matmul(e, dy2, w);
    matmul(e, dh, lora.a, { accumulate: dx });
    out.dx = dx.view(x.shape);
  }
  if (lora.bias) out.dBias = colSum(e, dy2, e.empty([d]));
  dh.free(); // later dispatches that reuse its buffer are ordered after the ones above
  return out;
}
