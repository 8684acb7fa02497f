// One forward of the serving loop: a ragged batch of query rows from several sequences of one
// model (one row per decoding sequence, plus chunks of prompts being prefilled) over the paged KV
// cache. Every product runs with M = N rows; attention reads each row's own sequence
// (src/gpu/kernels/paged.wgsl). Logits are computed only for the rows that need them (the last
// prompt row of a finished prefill and every decode row).
import { ShapeError, type Engine, type Tensor } from '../gpu/engine.ts';
import { add } from '../gpu/ops/elementwise.ts';
import { embedding } from '../gpu/ops/embedding.ts';
import { linear, matmul } from '../gpu/ops/matmul.ts';
import { swiglu, relu, gelu } from '../gpu/ops/activation.ts';
import { pagedAttention, pagedWrite, type PagedShape } from '../gpu/ops/paged.ts';
import type { Strided } from '../gpu/ops/kvcache.ts';
import type { KvPool } from './kvpool.ts';
import type { TransformerModel } from './transformer.ts';
import { familyOf, plainMlp } from './names.ts';
import { FUSED_GEMV_MAX_ROWS, gateUpRmsGemv, qkvRmsGemv, residGemv } from '../gpu/ops/decode-layer.ts';
import type { FusedLayers } from './generate.ts';

export interface BatchRow {
  /** Index into `tables` of this row's sequence. */
  table: number;
  /** Position of this row's token in its sequence. */
  pos: number;
  token: number;
  /** Whether this row's logits are returned. */
  logits: boolean;
}

/**
 * Records the forward; returns the logits (M, V) of the rows with `logits`, in row order, or null
 * when no row asks for them (a prompt chunk that only fills the cache). Nothing is read back.
 */
export function forwardRows(e: Engine, model: TransformerModel, pool: KvPool, rows: BatchRow[], tables: number[][], layers: FusedLayers | null = null): Tensor | null {
  const c = model.config;
  const N = rows.length;
  const BS = pool.blockSize;
  const MAXB = Math.ceil(c.maxSeqLen / BS);
  if (N === 0) throw new ShapeError('forwardRows: no rows');
  if (pool.shape.L !== c.nLayers || pool.shape.HKV !== c.nKvHeads || pool.shape.D !== c.headDim) throw new ShapeError('forwardRows: the pool was made for another model shape');
  const rowData = new Uint32Array(2 * N);
  const ids = new Int32Array(N);
  const sel: number[] = [];
  rows.forEach((r, i) => {
    const t = tables[r.table];
    if (!t || r.pos < 0 || r.pos >= c.maxSeqLen || Math.floor(r.pos / BS) >= t.length) throw new ShapeError(`forwardRows: row ${i} at position ${r.pos} has no cache block`);
    rowData[2 * i] = r.table;
    rowData[2 * i + 1] = r.pos;
    ids[i] = r.token;
    if (r.logits) sel.push(i);
  });
  const tableData = new Uint32Array(tables.length * MAXB);
  tables.forEach((t, s) => tableData.set(t.slice(0, MAXB), s * MAXB));
  const rowsT = e.upload(rowData, [N, 2], 'u32');
  const tablesT = e.upload(tableData, [tables.length, MAXB], 'u32');
  const paged = { rows: rowsT, tables: tablesT, n: N };
  const shape: PagedShape = { H: c.nHeads, HKV: c.nKvHeads, D: c.headDim, BS, MAXB };
  const rope = model.ropeGpu;
  // Up to 8 rows with the fused layer products (ops/decode-layer.ts): q/k/v with the RMSNorm and
  // biases in one dispatch, o/down with the residual add, gate/up with the RMSNorm and SiLU·mul.
  const fl = layers && N <= FUSED_GEMV_MAX_ROWS ? layers : null;
  const temps: Tensor[] = [rowsT, tablesT];
  try {
    const idT = e.upload(ids, [N], 'i32');
    temps.push(idT);
    let x = embedding(e, idT, model.embedding);
    if (model.positionTable) {
      const pos = e.upload(Int32Array.from(rows, (r) => r.pos + c.positionOffset), [N], 'i32');
      const pe = embedding(e, pos, model.positionTable);
      const x1 = add(e, x, pe);
      for (const t of [pos, pe, x]) t.free();
      x = x1;
    }
    for (let i = 0; i < c.nLayers; i++) {
      const L = model.layers[i]!;
      let q: Strided, k: Strided, v: Strided;
      const owned: Tensor[] = [];
      const n1 = fl ? null : model.applyNorm(x, L.attnNorm);
      if (fl) {
        const lin = (s: string) => L.linears.get(s)!.w;
        const qkv = qkvRmsGemv(e, x, L.attnNorm.w, c.normEps, lin('q'), lin('k'), lin('v'), fl.qkvBias(i));
        owned.push(qkv);
        const NQ = c.nHeads * c.headDim, NKV = c.nKvHeads * c.headDim;
        q = { t: qkv, stride: NQ + 2 * NKV, off: 0 };
        k = { t: qkv, stride: NQ + 2 * NKV, off: NQ };
        v = { t: qkv, stride: NQ + 2 * NKV, off: NQ + NKV };
      } else if (familyOf(c.arch).fusedQkv) {
        const lin = L.linears.get(familyOf(c.arch).fusedQkv!)!;
        const qkv = linear(e, n1!, lin.w, lin.b);
        owned.push(qkv);
        q = { t: qkv, stride: 3 * c.dim, off: 0 };
        k = { t: qkv, stride: 3 * c.dim, off: c.dim };
        v = { t: qkv, stride: 3 * c.dim, off: 2 * c.dim };
      } else {
        const mk = (s: string): Strided => {
          const lin = L.linears.get(s)!;
          const t = linear(e, n1!, lin.w, lin.b);
          owned.push(t);
          return { t, stride: t.shape.at(-1)!, off: 0 };
        };
        q = mk('q');
        k = mk('k');
        v = mk('v');
      }
      n1?.free();
      const cache = pool.layer(i);
      const qr = pagedWrite(e, q, k, v, cache, paged, shape, rope);
      for (const t of owned) t.free();
      const att = pagedAttention(e, qr, cache, paged, shape);
      qr.free();
      const o = L.linears.get(familyOf(c.arch).attnOut)!;
      if (fl) {
        residGemv(e, att.view([N, c.nHeads * c.headDim]), o.w, x, o.b); // x += att·Woᵀ + b
        att.free();
        const act = gateUpRmsGemv(e, x, L.ffnNorm.w, c.normEps, L.linears.get('gate')!.w, L.linears.get('up')!.w);
        residGemv(e, act, L.linears.get('down')!.w, x); // x += act·W_downᵀ
        act.free();
        continue;
      }
      matmul(e, att.view([N, c.nHeads * c.headDim]), o.w, { transB: true, accumulate: x, bias: o.b ?? undefined }); // x += att·Woᵀ + b
      att.free();
      const n2 = model.applyNorm(x, L.ffnNorm);
      let act: Tensor;
      let down;
      if (c.gatedFfn) {
        const g = L.linears.get('gate')!;
        const u = L.linears.get('up')!;
        const gt = linear(e, n2, g.w, g.b);
        const ut = linear(e, n2, u.w, u.b);
        act = swiglu(e, gt, ut);
        gt.free();
        ut.free();
        down = L.linears.get('down')!;
      } else {
        const [fc1, fc2] = plainMlp(c.arch);
        const l1 = L.linears.get(fc1!)!;
        const pre = linear(e, n2, l1.w, l1.b);
        act = c.activation === 'relu' ? relu(e, pre) : gelu(e, pre);
        pre.free();
        down = L.linears.get(fc2!)!;
      }
      n2.free();
      matmul(e, act, down.w, { transB: true, accumulate: x, bias: down.b ?? undefined }); // x += act·W_downᵀ + b
      act.free();
    }
    if (sel.length === 0) {
      x.free();
      return null;
    }
    let last = x;
    if (sel.length !== N) {
      // Gather the rows that need logits (embedding = row gather).
      const selT = e.upload(Int32Array.from(sel), [sel.length], 'i32');
      last = embedding(e, selT, x);
      selT.free();
      x.free();
    }
    const logits = model.headLogits(last);
    last.free();
    return logits;
  } finally {
    for (const t of temps) t.free();
  }
}
