"""rope, soft_max_ext, diag_mask_inf and flash_attn_ext against direct per-element / per-head formulas."""
from __future__ import annotations

import math

import gguf
import numpy as np
import pytest

import pyggml as pg
from pyggml import DType
from pyggml.graph.dtypes import nbytes


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded generator per test."""
    return np.random.default_rng(7)


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Standard-normal float32 values."""
    return rng.standard_normal(shape).astype(np.float32)


def close(got: np.ndarray, want: np.ndarray, tol: float = 1e-5) -> None:
    """Assert same shape and values within a relative/absolute tolerance."""
    assert got.shape == np.shape(want), (got.shape, np.shape(want))
    np.testing.assert_allclose(got.astype(np.float64), np.asarray(want, np.float64), rtol=tol, atol=tol)


def i32(values) -> pg.Tensor:
    """An I32 leaf."""
    return pg.from_numpy(np.asarray(values, np.int32))


# ---------------------------------------------------------------------------------------------- rope

def reference_rope(x: np.ndarray, pos: np.ndarray, n_dims: int, mode: int, base: float, freq_scale: float,
                   freq_factors: np.ndarray | None = None, attn_factor: float = 1.0) -> np.ndarray:
    """Rotate pairs by pos * base^(-2i/n_dims) * freq_scale: (2i, 2i+1) in NORMAL mode, (i, i+n_dims/2) in NEOX."""
    out = x.astype(np.float64).copy()
    n_tokens, n_heads, _ = x.shape
    for t in range(n_tokens):
        for h in range(n_heads):
            for i in range(n_dims // 2):
                theta = pos[t] * base ** (-2.0 * i / n_dims) * freq_scale
                if freq_factors is not None:
                    theta /= freq_factors[i]
                c, s = math.cos(theta) * attn_factor, math.sin(theta) * attn_factor
                j0, j1 = (2 * i, 2 * i + 1) if mode == 0 else (i, i + n_dims // 2)
                x0, x1 = float(x[t, h, j0]), float(x[t, h, j1])
                out[t, h, j0] = x0 * c - x1 * s
                out[t, h, j1] = x0 * s + x1 * c
    return out


@pytest.mark.parametrize("mode", [pg.ROPE_NORMAL, pg.ROPE_NEOX])
@pytest.mark.parametrize("n_dims,head_dim", [(8, 8), (4, 8), (6, 10)])
@pytest.mark.parametrize("freq_base,freq_scale", [(10000.0, 1.0), (500.0, 0.25)])
def test_rope(rng, mode, n_dims, head_dim, freq_base, freq_scale):
    x = rand(rng, 5, 3, head_dim)
    pos = np.array([0, 1, 7, 30, 1000], np.int32)
    got = pg.compute(pg.rope(pg.from_numpy(x), i32(pos), n_dims, mode, freq_base, freq_scale))
    close(got, reference_rope(x, pos, n_dims, mode, freq_base, freq_scale), tol=2e-4)
    np.testing.assert_array_equal(got[..., n_dims:], x[..., n_dims:])  # dims past n_dims pass through


def test_rope_modes_rotate_different_pairs():
    x = np.zeros((1, 1, 4), np.float32)
    x[0, 0, 0] = 1.0
    pos = i32([1])
    normal = pg.compute(pg.rope(pg.from_numpy(x), pos, 4, pg.ROPE_NORMAL))
    neox = pg.compute(pg.rope(pg.from_numpy(x), pos, 4, pg.ROPE_NEOX))
    close(normal[0, 0], [math.cos(1), math.sin(1), 0, 0])  # (0, 1) is a pair
    close(neox[0, 0], [math.cos(1), 0, math.sin(1), 0])    # (0, 2) is a pair


@pytest.mark.parametrize("mode", [pg.ROPE_NORMAL, pg.ROPE_NEOX])
def test_rope_freq_factors_and_attn_factor(rng, mode):
    x = rand(rng, 3, 2, 8)
    pos = np.array([2, 5, 11], np.int32)
    factors = np.array([1.0, 2.0, 4.0, 8.0], np.float32)
    got = pg.compute(pg.rope(pg.from_numpy(x), i32(pos), 8, mode, 10000.0, 1.0, attn_factor=0.5,
                             freq_factors=pg.from_numpy(factors)))
    close(got, reference_rope(x, pos, 8, mode, 10000.0, 1.0, factors, 0.5), tol=2e-4)


def test_rope_yarn_matches_ggml_formula(rng):
    x, pos = rand(rng, 2, 1, 16), np.array([3, 900], np.int32)
    n_dims, base, scale, n_ctx, ext, beta_fast, beta_slow = 16, 10000.0, 0.25, 64, 1.0, 32.0, 1.0

    def corr_dim(n_rot: float) -> float:  # ggml_rope_yarn_corr_dim
        return n_dims * math.log(n_ctx / (n_rot * 2 * math.pi)) / (2 * math.log(base))
    low, high = max(0.0, math.floor(corr_dim(beta_fast))), min(n_dims - 1.0, math.ceil(corr_dim(beta_slow)))
    want = x.astype(np.float64).copy()
    for t in range(2):
        for i in range(n_dims // 2):
            extrap = pos[t] * base ** (-2.0 * i / n_dims)
            ramp_mix = (1 - min(1.0, max(0.0, (i - low) / max(0.001, high - low)))) * ext  # rope_yarn_ramp
            theta = scale * extrap * (1 - ramp_mix) + extrap * ramp_mix
            mscale = 1.0 + 0.1 * math.log(1.0 / scale)
            c, s = math.cos(theta) * mscale, math.sin(theta) * mscale
            x0, x1 = float(x[t, 0, 2 * i]), float(x[t, 0, 2 * i + 1])
            want[t, 0, 2 * i], want[t, 0, 2 * i + 1] = x0 * c - x1 * s, x0 * s + x1 * c
    got = pg.compute(pg.rope(pg.from_numpy(x), i32(pos), n_dims, pg.ROPE_NORMAL, base, scale, n_ctx_orig=n_ctx,
                             ext_factor=ext, beta_fast=beta_fast, beta_slow=beta_slow))
    close(got, want, tol=2e-4)


def test_rope_on_a_strided_view_of_fused_qkv(rng):
    qkv = rand(rng, 4, 3 * 2 * 8)  # (tokens, q|k|v of 2 heads x 8)
    k_view = pg.view(pg.from_numpy(qkv), (4, 2, 8), strides=(qkv.strides[0], 8 * 4, 4), offset=16 * 4)
    pos = np.arange(4, dtype=np.int32) + 3
    got = pg.compute(pg.rope(k_view, i32(pos), 8, pg.ROPE_NEOX))
    close(got, reference_rope(qkv[:, 16:32].reshape(4, 2, 8), pos, 8, pg.ROPE_NEOX, 10000.0, 1.0), tol=2e-4)


# ---------------------------------------------------------------------------------------------- soft_max_ext

def paper_alibi_slopes(n_heads: int, max_bias: float) -> list[float]:
    """ALiBi slopes as the paper's code builds them (with max_bias in place of its 8)."""
    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-max_bias / n)
        return [start * start ** i for i in range(n)]
    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(closest) + paper_alibi_slopes(2 * closest, max_bias)[0::2][:n_heads - closest]


def test_paper_alibi_slopes_sanity():
    assert paper_alibi_slopes(8, 8.0) == [2.0 ** -k for k in range(1, 9)]  # 1/2, 1/4, ... 1/256


def repeat_like(m: np.ndarray, lead: tuple[int, ...]) -> np.ndarray:
    """Tile m's leading dims (ggml_repeat) to `lead`, keeping its last two dims."""
    m = m.reshape((1,) * (len(lead) + 2 - m.ndim) + m.shape)
    return np.tile(m, [a // b for a, b in zip(lead, m.shape[:-2])] + [1, 1])


def reference_soft_max(a: np.ndarray, mask: np.ndarray | None, scale: float, max_bias: float) -> np.ndarray:
    """Per row: softmax(a * scale + slope(head) * mask[row]) in float64."""
    x = a.astype(np.float64) * scale
    if mask is not None:
        m = repeat_like(mask[..., :a.shape[-2], :].astype(np.float64), a.shape[:-2])
        if max_bias > 0:
            slopes = paper_alibi_slopes(a.shape[-3], max_bias)
            for h in range(a.shape[-3]):
                m[..., h, :, :] *= slopes[h]
        x = x + m
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        row = x[idx]
        e = np.exp(row - row.max())
        out[idx] = e / e.sum()
    return out


@pytest.mark.parametrize("shape,mask_shape", [
    ((3, 5), None),
    ((3, 5), (3, 5)),
    ((4, 3, 5), (6, 5)),         # the mask has padding rows beyond N
    ((4, 3, 5), (4, 8, 5)),      # one mask per head
    ((4, 3, 5), (2, 3, 5)),      # a mask per head pair, tiled over the heads
    ((2, 6, 3, 5), (1, 3, 8, 5)),
], ids=str)
@pytest.mark.parametrize("scale", [1.0, 0.125])
@pytest.mark.parametrize("mask_type", [DType.F32, DType.F16])
def test_soft_max_ext(rng, shape, mask_shape, scale, mask_type):
    a = rand(rng, *shape) * 3
    mask = None
    if mask_shape is not None:
        mask = np.where(rng.random(mask_shape) < 0.3, -np.inf, rand(rng, *mask_shape)).astype(np.float32)
        mask[..., 0] = 0.0  # no row fully masked
        mask = mask.astype(np.float16 if mask_type == DType.F16 else np.float32)
    got = pg.compute(pg.soft_max_ext(pg.from_numpy(a), None if mask is None else pg.from_numpy(mask), scale))
    close(got, reference_soft_max(a, mask, scale, 0.0))
    close(got.sum(axis=-1), np.ones(shape[:-1]))


@pytest.mark.parametrize("n_heads", [4, 6])
@pytest.mark.parametrize("max_bias", [8.0, 2.5])
@pytest.mark.parametrize("mask_heads", [None, 1, 2])
def test_soft_max_ext_alibi(rng, n_heads, max_bias, mask_heads):
    a = rand(rng, n_heads, 3, 7)
    mask_shape = (5, 7) if mask_heads is None else (mask_heads, 5, 7)
    mask = -np.abs(rand(rng, *mask_shape)) * np.arange(7, dtype=np.float32)  # distance-like penalties
    got = pg.compute(pg.soft_max_ext(pg.from_numpy(a), pg.from_numpy(mask), 0.5, max_bias))
    close(got, reference_soft_max(a, mask, 0.5, max_bias))


def test_soft_max_ext_on_a_permuted_input(rng):
    x = rand(rng, 3, 4, 5)  # stored (N, H, KV), read as (H, N, KV)
    a = pg.permute(pg.from_numpy(x), 1, 0, 2)
    mask = rand(rng, 3, 5)
    got = pg.compute(pg.soft_max_ext(a, pg.from_numpy(mask), 0.3))
    close(got, reference_soft_max(np.transpose(x, (1, 0, 2)), mask, 0.3, 0.0))


# ---------------------------------------------------------------------------------------------- diag_mask_inf

@pytest.mark.parametrize("n_past", [0, 2])
def test_diag_mask_inf(rng, n_past):
    x = rand(rng, 2, 3, 3 + n_past)
    want = x.astype(np.float64).copy()
    for h in range(2):
        for i in range(3):
            for j in range(3 + n_past):
                if j > n_past + i:
                    want[h, i, j] = -np.inf
    got = pg.compute(pg.diag_mask_inf(pg.from_numpy(x), n_past))
    np.testing.assert_array_equal(got, want.astype(np.float32))


# ---------------------------------------------------------------------------------------------- flash_attn_ext

def reference_attention(q, k, v, mask, scale, softcap=0.0, max_bias=0.0) -> np.ndarray:
    """A naive per-head loop: q head h reads K/V head h // (H / Hkv); output ([B,] N, H, Dv)."""
    lead, (n_head, n_q, _) = q.shape[:-3], q.shape[-3:]
    n_kv_head, n_kv, dv = k.shape[-3], k.shape[-2], v.shape[-1]
    slopes = paper_alibi_slopes(n_head, max_bias) if max_bias > 0 else [1.0] * n_head
    out = np.zeros(lead + (n_q, n_head, dv))
    for b in np.ndindex(*lead):
        for h in range(n_head):
            kh = h // (n_head // n_kv_head)
            for i in range(n_q):
                scores = np.array([float(q[b + (h, i)].astype(np.float64) @ k[b + (kh, j)].astype(np.float64))
                                   for j in range(n_kv)]) * scale
                if softcap:
                    scores = softcap * np.tanh(scores / softcap)
                if mask is not None:
                    m = mask.reshape((1,) * (len(lead) + 3 - mask.ndim) + mask.shape)
                    m_idx = tuple(x % d for x, d in zip(b + (h,), m.shape[:-2]))
                    scores = scores + slopes[h] * m[m_idx + (i,)].astype(np.float64)
                p = np.exp(scores - scores.max())
                out[b + (i, h)] = (p / p.sum()) @ v[b + (kh,)].astype(np.float64)
    return out


@pytest.mark.parametrize("n_head,n_kv_head", [(2, 2), (4, 2), (6, 1)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("softcap", [0.0, 1.5])
def test_flash_attn_ext(rng, n_head, n_kv_head, masked, softcap):
    q, k, v = rand(rng, n_head, 3, 8), rand(rng, n_kv_head, 6, 8), rand(rng, n_kv_head, 6, 5)
    mask = None
    if masked:  # causal over 3 new tokens after 3 cached ones, padded to 4 rows
        mask = np.zeros((4, 6), np.float32)
        for i in range(4):
            mask[i, 3 + i + 1:] = -np.inf
        mask[3] = 123.0  # a padding row: must be ignored
    got = pg.compute(pg.flash_attn_ext(pg.from_numpy(q), pg.from_numpy(k), pg.from_numpy(v),
                                       None if mask is None else pg.from_numpy(mask), 0.35, 0.0, softcap))
    close(got, reference_attention(q, k, v, mask, 0.35, softcap), tol=1e-4)


def test_flash_attn_ext_4d_batched_with_per_head_mask_and_alibi(rng):
    q, k, v = rand(rng, 2, 4, 3, 8), rand(rng, 2, 2, 5, 8), rand(rng, 2, 2, 5, 8)
    mask = np.where(rng.random((4, 3, 5)) < 0.3, -np.inf, 0.0).astype(np.float16)
    mask[..., 0] = 0
    got = pg.compute(pg.flash_attn_ext(pg.from_numpy(q), pg.from_numpy(k), pg.from_numpy(v),
                                       pg.from_numpy(mask), 0.5, 4.0))
    close(got, reference_attention(q, k, v, mask, 0.5, max_bias=4.0), tol=1e-4)


def test_flash_attn_ext_reads_an_f16_cache_through_views(rng):
    n_ctx, n_kv = 8, 5
    cache_k, cache_v = rand(rng, n_ctx, 2, 8).astype(np.float16), rand(rng, n_ctx, 2, 8).astype(np.float16)
    k = pg.permute(pg.view(pg.from_numpy(cache_k), (n_kv, 2, 8)), 1, 0, 2)  # (Hkv, KV, D), not contiguous
    v = pg.permute(pg.view(pg.from_numpy(cache_v), (n_kv, 2, 8)), 1, 0, 2)
    q = rand(rng, 4, 2, 8)
    got = pg.compute(pg.flash_attn_ext(pg.from_numpy(q), k, v, None, 0.3))
    want = reference_attention(q, np.transpose(cache_k[:n_kv], (1, 0, 2)), np.transpose(cache_v[:n_kv], (1, 0, 2)),
                               None, 0.3)
    close(got, want, tol=1e-3)


def test_flash_attn_equals_the_unfused_graph(rng):
    q, k, v = rand(rng, 4, 3, 8), rand(rng, 2, 6, 8), rand(rng, 2, 6, 8)
    mask = np.triu(np.full((3, 6), -np.inf, np.float32), 4)
    tq, tk, tv, tm = (pg.from_numpy(x) for x in (q, k, v, mask))
    kq = pg.soft_max_ext(pg.mul_mat(tk, tq), tm, 0.25)                    # (H, N, KV), K heads broadcast
    kqv = pg.permute(pg.mul_mat(pg.cont(pg.transpose(tv)), kq), 1, 0, 2)   # (N, H, Dv)
    fused, unfused = pg.compute(pg.flash_attn_ext(tq, tk, tv, tm, 0.25), pg.cont(kqv))
    close(fused, unfused, tol=1e-5)
    close(fused, reference_attention(q, k, v, mask, 0.25), tol=1e-4)


def test_flash_attn_ext_with_permuted_q_k_v(rng):
    q_rows, k_rows, v_rows = rand(rng, 3, 4, 8), rand(rng, 5, 2, 8), rand(rng, 5, 2, 6)  # (tokens, heads, dim)
    q, k, v = (pg.permute(pg.from_numpy(x), 1, 0, 2) for x in (q_rows, k_rows, v_rows))   # (heads, tokens, dim)
    mask = np.triu(np.full((3, 5), -np.inf, np.float32), 3)
    got = pg.compute(pg.flash_attn_ext(q, k, v, pg.from_numpy(mask), 0.4))
    want = reference_attention(*(np.transpose(x, (1, 0, 2)) for x in (q_rows, k_rows, v_rows)), mask, 0.4)
    close(got, want, tol=1e-4)


# ---------------------------------------------------------------------------------------------- paged_attn

@pytest.mark.parametrize("n_head,n_kv_head", [(2, 2), (6, 2), (4, 1)])
@pytest.mark.parametrize("softcap", [0.0, 1.5])
def test_paged_attn_reads_each_tokens_own_rows(rng, n_head, n_kv_head, softcap):
    k, v = rand(rng, 12, n_kv_head, 8), rand(rng, 12, n_kv_head, 5)
    q = rand(rng, 4, n_head, 8)
    rows = np.array([[3, 7, -1, 0], [11, -1, -1, -1], [5, 5, 2, 9], [-1, -1, -1, -1]], np.int32)
    got = pg.compute(pg.paged_attn(*(pg.from_numpy(x) for x in (q, k, v, rows)), 0.35, softcap))
    for t, row in enumerate(rows):
        seen = row[row >= 0]
        if len(seen) == 0:  # a token that sees no row gets zeros
            np.testing.assert_array_equal(got[t], 0)
            continue
        want = reference_attention(q[t][:, None], np.swapaxes(k[seen], 0, 1), np.swapaxes(v[seen], 0, 1), None,
                                   0.35, softcap)
        close(got[t], want[0], tol=1e-4)


def f16_cache(values: np.ndarray, name: str) -> pg.Tensor:
    """A persistent F16 tensor (as a KV cache is) holding values, written by cpy."""
    return pg.cpy(pg.from_numpy(values.astype(np.float32)), pg.new_tensor(values.shape, DType.F16, name,
                                                                          pg.Flag.PERSISTENT))


@pytest.mark.parametrize("backend", ["numba", "numba-q8", "numpy"])
def test_attention_reads_a_float16_cache(rng, backend):
    """F16 keys and values (an F16 KV cache; rows of 64 and 32, as the numba kernel converts them 16 at a time):
    paged_attn and the fused flash_attn_ext against the formula on the float16 values."""
    device = pg.backends.create(backend)
    k, v = rand(rng, 12, 2, 64).astype(np.float16), rand(rng, 12, 2, 32).astype(np.float16)
    q, rows = rand(rng, 3, 6, 64), np.array([[3, 7, 0, 11], [5, 5, 2, 9], [1, -1, -1, -1]], np.int32)
    node = pg.paged_attn(pg.from_numpy(q), f16_cache(k, "k"), f16_cache(v, "v"), pg.from_numpy(rows), 0.125)
    got = pg.compute(node, backend=device)
    for t, row in enumerate(rows):
        seen = row[row >= 0]
        want = reference_attention(q[t][:, None], *(np.swapaxes(x[seen], 0, 1).astype(np.float32) for x in (k, v)),
                                   None, 0.125)
        close(got[t], want[0], tol=1e-5)
    kt, vt = (f16_cache(np.swapaxes(x, 0, 1), name) for x, name in ((k, "kt"), (v, "vt")))  # (Hkv, KV, D)
    fused = pg.compute(pg.flash_attn_ext(pg.from_numpy(np.swapaxes(q, 0, 1).copy()), kt, vt, None, 0.125),
                       backend=device)
    close(fused, reference_attention(np.swapaxes(q, 0, 1), *(np.swapaxes(x, 0, 1).astype(np.float32)
                                                              for x in (k, v)), None, 0.125), tol=1e-5)


def quantized_cache(values: np.ndarray, dtype: DType, name: str) -> tuple[pg.Tensor, np.ndarray]:
    """A persistent (R, C) cache of dtype with values (R, C) written by set_rows, and gguf-py's round trip of
    them (its reference quantizer, then its dequantizer): the values the attention should see."""
    cache = pg.new_tensor(values.shape, dtype, name, pg.Flag.PERSISTENT)
    written = pg.set_rows(cache, pg.from_numpy(values), pg.from_numpy(np.arange(len(values), dtype=np.int64)))
    return written, gguf.quants.dequantize(gguf.quants.quantize(values, dtype), dtype).reshape(values.shape)


@pytest.mark.parametrize("backend", ["numba", "numba-q8", "numpy"])
@pytest.mark.parametrize("type_k,type_v", [(DType.Q8_0, DType.Q8_0), (DType.Q4_0, DType.Q4_0),
                                           (DType.Q8_0, DType.Q4_0)])
def test_attention_reads_a_quantized_cache(rng, backend, type_k, type_v):
    """Q8_0/Q4_0 keys and values written by set_rows: paged_attn over the (R, Hkv, D) stores and flash_attn_ext
    over permuted views of their first rows against the formula on gguf-py's dequantized values."""
    device = pg.backends.create(backend)
    k_rows, v_rows = rand(rng, 12, 2 * 64), rand(rng, 12, 2 * 96)
    (k, k_want), (v, v_want) = quantized_cache(k_rows, type_k, "k"), quantized_cache(v_rows, type_v, "v")
    k_want, v_want = k_want.reshape(12, 2, 64), v_want.reshape(12, 2, 96)
    q, rows = rand(rng, 3, 6, 64), np.array([[3, 7, 0, 11], [5, 5, 2, 9], [1, -1, -1, -1]], np.int32)
    node = pg.paged_attn(pg.from_numpy(q), pg.reshape(k, (12, 2, 64)), pg.reshape(v, (12, 2, 96)),
                         pg.from_numpy(rows), 0.125)
    got = pg.compute(node, backend=device)
    for t, row in enumerate(rows):
        seen = row[row >= 0]
        want = reference_attention(q[t][:, None], np.swapaxes(k_want[seen], 0, 1), np.swapaxes(v_want[seen], 0, 1),
                                   None, 0.125)
        close(got[t], want[0], tol=1e-5)
    n_kv = 9  # the first rows, seen as (Hkv, KV, D) without a copy
    kt = pg.view(k, (2, n_kv, 64), (nbytes((64,), type_k), k.strides[0], 0))
    vt = pg.view(v, (2, n_kv, 96), (nbytes((96,), type_v), v.strides[0], 0))
    mask = np.triu(np.full((3, n_kv), -np.inf, np.float32), 7)
    fused = pg.compute(pg.flash_attn_ext(pg.from_numpy(np.swapaxes(q, 0, 1).copy()), kt, vt, pg.from_numpy(mask),
                                         0.125), backend=device)
    close(fused, reference_attention(np.swapaxes(q, 0, 1), np.swapaxes(k_want[:n_kv], 0, 1),
                                     np.swapaxes(v_want[:n_kv], 0, 1), mask, 0.125), tol=1e-5)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_0])
@pytest.mark.parametrize("n_rows", [1, 5])
def test_set_rows_quantizes_as_ggml_reference(rng, backend, dtype, n_rows):
    """The blocks set_rows writes are gguf-py's (ggml's reference quantizers), byte for byte, rows with ties
    and zeros included; rows not written stay as they were."""
    values = rand(rng, n_rows, 96) * 3
    values[0, :32] = 0  # a zero block: d = 0
    values[-1, 32:64] = np.round(values[-1, 32:64])  # halves and equal magnitudes
    cache = pg.new_tensor((8, 96), dtype, "c", pg.Flag.PERSISTENT)
    idx = np.array([6, 1, 3, 0, 4][:n_rows], np.int64)
    written = pg.set_rows(cache, pg.from_numpy(values), pg.from_numpy(idx))
    device = pg.backends.create(backend)
    pg.compute(pg.view(written, (1, 96)), backend=device)
    held = device.place(cache, False)
    np.testing.assert_array_equal(held[idx], gguf.quants.quantize(values, dtype))
    np.testing.assert_array_equal(held[np.setdiff1d(np.arange(8), idx)], 0)


def test_quantized_views_keep_whole_blocks(rng):
    cache = pg.new_tensor((8, 64), DType.Q8_0, "c", pg.Flag.PERSISTENT)
    with pytest.raises(pg.ShapeError, match="rows of whole blocks"):
        pg.view(cache, (8, 16), (cache.strides[0], 0))
    with pytest.raises(pg.ShapeError, match="rows of whole blocks"):
        pg.transpose(cache)
    with pytest.raises(pg.ShapeError, match="flash_attn_ext: keys and values must be float, Q8_0 or Q4_0"):
        pg.flash_attn_ext(pg.from_numpy(rand(rng, 2, 3, 32)), pg.new_tensor((2, 4, 32), DType.Q4_1),
                          pg.new_tensor((2, 4, 32), DType.Q4_1))


def test_paged_attn_takes_tokens_in_chunks_on_the_numpy_backend(rng, monkeypatch):
    from pyggml.backends.numpy import attention as numpy_attention
    q, k, v = rand(rng, 5, 4, 8), rand(rng, 12, 2, 8), rand(rng, 12, 2, 8)
    rows = np.where(rng.random((5, 7)) < 0.3, -1, rng.integers(0, 12, (5, 7))).astype(np.int32)
    node = pg.paged_attn(*(pg.from_numpy(x) for x in (q, k, v, rows)), 0.35)
    whole = pg.compute(node, backend=pg.NumpyBackend())
    monkeypatch.setattr(numpy_attention, "PAGED_GATHER", 2 * 7 * 2 * 8)  # two tokens a chunk
    close(pg.compute(node, backend=pg.NumpyBackend()), whole, tol=1e-7)


def test_paged_attn_refuses_mismatched_shapes(rng):
    q, k, v = (pg.from_numpy(x) for x in (rand(rng, 2, 4, 8), rand(rng, 9, 3, 8), rand(rng, 9, 3, 8)))
    rows = pg.from_numpy(np.zeros((2, 5), np.int32))
    with pytest.raises(pg.ShapeError, match=r"paged_attn: .*H a multiple of Hkv.*\[2, 4, 8\] F32, \[9, 3, 8\] F32"):
        pg.paged_attn(q, k, v, rows)
    with pytest.raises(pg.ShapeError, match=r"paged_attn: .*rows \(T, L\)"):
        pg.paged_attn(q, pg.from_numpy(rand(rng, 9, 2, 8)), pg.from_numpy(rand(rng, 9, 2, 8)),
                      pg.from_numpy(np.zeros((3, 5), np.int32)))
