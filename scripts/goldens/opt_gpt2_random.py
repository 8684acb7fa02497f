#!/usr/bin/python3
"""Small random-weight OPT and GPT-2 models in Hugging Face format, plus forward goldens.

Run: /usr/bin/python3 scripts/goldens/opt_gpt2_random.py
Writes:
  test/golden/tiny-opt/{config.json, model.safetensors}    test/golden/tiny_opt.gld
  test/golden/tiny-gpt2/{config.json, model.safetensors}   test/golden/tiny_gpt2.gld

No `transformers` here: the forwards below are plain-torch transcriptions of HF's
modeling_opt.py (OPTForCausalLM) and modeling_gpt2.py (GPT2LMHeadModel) in eval mode (no dropout),
computed in float64 from the f32 weights that are written to model.safetensors, stored as f32.
Both models: hidden 32, 2 layers, 4 heads (head_dim 8), vocab 64, FFN 64, 64 positions.

Weights (both): drawn from torch.Generator().manual_seed(SEED) in float64, in the order the
tensors are listed in build_*(), rounded to f32. Larger than HF's init_std 0.02 so every path
matters: token/position embeddings N(0, 0.3^2), linear/Conv1D weights N(0, 0.2^2),
biases N(0, 0.1^2), LayerNorm weight 1 + N(0, 0.1^2), LayerNorm bias N(0, 0.1^2).

OPT conventions (HF OPTForCausalLM, do_layer_norm_before=True, e.g. opt-125m .. opt-13b):
- Linear weights are (out, in): y = x W^T + b (all projections have biases, enable_bias=True).
- Embedding: h = embed_tokens[ids] + embed_positions[pos + 2]  (OPTLearnedPositionalEmbedding:
  table has max_position_embeddings + 2 = 66 rows; offset 2; no embedding scaling;
  word_embed_proj_dim == hidden_size, so no project_in / project_out).
  HF computes pos = cumsum(attention_mask) * attention_mask - 1, i.e. with padding the positions
  count only real tokens (padding gets row 1); these goldens use no padding, so pos = t.
- Layer (pre-LN): h = h + out_proj(attn(self_attn_layer_norm(h)));  h = h + fc2(relu(fc1(final_layer_norm(h)))).
- Attention: q = q_proj(x) * head_dim^-0.5 (scaling applied to q, after the bias), k = k_proj(x),
  v = v_proj(x); heads split as (B, T, H, D) from the last dim; causal softmax(q k^T); concat heads; out_proj.
- After the layers: model.decoder.final_layer_norm; logits = h @ embed_tokens^T (lm_head tied, no bias).
- LayerNorm eps 1e-5 (nn.LayerNorm default), biased variance.

GPT-2 conventions (HF GPT2LMHeadModel):
- Conv1D weights are (in, out): y = x W + b  (the TRANSPOSE of nn.Linear).
- Embedding: h = wte[ids] + wpe[t], t = 0-based position (no offset).
- Block (pre-LN): h = h + attn.c_proj(attn(ln_1(h)));  h = h + mlp.c_proj(gelu_new(mlp.c_fc(ln_2(h)))).
- attn.c_attn maps 32 -> 96; the output splits along the last dim into q | k | v (32 each, in
  that order), then each into heads (B, T, H, D). scores = q k^T / sqrt(head_dim)
  (scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False), causal softmax.
- gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
- n_inner = 64 is given explicitly (HF's default when null would be 4 * n_embd = 128).
- Final transformer.ln_f, logits = h @ wte^T (tied, no bias). LayerNorm eps = layer_norm_epsilon = 1e-5.
- Safetensors names carry the `transformer.` prefix (as written by GPT2LMHeadModel.save_pretrained);
  the original openai-community/gpt2 files have no prefix (and old ones carry attn.bias buffers).

Both: the tied lm_head.weight is NOT in model.safetensors (HF drops tied duplicates on save).
Goldens: input_ids (2, 8) i32 drawn from the generator (OPT: first token is BOS = 2), key_mask
(2, 8) all ones (no padding), position_ids (2, 8) = the embedding-table row used (OPT: t + 2, GPT-2: t),
targets (2, 8) = next token (HF labels = input_ids shifted), last position -1; logits (2, 8, 64);
loss (1) = mean cross-entropy over the 14 non-ignored targets (= HF loss with labels = input_ids);
act.embed, act.layers.{i}.out (residual stream after each block), act.final_norm (B, T, 32).
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
from common import (REPO_ROOT, f32_round, max_abs, read_golden, read_safetensors, setup_determinism,  # noqa: E402
                    write_golden, write_json, write_safetensors)

GOLDEN_VERSION = 1
HIDDEN, LAYERS, HEADS, VOCAB, FFN, MAXPOS = 32, 2, 4, 64, 64, 64
HEAD_DIM = HIDDEN // HEADS
B, T = 2, 8
EPS = 1e-5
GOLDEN_DIR = os.path.join(REPO_ROOT, "test", "golden")


class Init:
    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, shape, std, mean=0.0):
        return f32_round(torch.randn(*shape, generator=self.g, dtype=torch.float64) * std + mean).float()

    def emb(self, *shape):
        return self.normal(shape, 0.3)

    def weight(self, *shape):
        return self.normal(shape, 0.2)

    def bias(self, *shape):
        return self.normal(shape, 0.1)

    def ln(self, prefix, out):
        out[prefix + ".weight"] = self.normal((HIDDEN,), 0.1, 1.0)
        out[prefix + ".bias"] = self.normal((HIDDEN,), 0.1)


def layer_norm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, EPS)


def causal_attention(q, k, v):
    """q, k, v (B, T, H, D) already scaled as the architecture requires; returns (B, T, H*D)."""
    Bz, Tz, H, D = q.shape
    s = torch.einsum("bthd,bshd->bhts", q, k)
    mask = torch.ones(Tz, Tz, dtype=torch.bool).tril()
    s = s.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.einsum("bhts,bshd->bthd", s, v).reshape(Bz, Tz, H * D)


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


# ------------------------------------------------------------------------------------------- OPT

def build_opt(seed: int) -> dict[str, torch.Tensor]:
    it = Init(seed)
    w: dict[str, torch.Tensor] = {}
    w["model.decoder.embed_tokens.weight"] = it.emb(VOCAB, HIDDEN)
    w["model.decoder.embed_positions.weight"] = it.emb(MAXPOS + 2, HIDDEN)
    for i in range(LAYERS):
        p = f"model.decoder.layers.{i}."
        it.ln(p + "self_attn_layer_norm", w)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[p + f"self_attn.{proj}.weight"] = it.weight(HIDDEN, HIDDEN)  # (out, in)
            w[p + f"self_attn.{proj}.bias"] = it.bias(HIDDEN)
        it.ln(p + "final_layer_norm", w)
        w[p + "fc1.weight"] = it.weight(FFN, HIDDEN)
        w[p + "fc1.bias"] = it.bias(FFN)
        w[p + "fc2.weight"] = it.weight(HIDDEN, FFN)
        w[p + "fc2.bias"] = it.bias(HIDDEN)
    it.ln("model.decoder.final_layer_norm", w)
    return w


def opt_forward(w, ids, dtype, collect=None):
    c = {k: v.to(dtype) for k, v in w.items()}
    lin = lambda x, n: x @ c[n + ".weight"].T + c[n + ".bias"]  # noqa: E731
    Bz, Tz = ids.shape
    mask = torch.ones(Bz, Tz, dtype=torch.long)
    pos = (torch.cumsum(mask, 1) * mask).long() - 1  # HF OPTLearnedPositionalEmbedding
    h = c["model.decoder.embed_tokens.weight"][ids] + c["model.decoder.embed_positions.weight"][pos + 2]
    if collect is not None:
        collect["position_ids"] = pos + 2
        collect["act.embed"] = h
    for i in range(LAYERS):
        p = f"model.decoder.layers.{i}."
        x = layer_norm(h, c[p + "self_attn_layer_norm.weight"], c[p + "self_attn_layer_norm.bias"])
        q = lin(x, p + "self_attn.q_proj") * HEAD_DIM ** -0.5
        k = lin(x, p + "self_attn.k_proj")
        v = lin(x, p + "self_attn.v_proj")
        sh = lambda t: t.view(Bz, Tz, HEADS, HEAD_DIM)  # noqa: E731
        h = h + lin(causal_attention(sh(q), sh(k), sh(v)), p + "self_attn.out_proj")
        x = layer_norm(h, c[p + "final_layer_norm.weight"], c[p + "final_layer_norm.bias"])
        h = h + lin(torch.relu(lin(x, p + "fc1")), p + "fc2")
        if collect is not None:
            collect[f"act.layers.{i}.out"] = h
    h = layer_norm(h, c["model.decoder.final_layer_norm.weight"], c["model.decoder.final_layer_norm.bias"])
    if collect is not None:
        collect["act.final_norm"] = h
    return h @ c["model.decoder.embed_tokens.weight"].T


def opt_config():
    return {
        "_name_or_path": "tiny-opt-random",
        "_remove_final_layer_norm": False,
        "activation_dropout": 0.0,
        "activation_function": "relu",
        "architectures": ["OPTForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 2,
        "do_layer_norm_before": True,
        "dropout": 0.0,
        "enable_bias": True,
        "eos_token_id": 2,
        "ffn_dim": FFN,
        "hidden_size": HIDDEN,
        "init_std": 0.02,
        "layer_norm_elementwise_affine": True,
        "layerdrop": 0.0,
        "max_position_embeddings": MAXPOS,
        "model_type": "opt",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "pad_token_id": 1,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "transformers_version": "4.36.2",
        "use_cache": True,
        "vocab_size": VOCAB,
        "word_embed_proj_dim": HIDDEN,
    }


# ----------------------------------------------------------------------------------------- GPT-2

def build_gpt2(seed: int) -> dict[str, torch.Tensor]:
    it = Init(seed)
    w: dict[str, torch.Tensor] = {}
    w["transformer.wte.weight"] = it.emb(VOCAB, HIDDEN)
    w["transformer.wpe.weight"] = it.emb(MAXPOS, HIDDEN)
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        it.ln(p + "ln_1", w)
        w[p + "attn.c_attn.weight"] = it.weight(HIDDEN, 3 * HIDDEN)  # Conv1D (in, out)
        w[p + "attn.c_attn.bias"] = it.bias(3 * HIDDEN)
        w[p + "attn.c_proj.weight"] = it.weight(HIDDEN, HIDDEN)
        w[p + "attn.c_proj.bias"] = it.bias(HIDDEN)
        it.ln(p + "ln_2", w)
        w[p + "mlp.c_fc.weight"] = it.weight(HIDDEN, FFN)
        w[p + "mlp.c_fc.bias"] = it.bias(FFN)
        w[p + "mlp.c_proj.weight"] = it.weight(FFN, HIDDEN)
        w[p + "mlp.c_proj.bias"] = it.bias(HIDDEN)
    it.ln("transformer.ln_f", w)
    return w


def gpt2_forward(w, ids, dtype, collect=None):
    c = {k: v.to(dtype) for k, v in w.items()}
    conv1d = lambda x, n: x @ c[n + ".weight"] + c[n + ".bias"]  # noqa: E731  (HF Conv1D: addmm(b, x, W))
    Bz, Tz = ids.shape
    pos = torch.arange(Tz)[None, :].expand(Bz, Tz)
    h = c["transformer.wte.weight"][ids] + c["transformer.wpe.weight"][pos]
    if collect is not None:
        collect["position_ids"] = pos
        collect["act.embed"] = h
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        x = layer_norm(h, c[p + "ln_1.weight"], c[p + "ln_1.bias"])
        q, k, v = conv1d(x, p + "attn.c_attn").split(HIDDEN, dim=-1)
        sh = lambda t: t.reshape(Bz, Tz, HEADS, HEAD_DIM)  # noqa: E731
        a = causal_attention(sh(q) / math.sqrt(HEAD_DIM), sh(k), sh(v))
        h = h + conv1d(a, p + "attn.c_proj")
        x = layer_norm(h, c[p + "ln_2.weight"], c[p + "ln_2.bias"])
        h = h + conv1d(gelu_new(conv1d(x, p + "mlp.c_fc")), p + "mlp.c_proj")
        if collect is not None:
            collect[f"act.layers.{i}.out"] = h
    h = layer_norm(h, c["transformer.ln_f.weight"], c["transformer.ln_f.bias"])
    if collect is not None:
        collect["act.final_norm"] = h
    return h @ c["transformer.wte.weight"].T


def gpt2_config():
    return {
        "_name_or_path": "tiny-gpt2-random",
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.0,
        "bos_token_id": VOCAB - 1,
        "embd_pdrop": 0.0,
        "eos_token_id": VOCAB - 1,
        "initializer_range": 0.02,
        "layer_norm_epsilon": EPS,
        "model_type": "gpt2",
        "n_embd": HIDDEN,
        "n_head": HEADS,
        "n_inner": FFN,
        "n_layer": LAYERS,
        "n_positions": MAXPOS,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.0,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.0,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "transformers_version": "4.36.2",
        "use_cache": True,
        "vocab_size": VOCAB,
    }


# ------------------------------------------------------------------------------------------ main

def make_golden(name, folder, seed, build, forward, config, first_token, conventions):
    w = build(seed)
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "config.json"), config)
    st_path = os.path.join(folder, "model.safetensors")
    write_safetensors(st_path, w, {"format": "pt"})
    back = read_safetensors(st_path)
    assert set(back) == set(w) and all(torch.equal(back[k], w[k]) for k in w)

    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    if first_token is not None:
        ids[:, 0] = first_token
    targets = torch.full((B, T), -1, dtype=torch.long)
    targets[:, :-1] = ids[:, 1:]
    acts: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        logits = forward(back, ids, torch.float64, acts)
        logits32 = forward(back, ids, torch.float32)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-1)
        # HF-style loss: shift logits/labels, mean over all shifted positions
        hf_loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        assert abs(float(loss) - float(hf_loss)) < 1e-12
        loss32 = F.cross_entropy(logits32.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-1)
        # causality check: logits at t do not depend on tokens after t
        ids2 = ids.clone()
        ids2[:, T // 2:] = (ids2[:, T // 2:] + 7) % VOCAB
        causal_diff = max_abs(forward(back, ids2, torch.float64)[:, : T // 2], logits[:, : T // 2])
        assert causal_diff < 1e-12
    pos = acts.pop("position_ids")
    tensors = [
        ("input_ids", "i32", ids),
        ("key_mask", "i32", torch.ones(B, T, dtype=torch.int32)),
        ("position_ids", "i32", pos),
        ("targets", "i32", targets),
        ("logits", "f32", logits),
        ("loss", "f32", loss.reshape(1)),
    ] + [(k, "f32", v) for k, v in acts.items()]
    meta = {
        "model_dir": os.path.relpath(folder, REPO_ROOT),
        "weights_seed": seed,
        "ids_seed": seed + 1,
        "config": config,
        "loss_f64": float(loss),
        "f32_vs_f64": {"logits_max_abs": max_abs(logits32, logits), "loss_abs": abs(float(loss32) - float(loss))},
        "abs_max": {"logits": float(logits.abs().max())},
        "logits_std": float(logits.std()),
    }
    out = os.path.join(GOLDEN_DIR, name + ".gld")
    write_golden(out, golden=name, golden_version=GOLDEN_VERSION, script=__file__, tensors=tensors,
                 conventions=conventions, meta=meta)
    read_golden(out)
    print(name, json.dumps({k: meta[k] for k in ("loss_f64", "f32_vs_f64", "abs_max", "logits_std")}))


COMMON_CONV = {
    "batch": "input_ids (2, 8) random from torch.Generator().manual_seed(weights_seed + 1); no padding (key_mask all ones)",
    "targets": "targets[b, t] = input_ids[b, t + 1], targets[b, 7] = -1 (HF labels = input_ids with the internal shift)",
    "loss": "mean over targets != -1 of cross-entropy(logits[b, t], targets[b, t])",
    "storage": "computed in float64 from the f32 weights in model.safetensors, stored as f32",
    "activations": "act.embed = token + position embedding; act.layers.{i}.out = residual stream after block i; act.final_norm = after the final LayerNorm",
    "layernorm": "eps 1e-5, biased variance, y = (x - mean) / sqrt(var + eps) * w + b",
}


def main() -> None:
    setup_determinism()
    make_golden(
        "tiny_opt", os.path.join(GOLDEN_DIR, "tiny-opt"), 2024, build_opt, opt_forward, opt_config(), 2,
        dict(COMMON_CONV, **{
            "weights": "nn.Linear (out, in), y = x W^T + b, all biases present",
            "positions": "embed_positions has max_position_embeddings + 2 rows; row = t + 2 (OPT offset 2); position_ids holds the row used",
            "block": "pre-LN: h += out_proj(attn(self_attn_layer_norm(h))); h += fc2(relu(fc1(final_layer_norm(h))))",
            "attention": "q = q_proj(x) * head_dim^-0.5; heads split (B,T,H,D) from the last dim; causal softmax(q k^T) v",
            "head": "model.decoder.final_layer_norm, then logits = h @ embed_tokens^T (tied; lm_head.weight absent from the file)",
        }))
    make_golden(
        "tiny_gpt2", os.path.join(GOLDEN_DIR, "tiny-gpt2"), 4048, build_gpt2, gpt2_forward, gpt2_config(), None,
        dict(COMMON_CONV, **{
            "weights": "Conv1D (in, out), y = x W + b (transpose of nn.Linear); c_attn output splits into q | k | v along the last dim",
            "positions": "wpe row = t (no offset); position_ids holds the row used",
            "block": "pre-LN: h += attn.c_proj(attn(ln_1(h))); h += mlp.c_proj(gelu_new(mlp.c_fc(ln_2(h))))",
            "attention": "scores = q k^T / sqrt(head_dim); causal softmax; heads split (B,T,H,D) from the last dim",
            "gelu_new": "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))",
            "head": "transformer.ln_f, then logits = h @ wte^T (tied; lm_head.weight absent from the file)",
        }))


if __name__ == "__main__":
    main()
