#!/usr/bin/python3
"""Goldens for the Llama-layout families: Llama with rope_scaling (llama3, linear, dynamic), Qwen2,
Mistral, SmolLM2 and TinyLlama -> test/golden/tiny-<family>/ (HF folders) and test/golden/tiny_<family>.gld,
plus test/golden/rope_inv_freq.gld (RoPE inverse frequencies of real checkpoints' configs).

Run: /usr/bin/python3 scripts/goldens/llama_families.py      (Debian's python3-torch; no transformers)

transformers is not installable here, so the reference forward is written in plain torch following
transformers' modeling code (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, at 4.4x):
- RoPE inverse frequencies: modeling_rope_utils._compute_default_rope_parameters,
  _compute_linear_scaling_rope_parameters, _compute_dynamic_ntk_parameters and
  _compute_llama3_parameters, op for op in float32 (inv_freq_* below). LlamaRotaryEmbedding: angle =
  inv_freq * position (position_ids), cos/sin of cat(freqs, freqs), attention_scaling 1 (all four
  kinds). Dynamic NTK recomputes the frequencies only when a forward sees a position >=
  max_position_embeddings (dynamic_rope_update); every sequence here is shorter, so its frequencies
  are the default ones, which the golden checks (and rope_inv_freq.gld shows the beyond-context ones).
- apply_rotary_pos_emb: q * cos + rotate_half(q) * sin, rotate_half(x) = cat(-x[D/2:], x[:D/2]): the
  pairs (i, i + D/2) of each head.
- Attention: q/k/v projections (+ bias: Qwen2 q/k/v; Llama attention_bias q/k/v/o), heads (B, T, H, D),
  GQA repeat_kv (q head h uses kv head h // (H / Hkv)), scores q k^T / sqrt(D), causal; key j hidden
  from query t when key_mask[b, j] = 0; Mistral sliding window: key j visible to query t only when
  t - j < sliding_window (HF sliding_window_overlay: kv_idx > q_idx - sliding_window).
- RMSNorm x * rsqrt(mean(x^2) + eps) * w; MLP down(silu(gate(x)) * up(x)); final norm; lm_head or the
  tied embedding.
- LoRA (PEFT) on q_proj and v_proj: y = base_layer(x) + s * (x A^T) B^T (after the base bias), r = 4,
  alpha = 8, s = 2; A = randn(r, in)/sqrt(r), B = randn(out, r) * 0.02 (non-zero so dL/dA != 0),
  torch.Generator().manual_seed(weights_seed + 2), layer 0.. x (q, v) x (A then B), rounded to f32.

Everything is computed in float64 from the f32 weights (stored values = values computed with) and
stored as f32; a float32 run of the same graph (with HF's f32 angle arithmetic) is recorded in
meta.f32_vs_f64.

Per family (tensors of tiny_<name>.gld):
  input_ids (2, 16) i32; targets (2, 16) i32 (next token; -1 at seq 0 t=0..2 (prompt), seq 1 t=13..15
  (padding) and at the last position); key_mask (2, 16) i32 (seq 1 t=13..15 = 0);
  layers.{i}.{q,v}.lora_A / lora_B; logits (2, 16, V) with the adapter; loss (1); grad.layers.{i}.{q,v}.lora_A/B;
  logits_base (2, 16, V) without the adapter; inv_freq (D/2) the model's frequencies;
  greedy_prompt (P) i32, greedy_ids (N) i32 = greedy continuation without the adapter (no EOS stop),
  greedy_logits (P + N - 1, V) = logits of the prompt + continuation (row t predicts token t + 1).
The greedy prompt is chosen so that every step's top-1 logit beats the second by >= 1e-3
(meta.greedy_min_margin), so f32 engines must reproduce the ids exactly.
"""

from __future__ import annotations

import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (REPO_ROOT, f32_round, max_abs, read_golden, read_safetensors, setup_determinism,  # noqa: E402
                    write_golden, write_json, write_safetensors)

GOLDEN_VERSION = 1
GOLDEN_DIR = os.path.join(REPO_ROOT, "test", "golden")
B, T = 2, 16
RANK, ALPHA = 4, 8.0
SCALE = ALPHA / RANK
GREEDY_PROMPT, GREEDY_NEW = 6, 10
MIN_MARGIN = 1e-3


# ------------------------------------------------------------------------ RoPE inverse frequencies
# transformers.modeling_rope_utils, in float32 as there (python scalars stay float64).

def inv_freq_default(base: float, dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def inv_freq_linear(base: float, dim: int, factor: float) -> torch.Tensor:
    inv_freq = inv_freq_default(base, dim)
    inv_freq /= factor
    return inv_freq


def inv_freq_dynamic(base: float, dim: int, factor: float, max_position_embeddings: int, seq_len: int | None) -> torch.Tensor:
    seq_len = seq_len if seq_len is not None and seq_len > max_position_embeddings else max_position_embeddings
    base = base * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def inv_freq_llama3(base: float, dim: int, factor: float, low_freq_factor: float, high_freq_factor: float, old_context_len: int) -> torch.Tensor:
    inv_freq = inv_freq_default(base, dim)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def inv_freq_of(cfg: dict, seq_len: int | None = None) -> torch.Tensor:
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    base = float(cfg.get("rope_theta", 10000.0))
    rs = cfg.get("rope_scaling")
    kind = None if rs is None else rs.get("rope_type", rs.get("type"))
    if kind in (None, "default"):
        return inv_freq_default(base, dim)
    if kind == "linear":
        return inv_freq_linear(base, dim, rs["factor"])
    if kind == "dynamic":
        return inv_freq_dynamic(base, dim, rs["factor"], cfg["max_position_embeddings"], seq_len)
    if kind == "llama3":
        return inv_freq_llama3(base, dim, rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"])
    raise ValueError(kind)


# ------------------------------------------------------------------------------------ the families

def base_llama(**kw) -> dict:
    c = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "attention_bias": False,
        "attention_dropout": 0.0, "mlp_bias": False, "initializer_range": 0.02, "pretraining_tp": 1,
        "torch_dtype": "float32", "transformers_version": "4.46.0", "use_cache": True, "rms_norm_eps": 1e-5,
        "bos_token_id": 1, "eos_token_id": 2, "num_hidden_layers": 2, "vocab_size": 64, "max_position_embeddings": 64,
        "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False,
    }
    c.update(kw)
    return c


FAMILIES = {
    # Llama 3.x: llama3 rope_scaling (the real ones: factor 8 or 32, low 1, high 4, original 8192).
    # original_max_position_embeddings 64 puts this model's 4 frequencies in all three llama3 regimes
    # (wavelengths 6.3 < 16 kept, 62.8 smoothed, 628 and 6283 > 64 divided by 4).
    "llama3": dict(seed=3101, cfg=base_llama(
        hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        max_position_embeddings=128, rope_theta=10000.0, bos_token_id=1, eos_token_id=[2, 3],
        rope_scaling={"factor": 4.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 64, "rope_type": "llama3"})),
    "llama_linear": dict(seed=3102, cfg=base_llama(
        hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
        rope_scaling={"type": "linear", "factor": 4.0})),
    # dynamic NTK: the whole usable context (32) is within max_position_embeddings, where HF's
    # frequencies are the default ones.
    "llama_dynamic": dict(seed=3103, cfg=base_llama(
        hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32,
        rope_scaling={"rope_type": "dynamic", "factor": 2.0})),
    # Qwen2 / Qwen2.5: q/k/v biases (o none), tied embeddings as on the small ones, theta 1e6, eps 1e-6;
    # byte-level tokenizer of 256 bytes + 3 specials (vocab 260) and a ChatML chat template.
    "qwen2": dict(seed=3104, chat=True, cfg={
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0, "hidden_act": "silu",
        "hidden_size": 32, "intermediate_size": 48, "initializer_range": 0.02, "max_position_embeddings": 128,
        "max_window_layers": 2, "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 128,
        "tie_word_embeddings": True, "torch_dtype": "float32", "transformers_version": "4.46.0", "use_cache": True,
        "use_sliding_window": False, "vocab_size": 260, "bos_token_id": 256, "eos_token_id": 258}),
    # Mistral: Llama layout, sliding_window 24 < max_position_embeddings 64 (v0.1 style): this service
    # caps the context at the window (T = 16 here, so the window equals full attention).
    "mistral": dict(seed=3105, cfg={
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 48,
        "max_position_embeddings": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 1,
        "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "sliding_window": 24, "tie_word_embeddings": False,
        "torch_dtype": "float32", "transformers_version": "4.46.0", "use_cache": True, "vocab_size": 64}),
    # SmolLM2: a plain Llama config with tied embeddings, GQA (3:1 there), theta 1e5 and nanotron's extra keys.
    "smollm2": dict(seed=3106, cfg=base_llama(
        hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, rope_theta=100000.0,
        tie_word_embeddings=True, is_llama_config=True, rope_interleaved=False, pad_token_id=2)),
    # TinyLlama: a plain Llama config, GQA (8:1 there, 4:1 here), untied.
    "tinyllama": dict(seed=3107, cfg=base_llama(
        hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=1, eos_token_id=2)),
}


class Init:
    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, shape, std, mean=0.0):
        return f32_round(torch.randn(*shape, generator=self.g, dtype=torch.float64) * std + mean).float()


def dims(cfg):
    H = cfg["num_attention_heads"]
    D = cfg.get("head_dim") or cfg["hidden_size"] // H
    Hkv = cfg.get("num_key_value_heads") or H
    return H, Hkv, D


def biases(cfg):
    """(q/k/v bias, o bias) as the family defines them."""
    if cfg["model_type"] == "qwen2":
        return True, False
    ab = bool(cfg.get("attention_bias", False))
    return ab, ab


def build(cfg, seed) -> dict[str, torch.Tensor]:
    it = Init(seed)
    Dm, F_, V, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    H, Hkv, D = dims(cfg)
    qkv_b, o_b = biases(cfg)
    w: dict[str, torch.Tensor] = {"model.embed_tokens.weight": it.normal((V, Dm), 0.5)}
    for i in range(L):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = it.normal((Dm,), 0.1, 1.0)
        w[p + "self_attn.q_proj.weight"] = it.normal((H * D, Dm), 0.3)
        w[p + "self_attn.k_proj.weight"] = it.normal((Hkv * D, Dm), 0.3)
        w[p + "self_attn.v_proj.weight"] = it.normal((Hkv * D, Dm), 0.3)
        w[p + "self_attn.o_proj.weight"] = it.normal((Dm, H * D), 0.3)
        if qkv_b:
            for n, o in (("q", H * D), ("k", Hkv * D), ("v", Hkv * D)):
                w[p + f"self_attn.{n}_proj.bias"] = it.normal((o,), 0.2)
        if o_b:
            w[p + "self_attn.o_proj.bias"] = it.normal((Dm,), 0.2)
        w[p + "post_attention_layernorm.weight"] = it.normal((Dm,), 0.1, 1.0)
        w[p + "mlp.gate_proj.weight"] = it.normal((F_, Dm), 0.3)
        w[p + "mlp.up_proj.weight"] = it.normal((F_, Dm), 0.3)
        w[p + "mlp.down_proj.weight"] = it.normal((Dm, F_), 0.3)
    w["model.norm.weight"] = it.normal((Dm,), 0.1, 1.0)
    if not cfg.get("tie_word_embeddings", False):
        w["lm_head.weight"] = it.normal((V, Dm), 0.3)
    return w


def make_loras(cfg, seed):
    g = torch.Generator().manual_seed(seed + 2)
    H, Hkv, D = dims(cfg)
    Dm = cfg["hidden_size"]
    out = {}
    for l in range(cfg["num_hidden_layers"]):
        for tgt, d_out in (("q", H * D), ("v", Hkv * D)):
            a = torch.randn(RANK, Dm, generator=g, dtype=torch.float64) / math.sqrt(RANK)
            b = torch.randn(d_out, RANK, generator=g, dtype=torch.float64) * 0.02
            out[(l, tgt)] = (f32_round(a), f32_round(b))
    return out


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(cfg, w, ids, key_mask, loras, dtype, hf_f32_angles=False):
    """Logits (B, T, V). ids (B, T) long; key_mask (B, T) bool; loras {(layer, 'q'|'v'): (A, B)}."""
    c = {k: v.to(dtype) for k, v in w.items()}
    Bz, Tz = ids.shape
    H, Hkv, D = dims(cfg)
    eps = cfg["rms_norm_eps"]
    inv = inv_freq_of(cfg, seq_len=Tz)  # f32, as HF
    pos = torch.arange(Tz)
    if hf_f32_angles:
        freqs = (inv[:, None].float() @ pos[None, :].float()).T  # (T, D/2) f32, HF's matmul
    else:
        freqs = pos[:, None].double() * inv[None, :].double()  # f64 angles of the f32 frequencies
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype)[None, :, None, :], emb.sin().to(dtype)[None, :, None, :]

    def lin(x, name, lora=None):
        y = x @ c[name + ".weight"].T
        if name + ".bias" in c:
            y = y + c[name + ".bias"]
        if lora is not None:
            a, b = lora
            y = y + SCALE * ((x @ a.T) @ b.T)
        return y

    causal = torch.ones(Tz, Tz, dtype=torch.bool).tril()
    win = cfg.get("sliding_window") if cfg["model_type"] == "mistral" else None
    if win is not None:
        t_idx = torch.arange(Tz)[:, None]
        j_idx = torch.arange(Tz)[None, :]
        causal = causal & (j_idx > t_idx - win)
    allowed = causal[None, None] & key_mask[:, None, None, :]
    x = c["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, c[p + "input_layernorm.weight"], eps)
        q = lin(h, p + "self_attn.q_proj", loras.get((l, "q"))).view(Bz, Tz, H, D)
        k = lin(h, p + "self_attn.k_proj").view(Bz, Tz, Hkv, D)
        v = lin(h, p + "self_attn.v_proj", loras.get((l, "v"))).view(Bz, Tz, Hkv, D)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = H // Hkv
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
        att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
        o = torch.einsum("bhts,bshd->bthd", att, v).reshape(Bz, Tz, H * D)
        x = x + lin(o, p + "self_attn.o_proj")
        h = rms_norm(x, c[p + "post_attention_layernorm.weight"], eps)
        x = x + lin(F.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms_norm(x, c["model.norm.weight"], eps)
    head = c["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else c["lm_head.weight"]
    return x @ head.T


# ------------------------------------------------------------------------------- tokenizer (qwen2)

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(x) for x in cs]))


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML as Qwen2.5 uses it (written here, not copied): a default system message when the
# conversation has none, every turn "<|im_start|>role\ncontent<|im_end|>\n", and the generation prompt.
CHATML = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def write_tokenizer(folder: str) -> None:
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    added = []
    for i, s in enumerate(SPECIALS):
        vocab[s] = 256 + i
        added.append({"id": 256 + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False, "vocab": vocab, "merges": []},
    }
    write_json(os.path.join(folder, "tokenizer.json"), tok)
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "add_bos_token": False, "add_prefix_space": False, "bos_token": None, "chat_template": CHATML,
        "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 128,
        "pad_token": "<|endoftext|>", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    })


# ------------------------------------------------------------------------------------------ goldens

def greedy(cfg, w, prompt):
    ids = list(prompt)
    margin = float("inf")
    with torch.no_grad():
        for _ in range(GREEDY_NEW):
            t = torch.tensor([ids])
            lg = forward(cfg, w, t, torch.ones_like(t, dtype=torch.bool), {}, torch.float64)[0, -1]
            top = lg.topk(2).values
            margin = min(margin, float(top[0] - top[1]))
            ids.append(int(lg.argmax()))
        full = torch.tensor([ids])
        logits = forward(cfg, w, full, torch.ones_like(full, dtype=torch.bool), {}, torch.float64)[0, :-1]
    return ids[len(prompt):], logits, margin


def make_family(name: str, spec: dict) -> None:
    cfg, seed = spec["cfg"], spec["seed"]
    folder = os.path.join(GOLDEN_DIR, "tiny-" + name.replace("_", "-"))
    os.makedirs(folder, exist_ok=True)
    w = build(cfg, seed)
    write_json(os.path.join(folder, "config.json"), cfg)
    st = os.path.join(folder, "model.safetensors")
    write_safetensors(st, w, {"format": "pt"})
    back = read_safetensors(st)
    assert set(back) == set(w) and all(torch.equal(back[k], w[k]) for k in w)
    if spec.get("chat"):
        write_tokenizer(folder)

    V = cfg["vocab_size"]
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, V, (B, T), generator=g)
    key_mask = torch.ones(B, T, dtype=torch.bool)
    key_mask[1, 13:] = False
    ids[1, 13:] = 0
    targets = torch.full((B, T), -1, dtype=torch.long)
    targets[:, :-1] = ids[:, 1:]
    targets[0, 0:3] = -1
    targets[1, 12:] = -1  # position 12 would predict the pad at 13
    loras64 = make_loras(cfg, seed)

    def run(dtype, hf_f32_angles=False):
        params = {k: (a.to(dtype).clone().requires_grad_(True), b.to(dtype).clone().requires_grad_(True)) for k, (a, b) in loras64.items()}
        logits = forward(cfg, back, ids, key_mask, params, dtype, hf_f32_angles)
        loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)
        loss.backward()
        return logits.detach(), loss.detach(), {k: (a.grad.detach(), b.grad.detach()) for k, (a, b) in params.items()}

    logits, loss, grads = run(torch.float64)
    logits32, loss32, grads32 = run(torch.float32, hf_f32_angles=True)
    with torch.no_grad():
        logits_base = forward(cfg, back, ids, key_mask, {}, torch.float64)
        # merged weights give the unmerged logits
        wm = {k: v.double().clone() for k, v in back.items()}
        for (l, tgt), (a, b) in loras64.items():
            wm[f"model.layers.{l}.self_attn.{tgt}_proj.weight"] += SCALE * (b @ a)
        assert max_abs(forward(cfg, wm, ids, key_mask, {}, torch.float64), logits) < 1e-10
        # the reference is causal and the key mask reaches only the padded rows
        nokm = forward(cfg, back, ids, torch.ones_like(key_mask), loras64, torch.float64)
        assert int((nokm - logits).abs().amax(-1).flatten().gt(1e-12).sum()) == 3
        # RoPE matters: without it (all angles 0) the logits change
        inv = inv_freq_of(cfg, seq_len=T)
        default = inv_freq_default(float(cfg.get("rope_theta", 10000.0)), dims(cfg)[2])
        scaling_changes_freqs = bool((inv != default).any())

    # finite differences on a few entries
    def loss_at(key, which, idx, delta):
        lo = {k: (a.clone(), b.clone()) for k, (a, b) in loras64.items()}
        lo[key][0 if which == "A" else 1].view(-1)[idx] += delta
        with torch.no_grad():
            lg = forward(cfg, back, ids, key_mask, lo, torch.float64)
            return float(F.cross_entropy(lg.reshape(-1, V), targets.reshape(-1), ignore_index=-1))
    for key, which, idx in [((0, "q"), "A", 3), ((1, "v"), "B", 5), ((1, "q"), "B", 7)]:
        fd = (loss_at(key, which, idx, 1e-6) - loss_at(key, which, idx, -1e-6)) / 2e-6
        an = float(grads[key][0 if which == "A" else 1].reshape(-1)[idx])
        assert abs(fd - an) <= 1e-6 * max(abs(an), 1e-3), (name, key, which, idx, fd, an)

    # greedy continuation with a clear top-1 at every step
    gp = torch.Generator().manual_seed(seed + 3)
    for attempt in range(200):
        prompt = torch.randint(4, min(V, 256), (GREEDY_PROMPT,), generator=gp).tolist()
        gen, glogits, margin = greedy(cfg, back, prompt)
        if margin >= MIN_MARGIN:
            break
    else:
        raise SystemExit(f"{name}: no prompt with a greedy margin >= {MIN_MARGIN}")

    tensors = [("input_ids", "i32", ids), ("targets", "i32", targets), ("key_mask", "i32", key_mask.to(torch.int32))]
    for l in range(cfg["num_hidden_layers"]):
        for tgt in ("q", "v"):
            a, b = loras64[(l, tgt)]
            tensors += [(f"layers.{l}.{tgt}.lora_A", "f32", a), (f"layers.{l}.{tgt}.lora_B", "f32", b)]
    tensors += [("logits", "f32", logits), ("loss", "f32", loss.reshape(1))]
    for l in range(cfg["num_hidden_layers"]):
        for tgt in ("q", "v"):
            ga, gb = grads[(l, tgt)]
            tensors += [(f"grad.layers.{l}.{tgt}.lora_A", "f32", ga), (f"grad.layers.{l}.{tgt}.lora_B", "f32", gb)]
    tensors += [("logits_base", "f32", logits_base), ("inv_freq", "f32", inv_freq_of(cfg, seq_len=T)),
                ("greedy_prompt", "i32", torch.tensor(prompt)), ("greedy_ids", "i32", torch.tensor(gen)),
                ("greedy_logits", "f32", glogits)]

    def rel(x, y):
        return float((x.double() - y.double()).abs().max() / y.double().abs().max())

    meta = {
        "model_dir": os.path.relpath(folder, REPO_ROOT), "family": cfg["model_type"], "weights_seed": seed,
        "ids_seed": seed + 1, "lora_seed": seed + 2, "greedy_seed": seed + 3, "greedy_attempts": attempt + 1,
        "greedy_min_margin": margin, "config": cfg, "loss_f64": float(loss),
        "rope_scaling_changes_frequencies": scaling_changes_freqs,
        "lora": {"rank": RANK, "alpha": ALPHA, "scale": SCALE, "targets": ["q", "v"]},
        "f32_vs_f64": {"logits_max_abs": max_abs(logits32, logits), "loss_abs": abs(float(loss32) - float(loss)),
                       "grad_rel_max": max(rel(grads32[k][i], grads[k][i]) for k in grads for i in (0, 1))},
        "abs_max": {"logits": float(logits.abs().max())},
        "lora_effect_max_abs_logit_change": max_abs(logits, logits_base),
    }
    out = os.path.join(GOLDEN_DIR, f"tiny_{name}.gld")
    conventions = {
        "reference": "plain-torch re-implementation of transformers' LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM (see the script's docstring)",
        "storage": "computed in float64 from the f32 weights and f32-rounded LoRA factors, stored as f32",
        "rope": "inv_freq as transformers computes it in f32 (rope_scaling included); angle = position * inv_freq in f64; pairs (i, i + D/2) (rotate_half)",
        "batch": "input_ids (2, 16) random (seed ids_seed); seq 1 t=13..15 padding: id 0, key_mask 0, target -1",
        "targets": "next token; -1 at seq 0 t=0..2 (prompt), seq 1 t=12..15, and t=15",
        "loss": "mean cross-entropy over targets != -1",
        "lora": "PEFT on q_proj and v_proj: y = base(x) + 2 (x A^T) B^T, A (4, in), B (out, 4)",
        "greedy": "greedy continuation (GREEDY_NEW tokens) of greedy_prompt without the adapter and without an EOS stop; greedy_logits row t = logits after tokens 0..t of prompt + continuation",
    }
    write_golden(out, golden=f"tiny_{name}", golden_version=GOLDEN_VERSION, script=__file__, tensors=tensors, conventions=conventions, meta=meta)
    read_golden(out)
    print(name, json.dumps({k: meta[k] for k in ("loss_f64", "f32_vs_f64", "greedy_min_margin", "rope_scaling_changes_frequencies")}))


# Real checkpoints' RoPE settings (config.json values of the public releases).
REAL_ROPE = [
    ("llama3_2_1b", {"hidden_size": 2048, "num_attention_heads": 32, "head_dim": 64, "rope_theta": 500000.0, "max_position_embeddings": 131072,
                     "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}}, None),
    ("llama3_1_8b", {"hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 500000.0, "max_position_embeddings": 131072,
                     "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}}, None),
    ("qwen2_5_0_5b", {"hidden_size": 896, "num_attention_heads": 14, "rope_theta": 1000000.0, "max_position_embeddings": 32768, "rope_scaling": None}, None),
    ("smollm2_135m", {"hidden_size": 576, "num_attention_heads": 9, "rope_theta": 100000.0, "max_position_embeddings": 8192, "rope_scaling": None}, None),
    ("tinyllama_1_1b", {"hidden_size": 2048, "num_attention_heads": 32, "rope_theta": 10000.0, "max_position_embeddings": 2048, "rope_scaling": None}, None),
    ("mistral_7b_v0_3", {"hidden_size": 4096, "num_attention_heads": 32, "head_dim": 128, "rope_theta": 1000000.0, "max_position_embeddings": 32768, "rope_scaling": None}, None),
    ("linear_x4", {"hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 10000.0, "max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 4.0}}, None),
    ("dynamic_x2_within", {"hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 10000.0, "max_position_embeddings": 4096, "rope_scaling": {"type": "dynamic", "factor": 2.0}}, 4096),
    ("dynamic_x2_beyond_8192", {"hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 10000.0, "max_position_embeddings": 4096, "rope_scaling": {"type": "dynamic", "factor": 2.0}}, 8192),
    ("dynamic_x1_7_beyond_5000", {"hidden_size": 2048, "num_attention_heads": 16, "rope_theta": 10000.0, "max_position_embeddings": 4096, "rope_scaling": {"type": "dynamic", "factor": 1.7}}, 5000),
]


def make_rope_table() -> None:
    tensors = []
    meta = {}
    for name, cfg, seq_len in REAL_ROPE:
        inv = inv_freq_of(cfg, seq_len)
        tensors.append((name, "f32", inv))
        meta[name] = {"config": cfg, "seq_len": seq_len}
    out = os.path.join(GOLDEN_DIR, "rope_inv_freq.gld")
    write_golden(out, golden="rope_inv_freq", golden_version=GOLDEN_VERSION, script=__file__, tensors=tensors,
                 conventions={"inv_freq": "(head_dim/2) f32 inverse frequencies exactly as transformers' modeling_rope_utils computes them (f32 tensors, python-float scalars), for each config in meta; seq_len is the sequence length passed to the dynamic NTK function (null = init)"},
                 meta=meta)
    read_golden(out)


def main() -> None:
    setup_determinism()
    make_rope_table()
    for name, spec in FAMILIES.items():
        make_family(name, spec)


if __name__ == "__main__":
    main()
