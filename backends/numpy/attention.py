"""NumPy kernels of the attention ops: masked softmax with ALiBi, rope (NORMAL/NEOX, YaRN), fused attention over
whole K/V or over rows picked per query (paged)."""
from __future__ import annotations

import math

import numpy as np

from pyggml.graph.tensor import Tensor
from pyggml.ops import ROPE_NEOX

from .kernels import F32, as_f32, f32_compute, kernel, split_view, tile_shapes


def alibi_slopes(n_head: int, max_bias: float) -> np.ndarray:
    """Per-head ALiBi slopes as ggml computes them (ones when max_bias is 0)."""
    if max_bias <= 0:
        return np.ones(n_head, F32)
    n_log2 = 2 ** int(math.floor(math.log2(n_head)))
    m0, m1 = 2.0 ** (-max_bias / n_log2), 2.0 ** (-max_bias / 2.0 / n_log2)
    h = np.arange(n_head)
    return np.where(h < n_log2, m0 ** (h + 1), m1 ** (2 * (h - n_log2) + 1)).astype(F32)


def mask_view(mask: np.ndarray, mask_dtype, scores_shape: tuple[int, ...], max_bias: float):
    """A function returning the mask's first rows, tiled as ggml repeats it, times the ALiBi slopes."""
    rows = scores_shape[-2]
    lead_split, mask_lead_split = tile_shapes(scores_shape[:-2], mask.shape[:-2])
    slopes = None
    if max_bias > 0:
        n_head = scores_shape[-3]
        # the head dim is split like the scores' lead dims when the mask tiles it (mask heads between 1 and H)
        head_split, _ = tile_shapes((n_head,), (mask.shape[-3] if mask.ndim >= 3 else 1,))
        # made once, in the mask's array module (like=: uploaded once to a device)
        slopes = np.asarray(alibi_slopes(n_head, max_bias), like=mask).reshape(head_split + (1, 1))
        slopes = slopes.reshape((1,) * (len(lead_split) - len(head_split)) + slopes.shape)

    def get() -> np.ndarray:
        m = as_f32(mask[..., :rows, :], mask_dtype)
        m = split_view(m, mask_lead_split + m.shape[-2:])
        return m if slopes is None else m * slopes
    if slopes is None and mask.dtype == F32:  # a view of the mask buffer, made once: it sees new values
        fixed = get()
        return lead_split, lambda: fixed
    return lead_split, get


def softmax_into(x: np.ndarray, out: np.ndarray) -> None:
    """out = softmax(x) over the last dim; x may be overwritten, out may alias x."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=out)
    out /= out.sum(axis=-1, keepdims=True)


@kernel("soft_max_ext")
@f32_compute
def soft_max_ext(node: Tensor, out, a, mask=None):
    scale, max_bias = F32(node.params["scale"]), node.params["max_bias"]
    if mask is None:
        return lambda: softmax_into(np.multiply(a, scale), out)
    lead_split, get_mask = mask_view(mask, node.srcs[1].dtype, a.shape, max_bias)
    a_v, out_v = split_view(a, lead_split + a.shape[-2:]), split_view(out, lead_split + a.shape[-2:])

    def run():
        np.multiply(a_v, scale, out=out_v)
        np.add(out_v, get_mask(), out=out_v)
        softmax_into(out_v, out_v)
    return run


def yarn_corr_dims(n_dims: int, n_ctx_orig: int, base: float, beta_fast: float, beta_slow: float):
    """The dims where YaRN ramps from extrapolation to interpolation (ggml_rope_yarn_corr_dims)."""
    def corr_dim(n_rot: float) -> float:
        return n_dims * math.log(n_ctx_orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))
    return max(0.0, math.floor(corr_dim(beta_fast))), min(n_dims - 1.0, math.ceil(corr_dim(beta_slow)))


def rope_constants(p: dict) -> tuple[np.ndarray, np.ndarray | None, float]:
    """inv_freq (n_dims/2,) float64, YaRN's per-dim mix (None without YaRN) and the magnitude scale."""
    n_dims = p["n_dims"]
    i = np.arange(0, n_dims, 2, dtype=np.float64)
    inv_freq, mix, mscale = p["freq_base"] ** (-i / n_dims), None, p["attn_factor"]
    if p["ext_factor"] != 0.0:
        low, high = yarn_corr_dims(n_dims, p["n_ctx_orig"], p["freq_base"], p["beta_fast"], p["beta_slow"])
        mix = (1 - np.clip((i / 2 - low) / max(0.001, high - low), 0, 1)) * p["ext_factor"]
        mscale *= 1.0 + 0.1 * math.log(1.0 / p["freq_scale"])
    return inv_freq, mix, mscale


def rope_angles(pos, inv_freq, mix, mscale: float, freq_scale: float):
    """cos and sin (N, 1, n_dims/2) float32 for the positions; arrays of any one module (NumPy, cupy)."""
    theta_extrap = pos.astype(np.float64)[:, None] * inv_freq[None, :]
    theta = theta_extrap * freq_scale
    if mix is not None:
        theta = theta * (1 - mix) + theta_extrap * mix
    return (np.cos(theta) * mscale).astype(F32)[:, None, :], (np.sin(theta) * mscale).astype(F32)[:, None, :]


def rope_tables(p: dict, pos: np.ndarray, freq_factors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of shape (N, 1, n_dims/2) for the positions, with freq_scale, YaRN and attn_factor."""
    inv_freq, mix, mscale = rope_constants(p)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors
    return rope_angles(pos, inv_freq, mix, mscale, p["freq_scale"])


_ROPE_CACHE: dict[tuple, tuple[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}


def rope_tables_cached(settings: tuple, p: dict, pos: np.ndarray,
                       freq_factors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cos, sin, cos + i sin as complex64), computed once for every layer roping the same positions with the
    same settings."""
    key = settings if freq_factors is None else (settings, freq_factors.tobytes())
    positions = pos.tobytes()
    hit = _ROPE_CACHE.get(key)
    if hit is None or hit[0] != positions:
        cos, sin = rope_tables(p, pos, freq_factors)
        hit = _ROPE_CACHE[key] = (positions, (cos, sin, (cos + 1j * sin).astype(np.complex64)))
    return hit[1]


def _pairs_as_complex(x: np.ndarray, half: int) -> np.ndarray | None:
    """Adjacent pairs (x[2i], x[2i+1]) of the first 2*half values as complex64, or None if the last dim is strided."""
    if x.strides[-1] != x.itemsize or x.dtype != F32:
        return None
    return x.view(np.complex64)[..., :half]


@kernel("rope")
@f32_compute
def rope(node: Tensor, out, a, pos, freq_factors=None):
    p, n = node.params, node.params["n_dims"]
    half = n // 2
    settings = tuple(sorted(p.items()))
    tail = (lambda: np.copyto(out[..., n:], a[..., n:])) if n < a.shape[-1] and out is not a else (lambda: None)
    a_c, out_c = _pairs_as_complex(a, half), _pairs_as_complex(out, half)
    if p["mode"] != ROPE_NEOX and a_c is not None and out_c is not None:
        def run_complex():  # NORMAL mode is a complex product per pair: one ufunc call
            np.multiply(a_c, rope_tables_cached(settings, p, pos, freq_factors)[2], out=out_c)
            tail()
        return run_complex
    halves = rope_halves(p, a, out)

    def run():
        rotate(*halves, *rope_tables_cached(settings, p, pos, freq_factors)[:2])
        tail()
    return run


def rope_halves(p: dict, a, out) -> tuple:
    """Views (x0, x1, o0, o1) of the rotated pairs' first and second elements in a and out."""
    n, half = p["n_dims"], p["n_dims"] // 2
    if p["mode"] == ROPE_NEOX:
        return a[..., :half], a[..., half:n], out[..., :half], out[..., half:n]
    return a[..., 0:n:2], a[..., 1:n:2], out[..., 0:n:2], out[..., 1:n:2]


def rotate(x0, x1, o0, o1, cos, sin) -> None:
    """(o0, o1) = (x0 cos - x1 sin, x0 sin + x1 cos); o may alias x."""
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    o0[...], o1[...] = r0, r1


def softcap_into(s, cap: float) -> None:
    """s = cap * tanh(s / cap) in place (the attention logit soft-cap; nothing when cap is 0)."""
    if cap:
        s /= F32(cap)
        np.tanh(s, out=s)
        s *= F32(cap)


def attention_mask(mask: np.ndarray, mask_dtype, heads_lead: tuple[int, ...], scores_shape: tuple[int, ...],
                   max_bias: float):
    """A function returning the mask added to grouped scores (lead, Hkv, group, N, KV)."""
    rows = scores_shape[-2]
    if max_bias <= 0 and mask.ndim == 2:
        return lambda: as_f32(mask[:rows], mask_dtype)
    heads_shape = heads_lead + scores_shape[-2:]
    lead_split, get_heads_mask = mask_view(mask, mask_dtype, heads_shape, max_bias)
    return lambda: np.broadcast_to(get_heads_mask(), lead_split + scores_shape[-2:]).reshape(scores_shape)


@kernel("flash_attn_ext")
@f32_compute
def flash_attn_ext(node: Tensor, out, q, k, v, mask=None):
    p = node.params
    scale, softcap = F32(p["scale"]), p["logit_softcap"]
    k_type, v_type = node.srcs[1].dtype, node.srcs[2].dtype
    n_kv_head, group = k.shape[-3], q.shape[-3] // k.shape[-3]
    lead = q.shape[:-3]
    q_g = split_view(q, lead + (n_kv_head, group) + q.shape[-2:])
    out_g = split_view(np.swapaxes(out, -2, -3), lead + (n_kv_head, group) + (out.shape[-3], out.shape[-1]))
    scores_shape = lead + (n_kv_head, group, q.shape[-2], k.shape[-2])
    get_mask = None
    if mask is not None:
        get_mask = attention_mask(mask, node.srcs[3].dtype, lead + (q.shape[-3],), scores_shape, p["max_bias"])

    def run():
        kf = as_f32(k, k_type)[..., :, None, :, :]
        vf = as_f32(v, v_type)[..., :, None, :, :]
        s = np.matmul(q_g, np.swapaxes(kf, -1, -2))
        s *= scale
        softcap_into(s, softcap)
        if get_mask is not None:
            s += get_mask()
        softmax_into(s, s)
        np.matmul(s, vf, out=out_g)
    return run


PAGED_GATHER = 1 << 22  # K (and V) values gathered at a time by paged_attn: tokens are taken in chunks


@kernel("paged_attn")
@f32_compute
def paged_attn(node: Tensor, out, q, k, v, rows):
    scale, softcap = F32(node.params["scale"]), node.params["logit_softcap"]
    k_type, v_type = node.srcs[1].dtype, node.srcs[2].dtype
    n_tok, n_kv_head = q.shape[0], k.shape[1]
    q_g = q.reshape(n_tok, n_kv_head, q.shape[1] // n_kv_head, 1, q.shape[2])  # (T, Hkv, G, 1, D)
    out_g = out.reshape(n_tok, n_kv_head, q_g.shape[2], 1, out.shape[2])
    dims = max(node.srcs[1].shape[2], node.srcs[2].shape[2])
    chunk = max(1, PAGED_GATHER // max(1, rows.shape[1] * k.shape[1] * dims))

    def attend(lo: int, hi: int) -> None:
        seen = rows[lo:hi] >= 0
        picked = np.where(seen, rows[lo:hi], 0)
        kr = np.swapaxes(as_f32(k[picked], k_type), 1, 2)[:, :, None]  # (t, Hkv, 1, L, D)
        vr = np.swapaxes(as_f32(v[picked], v_type), 1, 2)[:, :, None]
        s = np.matmul(q_g[lo:hi], np.swapaxes(kr, -1, -2))  # (t, Hkv, G, 1, L)
        s *= scale
        softcap_into(s, softcap)
        s = np.where(seen[:, None, None, None, :], s, F32(-np.inf))  # no boolean indexing: it syncs a device
        top = s.max(axis=-1, keepdims=True)
        s -= np.where(np.isfinite(top), top, F32(0))
        np.exp(s, out=s)
        total = s.sum(axis=-1, keepdims=True)
        s /= np.where(total > 0, total, F32(1))  # a row that sees no key: all weights 0, output 0
        np.matmul(s, vr, out=out_g[lo:hi])

    def run():
        for lo in range(0, n_tok, chunk):
            attend(lo, min(lo + chunk, n_tok))
    return run
