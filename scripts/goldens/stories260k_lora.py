#!/usr/bin/python3
"""Golden for the LoRA training forward/backward on stories260K -> test/golden/stories260k_lora.gld

Run: /usr/bin/python3 scripts/goldens/stories260k_lora.py [path/to/stories260K.bin]
(default model path: models/stories260K/stories260K.bin in the repository (bundled),
 or $STORIES260K_BIN; the file's sha256 must equal the pinned upstream value.)

Everything is computed in float64 from the f32 model weights and f32-rounded LoRA factors (the
values stored in the golden are exactly the values the reference computed with), then stored as f32.
A float32 run of the same graph is made too; its max deviation from the f64 result is recorded in
header.meta.f32_vs_f64 to show how much f32 rounding alone moves each quantity.

Conventions (llama2.c, identical to HF Llama except for the RoPE pairing noted below):
- Checkpoint: llama2.c legacy v0: 7 x i32 header (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
  vocab_size (>0: classifier shared with token embedding), seq_len), then f32 arrays
  token_embedding (V,dim), rms_att (L,dim), wq (L,dim,dim), wk (L,kv_dim,dim), wv (L,kv_dim,dim),
  wo (L,dim,dim), rms_ffn (L,dim), w1 (L,hidden,dim), w2 (L,dim,hidden), w3 (L,hidden,dim),
  rms_final (dim), freq_cis_real (seq_len, head_dim/2), freq_cis_imag (same; unused).
  Every weight matrix is (out, in) row-major: y = x @ W^T (PyTorch Linear convention).
- RMSNorm: y = x * w / sqrt(mean(x^2) + 1e-5).
- Attention: head_dim = dim / n_heads = 8; q head h uses kv head h // (n_heads / n_kv_heads)
  (kv heads repeated *interleaved*: q heads 0,1 -> kv 0; 2,3 -> kv 1; ...).
  Scores = q.k / sqrt(head_dim); key j is visible to query t iff j <= t AND key_mask[b, j] == 1.
  Softmax over visible keys; no query row is ever fully masked here (key 0 is always real).
- RoPE: theta 10000, applied to q and k after the projections (after LoRA), per head, with
  INTERLEAVED pairs (x[2i], x[2i+1]), i = 0..head_dim/2-1, rotated by angle pos * theta^(-2i/head_dim):
  x'[2i] = x[2i] cos - x[2i+1] sin,  x'[2i+1] = x[2i] sin + x[2i+1] cos.  pos = t (0-based token index in
  the sequence; padding does not change positions).  (HF Llama checkpoints use the rotate-half
  pairing (i, i + head_dim/2) on permuted wq/wk; llama2.c weights use the interleaved one.)
- FFN: w2( silu(w1 x) * (w3 x) ).  Final RMSNorm, logits = x @ token_embedding^T (shared classifier).
- LoRA on q and v of every layer: y = x W^T + s * (x A^T) B^T with A (r, in), B (out, r)
  (PEFT lora_A.weight / lora_B.weight layout), r = 4, alpha = 8, s = alpha / r = 2, no LoRA bias,
  no dropout.  For q: A (4,64), B (64,4); for v: A (4,64), B (32,4) (v has kv_dim = 32 outputs).
- LoRA factors are fixed and non-zero so that dL/dA is informative (with B = 0, as at real init,
  dL/dA would be exactly 0): torch.Generator().manual_seed(1234), then for layer i = 0..4, for
  target in (q, v): A = randn(r, in) / sqrt(r)   [A ~ N(0, 1/r)],  then  B = randn(out, r) * 0.02
  [B ~ N(0, 0.02^2)], drawn in float64 and rounded to f32. They are stored in the golden; use the
  stored values.
- Batch: B = 2, T = 16.  Token stream S = golden.json cases[0].output_ids (the greedy continuation
  of "Once upon a time", BOS included).  Sequence 0 = S[0:17], sequence 1 = S[20:37];
  input_ids = seq[0:16], targets = seq[1:17] (next token), then some targets set to -1 (ignored):
  * seq 0, t = 0..3: completion-only loss -- those positions predict the prompt tokens
    (prompt "Once upon a time" = ids S[0:5]); t = 4 predicts the first completion token and counts.
  * seq 0, t = 9: an arbitrary ignored position in the middle.
  * seq 1, t = 13, 14, 15: padding.  input_ids there are set to 0 (<unk>, a stand-in pad id),
    key_mask[1, 13:16] = 0 (those keys are excluded from every query's attention) and their
    targets are -1.  Padded *query* rows are still computed (they attend to the real keys
    0..12 only) and their logits ARE stored; with right padding and causal attention the key mask
    changes only these padded rows, so logits[1, 13:16] are the only values that test the key mask
    (loss and gradients do not depend on them).
- Loss: mean over the non-ignored positions of -log softmax(logits)[target]
  (= torch.nn.functional.cross_entropy(..., ignore_index=-1, reduction="mean")); 24 positions count.
- Gradients: dL/dA and dL/dB of every LoRA factor (base weights frozen), via autograd in float64.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO_ROOT, f32_round, max_abs, read_golden, setup_determinism, sha256_file, write_golden  # noqa: E402

GOLDEN_VERSION = 1
MODEL_SHA256 = "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696"
OUT = os.path.join(REPO_ROOT, "test", "golden", "stories260k_lora.gld")
RANK, ALPHA, SEED = 4, 8.0, 1234
SCALE = ALPHA / RANK
ROPE_THETA, EPS = 10000.0, 1e-5
B_STD = 0.02
TARGETS = ("q", "v")


def load_llama2c(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    raw = open(path, "rb").read()
    hdr = np.frombuffer(raw[:28], dtype="<i4")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = (int(v) for v in hdr)
    shared = vocab > 0
    vocab = abs(vocab)
    hd = dim // n_heads
    kv_dim = n_kv * hd
    shapes = [
        ("tok_embeddings", (vocab, dim)),
        ("rms_att", (n_layers, dim)),
        ("wq", (n_layers, dim, dim)),
        ("wk", (n_layers, kv_dim, dim)),
        ("wv", (n_layers, kv_dim, dim)),
        ("wo", (n_layers, dim, dim)),
        ("rms_ffn", (n_layers, dim)),
        ("w1", (n_layers, hidden, dim)),
        ("w2", (n_layers, dim, hidden)),
        ("w3", (n_layers, hidden, dim)),
        ("rms_final", (dim,)),
        ("freq_cis_real", (seq_len, hd // 2)),
        ("freq_cis_imag", (seq_len, hd // 2)),
    ]
    if not shared:
        shapes.append(("wcls", (vocab, dim)))
    floats = np.frombuffer(raw[28:], dtype="<f4")
    need = sum(int(np.prod(s)) for _, s in shapes)
    if floats.size != need:
        raise ValueError(f"checkpoint has {floats.size} floats, layout needs {need}")
    w = {}
    off = 0
    for name, s in shapes:
        n = int(np.prod(s))
        w[name] = torch.from_numpy(floats[off : off + n].copy().reshape(s))
        off += n
    cfg = dict(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
               vocab_size=vocab, seq_len=seq_len, shared_classifier=shared, head_dim=hd, kv_dim=kv_dim)
    return cfg, w


def rmsnorm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def rope(x: torch.Tensor, theta: float = ROPE_THETA) -> torch.Tensor:
    """x (B,T,H,D); interleaved pairs (2i, 2i+1), angle = t * theta^(-2i/D)."""
    _, T, _, D = x.shape
    i2 = torch.arange(0, D, 2, dtype=torch.float64)
    inv = theta ** (-i2 / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # (T, D/2)
    cos = torch.cos(ang).to(x.dtype)[None, :, None, :]
    sin = torch.sin(ang).to(x.dtype)[None, :, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2)


def lora_linear(x, w, lora):
    y = x @ w.T
    if lora is not None:
        a, b = lora
        y = y + SCALE * ((x @ a.T) @ b.T)
    return y


def forward(cfg, w, ids, key_mask, loras, dtype, collect=None):
    """ids (B,T) long, key_mask (B,T) bool, loras {(layer, target): (A, B)} or {}; returns logits."""
    Bsz, T = ids.shape
    H, Hkv, D = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    c = lambda t: t.to(dtype)  # noqa: E731
    emb = c(w["tok_embeddings"])
    x = emb[ids]
    if collect is not None:
        collect["act.embed"] = x
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = causal[None, None, :, :] & key_mask[:, None, None, :]  # (B,1,T,T)
    for l in range(cfg["n_layers"]):
        h = rmsnorm(x, c(w["rms_att"][l]))
        q = lora_linear(h, c(w["wq"][l]), loras.get((l, "q")))
        k = lora_linear(h, c(w["wk"][l]), loras.get((l, "k")))
        v = lora_linear(h, c(w["wv"][l]), loras.get((l, "v")))
        q = rope(q.view(Bsz, T, H, D))
        k = rope(k.view(Bsz, T, Hkv, D))
        v = v.view(Bsz, T, Hkv, D)
        rep = H // Hkv
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
        att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
        o = torch.einsum("bhts,bshd->bthd", att, v).reshape(Bsz, T, H * D)
        x = x + lora_linear(o, c(w["wo"][l]), loras.get((l, "o")))
        h = rmsnorm(x, c(w["rms_ffn"][l]))
        x = x + (F.silu(h @ c(w["w1"][l]).T) * (h @ c(w["w3"][l]).T)) @ c(w["w2"][l]).T
        if collect is not None:
            collect[f"act.layers.{l}.out"] = x
    x = rmsnorm(x, c(w["rms_final"]))
    if collect is not None:
        collect["act.final_norm"] = x
    cls = emb if cfg["shared_classifier"] else c(w["wcls"])
    return x @ cls.T


def make_loras(cfg):
    g = torch.Generator().manual_seed(SEED)
    out = {}
    for l in range(cfg["n_layers"]):
        for tgt in TARGETS:
            d_out = cfg["dim"] if tgt == "q" else cfg["kv_dim"]
            a = torch.randn(RANK, cfg["dim"], generator=g, dtype=torch.float64) / math.sqrt(RANK)
            b = torch.randn(d_out, RANK, generator=g, dtype=torch.float64) * B_STD
            out[(l, tgt)] = (f32_round(a), f32_round(b))
    return out


def main() -> None:
    setup_determinism()
    model_path = (sys.argv[1] if len(sys.argv) > 1 else
                  os.environ.get("STORIES260K_BIN", os.path.join(REPO_ROOT, "models", "stories260K", "stories260K.bin")))
    if sha256_file(model_path) != MODEL_SHA256:
        raise SystemExit(f"{model_path}: sha256 is not the pinned upstream stories260K.bin")
    golden_json = os.path.join(os.path.dirname(os.path.abspath(model_path)), "golden.json")
    gj = json.load(open(golden_json))
    cfg, w = load_llama2c(model_path)
    assert (cfg["dim"], cfg["hidden_dim"], cfg["n_layers"], cfg["n_heads"], cfg["n_kv_heads"], cfg["vocab_size"]) == (64, 172, 5, 8, 4, 512)

    # --- 1. the base model (no LoRA) reproduces llama2.c: greedy ids and logits of golden.json
    nomask = lambda ids: torch.ones(ids.shape, dtype=torch.bool)  # noqa: E731
    with torch.no_grad():
        for case in gj["cases"]:
            ids = list(case["prompt_ids"])
            lg = forward(cfg, w, torch.tensor([ids]), nomask(torch.tensor([ids])), {}, torch.float64)
            first8 = lg[0, -1, :8]
            d = float((first8 - torch.tensor(case["last_prompt_logits_first8"], dtype=torch.float64)).abs().max())
            assert d < 2e-4, (case["prompt"], d)
            assert int(lg[0, -1].argmax()) == case["last_prompt_argmax"]
            while len(ids) < len(case["output_ids"]):
                t = torch.tensor([ids])
                ids.append(int(forward(cfg, w, t, nomask(t), {}, torch.float64)[0, -1].argmax()))
            assert ids == case["output_ids"], case["prompt"]
    print("base model reproduces golden.json greedy ids and logits")

    # --- 2. the batch
    S = gj["cases"][0]["output_ids"]
    seqs = [S[0:17], S[20:37]]
    T = 16
    input_ids = torch.tensor([s[:T] for s in seqs], dtype=torch.long)
    targets = torch.tensor([s[1 : T + 1] for s in seqs], dtype=torch.long)
    key_mask = torch.ones(2, T, dtype=torch.bool)
    targets[0, 0:4] = -1
    targets[0, 9] = -1
    key_mask[1, 13:16] = False
    input_ids[1, 13:16] = 0
    targets[1, 13:16] = -1
    n_counted = int((targets >= 0).sum())

    loras64 = make_loras(cfg)

    def run(dtype, collect=None):
        params = {}
        loras = {}
        for key, (a, b) in loras64.items():
            a_ = a.to(dtype).clone().requires_grad_(True)
            b_ = b.to(dtype).clone().requires_grad_(True)
            params[key] = (a_, b_)
            loras[key] = (a_, b_)
        logits = forward(cfg, w, input_ids, key_mask, loras, dtype, collect)
        logits.retain_grad()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1, reduction="mean")
        loss.backward()
        grads = {key: (a.grad.detach(), b.grad.detach()) for key, (a, b) in params.items()}
        return logits.detach(), loss.detach(), grads, logits.grad.detach()

    acts: dict[str, torch.Tensor] = {}
    logits, loss, grads, dlogits = run(torch.float64, acts)
    logits32, loss32, grads32, dlogits32 = run(torch.float32)
    with torch.no_grad():
        logits_base = forward(cfg, w, input_ids, key_mask, {}, torch.float64)
        # key mask effect (test of the test): without it only the padded rows change
        logits_nokm = forward(cfg, w, input_ids, torch.ones_like(key_mask), loras64, torch.float64)
        km_real = max_abs(logits_nokm, logits)
        km_rows = int((logits_nokm - logits).abs().amax(-1).flatten().gt(1e-12).sum())
        # merged weights give the same logits as the unmerged adapter
        wm = dict(w)
        wm["wq"] = w["wq"].double().clone()
        wm["wv"] = w["wv"].double().clone()
        for (l, tgt), (a, b) in loras64.items():
            wm["w" + tgt][l] += SCALE * (b @ a)
        merged = forward(cfg, wm, input_ids, key_mask, {}, torch.float64)
        merge_diff = max_abs(merged, logits)
        assert km_rows == 3 and merge_diff < 1e-10, (km_rows, merge_diff)
        # manual loss check
        lp = torch.log_softmax(logits, -1)
        m = targets >= 0
        manual = -lp[m].gather(-1, targets[m][:, None]).sum() / m.sum()
        assert abs(float(manual) - float(loss)) < 1e-12

    # --- 3. finite-difference check of a few gradient entries (f64, central differences)
    def loss_at(l, tgt, which, idx, delta):
        loras = {k: (a.clone(), b.clone()) for k, (a, b) in loras64.items()}
        t = loras[(l, tgt)][0 if which == "A" else 1]
        t.view(-1)[idx] += delta
        with torch.no_grad():
            lg = forward(cfg, w, input_ids, key_mask, loras, torch.float64)
            return float(F.cross_entropy(lg.reshape(-1, 512), targets.reshape(-1), ignore_index=-1))
    fd_worst = 0.0
    for (l, tgt, which, idx) in [(0, "q", "A", 5), (2, "v", "B", 17), (4, "q", "B", 100), (3, "v", "A", 63), (1, "q", "A", 200)]:
        h = 1e-5
        fd = (loss_at(l, tgt, which, idx, h) - loss_at(l, tgt, which, idx, -h)) / (2 * h)
        an = float(grads[(l, tgt)][0 if which == "A" else 1].reshape(-1)[idx])
        rel = abs(fd - an) / max(abs(an), 1e-8)
        fd_worst = max(fd_worst, rel)
        assert rel < 1e-5, (l, tgt, which, idx, fd, an)
    print(f"finite differences agree with autograd (worst rel err {fd_worst:.2e})")

    # --- 4. write
    tensors: list[tuple[str, str, object]] = [
        ("input_ids", "i32", input_ids),
        ("targets", "i32", targets),
        ("key_mask", "i32", key_mask.to(torch.int32)),
    ]
    for l in range(cfg["n_layers"]):
        for tgt in TARGETS:
            a, b = loras64[(l, tgt)]
            tensors += [(f"layers.{l}.{tgt}.lora_A", "f32", a), (f"layers.{l}.{tgt}.lora_B", "f32", b)]
    tensors += [("logits", "f32", logits), ("loss", "f32", loss.reshape(1)), ("grad.logits", "f32", dlogits)]
    for l in range(cfg["n_layers"]):
        for tgt in TARGETS:
            ga, gb = grads[(l, tgt)]
            tensors += [(f"grad.layers.{l}.{tgt}.lora_A", "f32", ga), (f"grad.layers.{l}.{tgt}.lora_B", "f32", gb)]
    tensors += [("logits_base", "f32", logits_base)]
    tensors += [(k, "f32", v.detach()) for k, v in acts.items()]

    def rel(a, b):
        return float((a.double() - b.double()).abs().max() / b.double().abs().max())

    grad_dev = max(rel(grads32[k][i], grads[k][i]) for k in grads for i in (0, 1))
    meta = {
        "model_file": "stories260K.bin",
        "model_sha256": MODEL_SHA256,
        "model_config": cfg,
        "batch": {"B": 2, "T": T, "token_source": "golden.json cases[0].output_ids; seq0 = ids[0:17], seq1 = ids[20:37]; inputs = [0:16], targets = [1:17]",
                  "ignored_targets": "seq0 t=0..3 (prompt, completion-only), seq0 t=9 (arbitrary), seq1 t=13..15 (padding)",
                  "pad_positions": "seq1 t=13..15: input id 0, key_mask 0, target -1",
                  "n_counted_targets": n_counted},
        "lora": {"rank": RANK, "alpha": ALPHA, "scale": SCALE, "targets": list(TARGETS), "seed": SEED,
                 "init": "torch.Generator().manual_seed(1234); for layer 0..4, for target (q, v): A = randn(r, in, f64)/sqrt(r), then B = randn(out, r, f64)*0.02; rounded to f32",
                 "layout": "A (r, in) = PEFT lora_A.weight, B (out, r) = PEFT lora_B.weight; y = x W^T + s (x A^T) B^T"},
        "loss_f64": float(loss),
        "loss_base_f64": float(F.cross_entropy(logits_base.reshape(-1, 512), targets.reshape(-1), ignore_index=-1)),
        "lora_effect_max_abs_logit_change": max_abs(logits, logits_base),
        "merged_vs_unmerged_logits_max_abs_diff_f64": merge_diff,
        "key_mask_effect": {"max_abs_logit_change_without_key_mask": km_real, "rows_changed": km_rows,
                            "note": "only the 3 padded rows of seq 1 change when the key mask is dropped"},
        "finite_difference_worst_rel_err": fd_worst,
        "f32_vs_f64": {
            "logits_max_abs": max_abs(logits32, logits),
            "loss_abs": abs(float(loss32) - float(loss)),
            "grad_logits_max_abs": max_abs(dlogits32, dlogits),
            "lora_grads_max_abs_over_max_abs": grad_dev,
            "note": "same graph run in torch float32 on CPU; scale of pure f32 rounding effects",
        },
        "abs_max": {
            "logits": float(logits.abs().max()),
            "grad.lora_A": max(float(grads[k][0].abs().max()) for k in grads),
            "grad.lora_B": max(float(grads[k][1].abs().max()) for k in grads),
        },
    }
    conventions = {
        "weights": "llama2.c v0 checkpoint; every matrix (out, in) row-major, y = x W^T",
        "rmsnorm": "y = x * w / sqrt(mean(x^2) + 1e-5)",
        "rope": "theta 10000, interleaved pairs (2i, 2i+1) of each head, angle = t * theta^(-2i/head_dim), t = 0-based index in the sequence; applied to q and k after projection (after LoRA)",
        "gqa": "q head h uses kv head floor(h / (n_heads / n_kv_heads)) (repeat_interleave)",
        "attention": "scores = q.k / sqrt(head_dim); key j visible to query t iff j <= t and key_mask[b, j] == 1; softmax over visible keys",
        "ffn": "w2(silu(w1 x) * (w3 x))",
        "classifier": "shared: logits = rmsnorm_final(x) @ token_embedding^T",
        "lora": "q and v of every layer; y = x W^T + s (x A^T) B^T, s = alpha / r = 2; A (r, in), B (out, r); no bias, no dropout",
        "loss": "mean over targets != -1 of cross-entropy(logits[b,t], targets[b,t])",
        "grads": "dL/dA, dL/dB of the mean loss above, float64 autograd, stored f32",
        "padding": "padded query rows are computed normally (attend to real keys only) and their logits are stored; their targets are -1",
        "activations": "act.embed (B,T,dim) = embedding rows; act.layers.{i}.out = residual stream after layer i; act.final_norm = after final RMSNorm (all with LoRA)",
        "storage": "computed in float64, stored as f32 (ids, targets, key_mask as i32)",
    }
    write_golden(OUT, golden="stories260k_lora", golden_version=GOLDEN_VERSION, script=__file__,
                 tensors=tensors, conventions=conventions, meta=meta)
    hdr, back = read_golden(OUT)
    assert np.array_equal(back["input_ids"], input_ids.numpy())
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
