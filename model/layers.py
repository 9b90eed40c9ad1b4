"""Graph pieces shared by the architectures, written with ops only: norms, attention, FFNs."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from gguf import MODEL_TENSOR

from pyggml import ops
from pyggml.graph.dtypes import is_quantized
from pyggml.graph.tensor import Tensor

from .hparams import HParams, YarnParams
from .runtime.paged_cache import PagedKVCache
from .runtime.step import StepInputs
from .weights import Weights


def named(t: Tensor, name: str, il: int | None = None) -> Tensor:
    """Name a tensor as llama.cpp does: `name-il` inside a layer."""
    return t.set_name(name if il is None else f"{name}-{il}")


def rms_norm_w(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """rms_norm(x) * weight."""
    return ops.mul(ops.rms_norm(x, eps), weight)


@dataclass
class AttentionSpec:
    """How a layer attends: rope settings, Q·K scale (default 1/sqrt(head_dim)), the cache kind (window) it reads;
    head counts and sizes come from the shapes of q, k and v."""
    rope_dims: int
    rope_mode: int
    rope_base: float
    rope_scale: float = 1.0
    scale: float | None = None
    window: int | None = None
    softcap: float | None = None         # c in c * tanh(scaled Q·K / c) (gemma2's attention logit soft-cap)
    freq_factors: Tensor | None = None   # rope frequency divisors (Llama 3's rope_freqs)
    yarn: YarnParams | None = None       # YaRN rope scaling


def attention(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec, inp: StepInputs, cache: PagedKVCache | None,
              il: int) -> Tensor:
    """Rope q and k, write k and v into the cache (if any), attend over it; (T, H, D) in, (T, H*D) out."""
    n_tokens, n_head, head_dim = q.shape
    rope = dict(n_dims=spec.rope_dims, mode=spec.rope_mode, freq_base=spec.rope_base, freq_scale=spec.rope_scale,
                freq_factors=spec.freq_factors, **(asdict(spec.yarn) if spec.yarn else {}))
    q = named(ops.rope(q, inp.pos, **rope), "Qcur", il)
    k = named(ops.rope(k, inp.pos, **rope), "Kcur", il)
    scale = spec.scale if spec.scale is not None else 1.0 / math.sqrt(head_dim)
    if inp.kv_rows:  # a paged cache read through each token's own rows
        keys, values = cache.kv_stores(k, v, inp, il, spec.window)
        kqv = ops.paged_attn(q, keys, values, inp.kv_rows[spec.window], scale, spec.softcap or 0.0)
        return named(ops.reshape(kqv, (n_tokens, n_head * values.shape[-1])), "kqv_out", il)
    if cache is None:  # no cache: attend over this step's own keys and values
        keys, values = ops.permute(k, 1, 0, 2), ops.permute(v, 1, 0, 2)
    else:
        keys, values = cache.kv_views(k, v, inp, il, spec.window)
    mask = inp.kq_mask[spec.window]
    if is_quantized(keys.dtype) or is_quantized(values.dtype):  # quantized K/V: fused attention only, as llama.cpp
        kqv = ops.flash_attn_ext(ops.permute(q, 1, 0, 2), keys, values, mask, scale, 0.0, spec.softcap or 0.0)
        return named(ops.reshape(kqv, (n_tokens, n_head * values.shape[-1])), "kqv_out", il)
    if spec.softcap:  # in llama.cpp's order: Q scaled, Q·K soft-capped, then a softmax without further scale
        q, scale = named(ops.scale(q, scale), "Qcur_scaled", il), 1.0
    kq = named(ops.mul_mat(keys, ops.permute(q, 1, 0, 2)), "kq", il)  # (H, T, n_kv)
    if spec.softcap:
        kq = named(softcap(kq, spec.softcap), "kq_softcapped", il)
    kq = named(ops.soft_max_ext(kq, mask, scale), "kq_soft_max", il)
    kqv = named(ops.mul_mat(ops.transpose(values), kq), "kqv", il)  # (H, T, Dv)
    return named(ops.cont(ops.permute(kqv, 1, 0, 2), (n_tokens, n_head * values.shape[-1])), "kqv_out", il)


def softcap(x: Tensor, cap: float) -> Tensor:
    """cap * tanh(x / cap): logits squashed into (-cap, cap)."""
    return ops.scale(ops.tanh(ops.scale(x, 1.0 / cap)), cap)


def linear(w: Weights, kind: MODEL_TENSOR, x: Tensor, il: int | None = None) -> Tensor:
    """x times a weight (out, in), plus its bias when the file has one."""
    y = ops.mul_mat(w.get(kind, il), x)
    bias = w.get_optional(kind, il, "bias")
    return y if bias is None else ops.add(y, bias)


def _columns(x: Tensor, widths: tuple[int, ...]) -> list[Tensor]:
    """Contiguous copies of consecutive column blocks of x (T, sum(widths))."""
    parts, start = [], 0
    for width in widths:
        parts.append(ops.cont(ops.view(x, (x.shape[0], width), x.strides, start * x.strides[-1])))
        start += width
    return parts


def qkv(w: Weights, hp: HParams, x: Tensor, il: int, fused: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Layer il's Q (T, H, D), K (T, Hkv, D) and V (T, Hkv, Dv) projections of x (T, n_embd), from attn_q/k/v or
    from one fused attn_qkv."""
    shapes = ((hp.n_head, hp.head_dim), (hp.n_head_kv, hp.head_dim), (hp.n_head_kv, hp.head_dim_v))
    if fused:
        parts = _columns(linear(w, MODEL_TENSOR.ATTN_QKV, x, il), tuple(h * d for h, d in shapes))
    else:
        parts = [linear(w, kind, x, il) for kind in (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K, MODEL_TENSOR.ATTN_V)]
    q, k, v = (ops.reshape(p, (x.shape[0],) + shape) for p, shape in zip(parts, shapes))
    return q, k, v


def ffn_glu(w: Weights, x: Tensor, il: int, glu: str = "swiglu", fused_gate_up: bool = False) -> Tensor:
    """down(glu(gate(x), up(x))), SwiGLU or GeGLU; fused: ffn_up holds gate then up."""
    act = getattr(ops, glu)
    if fused_gate_up:
        gated = act(named(linear(w, MODEL_TENSOR.FFN_UP, x, il), "ffn_up", il))
    else:
        gated = act(named(linear(w, MODEL_TENSOR.FFN_GATE, x, il), "ffn_gate", il),
                    named(linear(w, MODEL_TENSOR.FFN_UP, x, il), "ffn_up", il))
    return named(linear(w, MODEL_TENSOR.FFN_DOWN, named(gated, "ffn_glu", il), il), "ffn_out", il)
