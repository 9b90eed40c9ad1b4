"""Tiny random models of every supported architecture written as real GGUF files, and an independent float64
NumPy transcription of each architecture's forward pass (as llama.cpp computes it) to check them against."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

NEOX_ARCHS = {"qwen2", "qwen3", "phi3", "gemma2"}  # rope rotating the two halves of each head


@dataclass
class TinyLlama:
    """Shapes and options of the synthetic model (by default a llama)."""
    n_vocab: int = 64
    n_embd: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 48
    rope_base: float = 10000.0
    eps: float = 1e-5
    arch: str = "llama"
    key_length: int | None = None      # a head size other than n_embd / n_head (Mistral Nemo, Qwen3)
    rope_freqs: bool = False           # Llama 3's rope frequency factors (rope_freqs.weight)
    yarn: tuple[float, int] | None = None  # YaRN rope scaling: (factor, original context length)
    untied: bool = False               # an output.weight of its own
    sliding_window: int = 0            # gemma2: the window of the even layers
    attn_softcap: float | None = None  # gemma2
    final_softcap: float | None = None  # gemma2
    chat_template: str | None = None
    add_bos: bool | None = None        # whether tokenizing adds BOS (a chat template's BOS is then left out)

    @property
    def head_dim(self) -> int:
        return self.key_length or self.n_embd // self.n_head


def make_weights(cfg: TinyLlama, seed: int = 0) -> dict[str, np.ndarray]:
    """Random F32 weights under llama.cpp's tensor names (NumPy order: out x in) for the config's architecture."""
    rng = np.random.default_rng(seed)
    d, hd, ff, arch = cfg.n_embd, cfg.head_dim, cfg.n_ff, cfg.arch
    mat = lambda rows, cols: (rng.normal(size=(rows, cols)) / np.sqrt(cols)).astype(np.float32)  # noqa: E731
    norm = lambda n=d: (1 + 0.1 * rng.normal(size=n)).astype(np.float32)  # noqa: E731
    w = {"token_embd.weight": mat(cfg.n_vocab, d), "output_norm.weight": norm()}
    if cfg.untied:
        w["output.weight"] = mat(cfg.n_vocab, d)
    if cfg.rope_freqs:  # divisors >= 1, as Llama 3's low-frequency stretch
        w["rope_freqs.weight"] = rng.uniform(1, 8, hd // 2).astype(np.float32)
    q_rows, kv_rows = cfg.n_head * hd, cfg.n_head_kv * hd
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        w.update({p + "attn_norm.weight": norm(), p + "attn_output.weight": mat(d, q_rows),
                  p + "ffn_norm.weight": norm(), p + "ffn_down.weight": mat(d, ff)})
        if arch == "phi3":
            w.update({p + "attn_qkv.weight": mat(q_rows + 2 * kv_rows, d), p + "ffn_up.weight": mat(2 * ff, d)})
        else:
            w.update({p + "attn_q.weight": mat(q_rows, d), p + "attn_k.weight": mat(kv_rows, d),
                      p + "attn_v.weight": mat(kv_rows, d), p + "ffn_gate.weight": mat(ff, d),
                      p + "ffn_up.weight": mat(ff, d)})
        if arch == "qwen2":
            w.update({p + f"attn_{x}.bias": (0.3 * rng.normal(size=n)).astype(np.float32)
                      for x, n in (("q", q_rows), ("k", kv_rows), ("v", kv_rows))})
        if arch == "qwen3":
            w.update({p + "attn_q_norm.weight": norm(hd), p + "attn_k_norm.weight": norm(hd)})
        if arch == "gemma2":
            w.update({p + "post_attention_norm.weight": norm(), p + "post_ffw_norm.weight": norm()})
    return w


def _metadata(w: gguf.GGUFWriter, cfg: TinyLlama, n_ctx: int) -> None:
    """The architecture's hyper-parameters."""
    for add, value in ((w.add_context_length, n_ctx), (w.add_embedding_length, cfg.n_embd),
                       (w.add_block_count, cfg.n_layer), (w.add_feed_forward_length, cfg.n_ff),
                       (w.add_head_count, cfg.n_head), (w.add_head_count_kv, cfg.n_head_kv),
                       (w.add_rope_dimension_count, cfg.head_dim), (w.add_rope_freq_base, cfg.rope_base),
                       (w.add_layer_norm_rms_eps, cfg.eps), (w.add_key_length, cfg.key_length),
                       (w.add_value_length, cfg.key_length), (w.add_sliding_window, cfg.sliding_window or None),
                       (w.add_attn_logit_softcapping, cfg.attn_softcap),
                       (w.add_final_logit_softcapping, cfg.final_softcap)):
        if value is not None:
            add(value)
    if cfg.yarn:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(cfg.yarn[0])
        w.add_rope_scaling_orig_ctx_len(cfg.yarn[1])


def write_gguf(path: Path, cfg: TinyLlama, weights: dict[str, np.ndarray], tokens: list[str] | None = None,
               token_types: list[int] | None = None, eos_id: int | None = None, n_ctx: int = 256,
               raw_dtypes: dict[str, int] | None = None) -> Path:
    """Write the model with gguf's writer (a byte-level BPE vocabulary: by default single letters); raw_dtypes
    names the weights given as quantized blocks and their type."""
    tokens = tokens or [chr(ord("a") + i % 26) * (1 + i // 26) for i in range(cfg.n_vocab)]
    w = gguf.GGUFWriter(str(path), cfg.arch)
    _metadata(w, cfg, n_ctx)
    for add, value in ((w.add_tokenizer_model, "gpt2"), (w.add_tokenizer_pre, "gpt-2"), (w.add_token_list, tokens),
                       (w.add_token_types, token_types or [gguf.TokenType.NORMAL] * len(tokens)),
                       (w.add_token_merges, []), (w.add_eos_token_id, len(tokens) - 1 if eos_id is None else eos_id)):
        add(value)
    if cfg.chat_template:
        w.add_chat_template(cfg.chat_template)
    if cfg.add_bos is not None:
        w.add_add_bos_token(cfg.add_bos)
    for name, value in weights.items():
        w.add_tensor(name, value, raw_dtype=(raw_dtypes or {}).get(name))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _rms(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def _rope(cfg: TinyLlama, t: dict[str, np.ndarray], x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Pairs rotated by pos * base^(-2i/hd) (divided by the frequency factors): adjacent pairs, or NEOX's halves."""
    hd = cfg.head_dim
    inv_freq = cfg.rope_base ** (-np.arange(0, hd, 2) / hd)
    if cfg.rope_freqs:
        inv_freq = inv_freq / t["rope_freqs.weight"]
    theta, mscale = pos[:, None] * inv_freq, 1.0
    if cfg.yarn:
        theta, mscale = _yarn(cfg, theta)
    c, s = mscale * np.cos(theta)[:, None], mscale * np.sin(theta)[:, None]
    first, second = (slice(0, hd // 2), slice(hd // 2, hd)) if cfg.arch in NEOX_ARCHS else (slice(0, hd, 2),
                                                                                             slice(1, hd, 2))
    out = np.empty_like(x)
    out[..., first] = x[..., first] * c - x[..., second] * s
    out[..., second] = x[..., first] * s + x[..., second] * c
    return out


def _yarn(cfg: TinyLlama, theta: np.ndarray) -> tuple[np.ndarray, float]:
    """ggml's YaRN: pairs below the ramp extrapolate, above it interpolate (theta / factor), the ramp between
    the dims whose wavelengths fit 32 and 1 times in the original context; magnitudes times 1 + 0.1 ln(factor)."""
    factor, n_orig = cfg.yarn
    hd, base = cfg.head_dim, cfg.rope_base
    corr = lambda n_rot: hd * np.log(n_orig / (n_rot * 2 * np.pi)) / (2 * np.log(base))  # noqa: E731
    low, high = max(0.0, np.floor(corr(32.0))), min(hd - 1.0, np.ceil(corr(1.0)))
    extrapolate = 1 - np.clip((np.arange(hd // 2) - low) / max(0.001, high - low), 0, 1)
    return theta / factor * (1 - extrapolate) + theta * extrapolate, 1 + 0.1 * np.log(factor)


def _qkv(cfg: TinyLlama, g, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q, K, V (n, heads, hd): phi3 from one fused matrix, qwen2 with biases, qwen3 with QK-norm."""
    n, hd = len(h), cfg.head_dim
    if cfg.arch == "phi3":
        q, k, v = np.split(h @ g("attn_qkv").T, [cfg.n_head * hd, (cfg.n_head + cfg.n_head_kv) * hd], axis=1)
    else:
        q, k, v = (h @ g(f"attn_{x}").T for x in "qkv")
    if cfg.arch == "qwen2":
        q, k, v = q + g("attn_q", "bias"), k + g("attn_k", "bias"), v + g("attn_v", "bias")
    q, k, v = q.reshape(n, cfg.n_head, hd), k.reshape(n, cfg.n_head_kv, hd), v.reshape(n, cfg.n_head_kv, hd)
    if cfg.arch == "qwen3":
        q, k = _rms(q, g("attn_q_norm"), cfg.eps), _rms(k, g("attn_k_norm"), cfg.eps)
    return q, k, v


def _attention(cfg: TinyLlama, q: np.ndarray, k: np.ndarray, v: np.ndarray, il: int) -> np.ndarray:
    """Causal (and on gemma2's even layers windowed) softmax attention, K/V heads shared (GQA)."""
    n, group = len(q), cfg.n_head // cfg.n_head_kv
    k, v = np.repeat(k, group, 1), np.repeat(v, group, 1)
    s = np.einsum("thd,shd->hts", q, k) / np.sqrt(cfg.head_dim)
    if cfg.attn_softcap:
        s = cfg.attn_softcap * np.tanh(s / cfg.attn_softcap)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    visible = j <= i
    if cfg.arch == "gemma2" and cfg.sliding_window and il % 2 == 0:
        visible &= i - j < cfg.sliding_window
    s = np.where(visible, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, v).reshape(n, -1)


def _ffn(cfg: TinyLlama, g, h: np.ndarray) -> np.ndarray:
    """down(act(gate) * up): SiLU, or GELU (tanh) on gemma2; phi3's ffn_up holds gate then up."""
    if cfg.arch == "phi3":
        gate, up = np.split(h @ g("ffn_up").T, 2, axis=1)
    else:
        gate, up = h @ g("ffn_gate").T, h @ g("ffn_up").T
    if cfg.arch == "gemma2":
        act = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate ** 3)))
    else:
        act = gate / (1 + np.exp(-gate))
    return (act * up) @ g("ffn_down").T


def reference_logits(cfg: TinyLlama, w: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """All-position logits by a direct float64 NumPy transcription of the architecture's forward pass."""
    t = {k: v.astype(np.float64) for k, v in w.items()}
    logits = reference_hidden(cfg, w, tokens) @ t.get("output.weight", t["token_embd.weight"]).T
    return cfg.final_softcap * np.tanh(logits / cfg.final_softcap) if cfg.final_softcap else logits


def reference_hidden(cfg: TinyLlama, w: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """All-position output-normed hidden states (before the output head), float64."""
    t = {k: v.astype(np.float64) for k, v in w.items()}
    pos, gemma2 = np.arange(len(tokens)), cfg.arch == "gemma2"
    x = t["token_embd.weight"][tokens] * (np.sqrt(cfg.n_embd) if gemma2 else 1.0)
    for il in range(cfg.n_layer):
        g = lambda name, kind="weight": t[f"blk.{il}.{name}.{kind}"]  # noqa: E731
        q, k, v = _qkv(cfg, g, _rms(x, g("attn_norm"), cfg.eps))
        a = _attention(cfg, _rope(cfg, t, q, pos), _rope(cfg, t, k, pos), v, il) @ g("attn_output").T
        x = x + (_rms(a, g("post_attention_norm"), cfg.eps) if gemma2 else a)
        f = _ffn(cfg, g, _rms(x, g("ffn_norm"), cfg.eps))
        x = x + (_rms(f, g("post_ffw_norm"), cfg.eps) if gemma2 else f)
    return _rms(x, t["output_norm.weight"], cfg.eps)
