"""Attention ops: masked softmax, rotary position embedding, causal masking, fused attention."""
from __future__ import annotations

from pyggml.graph.dtypes import DType, FLOAT_TYPES, ROW_QUANT_TYPES
from pyggml.graph.tensor import Tensor

from .core import can_repeat, fail, make, need_float, need_index

KV_READ_TYPES = FLOAT_TYPES | ROW_QUANT_TYPES  # what the fused attention ops read keys and values in

ROPE_NORMAL, ROPE_NEOX = 0, 2
ROPE_MODES = (ROPE_NORMAL, ROPE_NEOX)


def _check_mask(op: str, scores_shape: tuple[int, ...], mask: Tensor, *operands: Tensor) -> None:
    """The mask covers (>= rows, exactly the columns) and its leading dims tile the scores'."""
    if mask.dtype not in (DType.F32, DType.F16) or mask.ndim < 2:
        raise fail(op, "mask must be F32/F16 with at least 2 dims", *operands, mask)
    if mask.shape[-1] != scores_shape[-1] or mask.shape[-2] < scores_shape[-2]:
        raise fail(op, "mask must have the scores' columns and at least their rows", *operands, mask)
    if not can_repeat(mask.shape[:-2], scores_shape[:-2]):
        raise fail(op, "mask's leading dims must tile the scores'", *operands, mask)


def _need_kv(op: str, q: Tensor, k: Tensor, v: Tensor) -> None:
    """q float, k and v float or of a quantized KV cache type."""
    need_float(op, q)
    if k.dtype not in KV_READ_TYPES or v.dtype not in KV_READ_TYPES:
        raise fail(op, "keys and values must be float, Q8_0 or Q4_0", q, k, v)


# soft_max_ext: a (..., H, N, KV), mask (>=N, KV) optional -> softmax(a * scale + mask * alibi_slope[H])
def soft_max_ext(a: Tensor, mask: Tensor | None = None, scale: float = 1.0, max_bias: float = 0.0) -> Tensor:
    """Softmax over the last dim of a*scale plus the mask (ALiBi slopes per head when max_bias > 0)."""
    need_float("soft_max_ext", a)
    if mask is not None:
        _check_mask("soft_max_ext", a.shape, mask, a)
    if max_bias > 0 and a.ndim < 3:
        raise fail("soft_max_ext", "ALiBi needs a head dim (at least 3 dims)", a)
    srcs = (a,) if mask is None else (a, mask)
    return make("soft_max_ext", a.shape, srcs, DType.F32, scale=float(scale), max_bias=float(max_bias))


# diag_mask_inf: a (..., N, KV) -> a with -inf where column > n_past + row
def diag_mask_inf(a: Tensor, n_past: int) -> Tensor:
    """Causal mask: hide the future of each row."""
    need_float("diag_mask_inf", a)
    if a.ndim < 2:
        raise fail("diag_mask_inf", "needs at least 2 dims", a)
    return make("diag_mask_inf", a.shape, (a,), a.dtype, n_past=int(n_past))


# rope: a (N, H, D), pos (N,) I32 [, freq_factors (n_dims/2,)] -> (N, H, D) rotated on the first n_dims
def rope(a: Tensor, pos: Tensor, n_dims: int, mode: int = ROPE_NORMAL, freq_base: float = 10000.0,
         freq_scale: float = 1.0, n_ctx_orig: int = 0, ext_factor: float = 0.0, attn_factor: float = 1.0,
         beta_fast: float = 32.0, beta_slow: float = 1.0, freq_factors: Tensor | None = None) -> Tensor:
    """Rotary embedding (ggml_rope_ext): NORMAL rotates adjacent pairs, NEOX the two halves; YaRN via ext_factor."""
    need_float("rope", a)
    need_index("rope", pos)
    if a.ndim != 3 or pos.shape != (a.shape[0],):
        raise fail("rope", "needs a (N, H, D) and pos (N,)", a, pos)
    if mode not in ROPE_MODES or n_dims % 2 or not 0 < n_dims <= a.shape[-1]:
        raise fail("rope", f"mode {mode} must be one of {ROPE_MODES}, n_dims {n_dims} even and <= D", a, pos)
    srcs = (a, pos)
    if freq_factors is not None:
        if freq_factors.shape != (n_dims // 2,) or freq_factors.dtype != DType.F32:
            raise fail("rope", f"freq_factors must be F32 ({n_dims // 2},)", a, pos, freq_factors)
        srcs += (freq_factors,)
    return make("rope", a.shape, srcs, DType.F32, n_dims=int(n_dims), mode=int(mode), freq_base=float(freq_base),
                freq_scale=float(freq_scale), n_ctx_orig=int(n_ctx_orig), ext_factor=float(ext_factor),
                attn_factor=float(attn_factor), beta_fast=float(beta_fast), beta_slow=float(beta_slow))


# flash_attn_ext: q ([B,] H, N, D), k ([B,] Hkv, KV, D), v ([B,] Hkv, KV, Dv), mask (>=N, KV) -> ([B,] N, H, Dv)
def flash_attn_ext(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float = 1.0,
                   max_bias: float = 0.0, logit_softcap: float = 0.0) -> Tensor:
    """softmax(softcap(q k^T * scale) + mask) v per head, K/V heads shared by groups of Q heads (GQA); k and v
    float or Q8_0/Q4_0 (a quantized KV cache)."""
    _need_kv("flash_attn_ext", q, k, v)
    ok = q.ndim in (3, 4) and k.ndim == v.ndim == q.ndim and k.shape[-1] == q.shape[-1]
    ok = ok and k.shape[:-1] == v.shape[:-1] and k.shape[-3] > 0 and q.shape[-3] % k.shape[-3] == 0
    if not ok or q.shape[:-3] != k.shape[:-3]:
        raise fail("flash_attn_ext", "needs q (H, N, D), k (Hkv, KV, D), v (Hkv, KV, Dv), H a multiple of Hkv",
                   q, k, v)
    srcs = (q, k, v)
    if mask is not None:
        _check_mask("flash_attn_ext", q.shape[:-1] + (k.shape[-2],), mask, q, k, v)
        srcs += (mask,)
    shape = q.shape[:-3] + (q.shape[-2], q.shape[-3], v.shape[-1])
    return make("flash_attn_ext", shape, srcs, DType.F32, scale=float(scale), max_bias=float(max_bias),
                logit_softcap=float(logit_softcap))


# paged_attn: q (T, H, D), k (R, Hkv, D), v (R, Hkv, Dv), rows (T, L) I32/I64 -> (T, H, Dv)
def paged_attn(q: Tensor, k: Tensor, v: Tensor, rows: Tensor, scale: float = 1.0,
               logit_softcap: float = 0.0) -> Tensor:
    """Attention of each query row t over the key/value rows rows[t] of k and v (a negative index is no key; a
    row that sees none gives zeros): softmax(softcap(q k^T * scale)) v per head, GQA as flash_attn_ext. The
    rows are a paged cache's block tables spelled out per query row (vLLM's PagedAttention); k and v float or
    Q8_0/Q4_0."""
    _need_kv("paged_attn", q, k, v)
    need_index("paged_attn", rows, ndim=2)
    ok = q.ndim == k.ndim == v.ndim == 3 and k.shape[-1] == q.shape[-1] and k.shape[:-1] == v.shape[:-1]
    if not ok or k.shape[1] == 0 or q.shape[1] % k.shape[1] or rows.shape[:1] != q.shape[:1] or rows.ndim != 2:
        raise fail("paged_attn", "needs q (T, H, D), k (R, Hkv, D), v (R, Hkv, Dv), rows (T, L), H a multiple of Hkv",
                   q, k, v, rows)
    return make("paged_attn", q.shape[:2] + v.shape[-1:], (q, k, v, rows), DType.F32, scale=float(scale),
                logit_softcap=float(logit_softcap))
