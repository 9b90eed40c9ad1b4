"""A tiny random llama written as a real GGUF file, and an independent NumPy forward pass to check it against."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np


@dataclass
class TinyLlama:
    """Shapes of the synthetic model."""
    n_vocab: int = 64
    n_embd: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 48
    rope_base: float = 10000.0
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def make_weights(cfg: TinyLlama, seed: int = 0) -> dict[str, np.ndarray]:
    """Random F32 weights under llama.cpp's tensor names (NumPy order: out x in)."""
    rng = np.random.default_rng(seed)
    d, hd, ff = cfg.n_embd, cfg.head_dim, cfg.n_ff
    mat = lambda rows, cols: (rng.normal(size=(rows, cols)) / np.sqrt(cols)).astype(np.float32)  # noqa: E731
    norm = lambda: (1 + 0.1 * rng.normal(size=d)).astype(np.float32)  # noqa: E731
    w = {"token_embd.weight": mat(cfg.n_vocab, d), "output_norm.weight": norm()}
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        w.update({p + "attn_norm.weight": norm(), p + "attn_q.weight": mat(cfg.n_head * hd, d),
                  p + "attn_k.weight": mat(cfg.n_head_kv * hd, d), p + "attn_v.weight": mat(cfg.n_head_kv * hd, d),
                  p + "attn_output.weight": mat(d, cfg.n_head * hd), p + "ffn_norm.weight": norm(),
                  p + "ffn_gate.weight": mat(ff, d), p + "ffn_up.weight": mat(ff, d), p + "ffn_down.weight": mat(d, ff)})
    return w


def write_gguf(path: Path, cfg: TinyLlama, weights: dict[str, np.ndarray], tokens: list[str] | None = None,
               token_types: list[int] | None = None, eos_id: int | None = None, n_ctx: int = 256,
               raw_dtypes: dict[str, int] | None = None) -> Path:
    """Write the model with gguf's writer (llama arch, a byte-level BPE vocabulary: by default single letters);
    raw_dtypes names the weights given as quantized blocks and their type."""
    tokens = tokens or [chr(ord("a") + i % 26) * (1 + i // 26) for i in range(cfg.n_vocab)]
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((w.add_context_length, n_ctx), (w.add_embedding_length, cfg.n_embd),
                       (w.add_block_count, cfg.n_layer), (w.add_feed_forward_length, cfg.n_ff),
                       (w.add_head_count, cfg.n_head), (w.add_head_count_kv, cfg.n_head_kv),
                       (w.add_rope_dimension_count, cfg.head_dim), (w.add_rope_freq_base, cfg.rope_base),
                       (w.add_layer_norm_rms_eps, cfg.eps), (w.add_tokenizer_model, "gpt2"),
                       (w.add_tokenizer_pre, "gpt-2"), (w.add_token_list, tokens),
                       (w.add_token_types, token_types or [gguf.TokenType.NORMAL] * len(tokens)),
                       (w.add_token_merges, []), (w.add_eos_token_id, len(tokens) - 1 if eos_id is None else eos_id)):
        add(value)
    for name, value in weights.items():
        w.add_tensor(name, value, raw_dtype=(raw_dtypes or {}).get(name))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def reference_logits(cfg: TinyLlama, w: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """All-position logits by a direct float64 NumPy transcription of the llama forward pass."""
    t = {k: v.astype(np.float64) for k, v in w.items()}
    n, hd, pos = len(tokens), cfg.head_dim, np.arange(len(tokens))

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.eps) * g

    def rope(x):  # adjacent pairs (2i, 2i+1) rotated by pos * base^(-2i/hd)
        theta = pos[:, None] * cfg.rope_base ** (-np.arange(0, hd, 2) / hd)
        c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
        out = np.empty_like(x)
        out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
        out[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
        return out

    x = t["token_embd.weight"][tokens]
    causal = np.where(np.tril(np.ones((n, n))) > 0, 0.0, -np.inf)
    for il in range(cfg.n_layer):
        g = lambda name: t[f"blk.{il}.{name}.weight"]  # noqa: E731
        h = rms(x, g("attn_norm"))
        q = rope((h @ g("attn_q").T).reshape(n, cfg.n_head, hd))
        k = np.repeat(rope((h @ g("attn_k").T).reshape(n, cfg.n_head_kv, hd)), cfg.n_head // cfg.n_head_kv, 1)
        v = np.repeat((h @ g("attn_v").T).reshape(n, cfg.n_head_kv, hd), cfg.n_head // cfg.n_head_kv, 1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + causal
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", p, v).reshape(n, -1) @ g("attn_output").T
        h = rms(x, g("ffn_norm"))
        gate, up = h @ g("ffn_gate").T, h @ g("ffn_up").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ g("ffn_down").T
    return rms(x, t["output_norm.weight"]) @ t["token_embd.weight"].T
