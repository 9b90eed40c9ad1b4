"""The numba backend's kernels of ops other than mul_mat: paged_attn, where each (query row, K/V head) task reads
only the cache rows its sequence holds (the masked form multiplies every query row with every sequence's rows:
8 sequences, 8x the work), and rms_norm_mul in one pass per row (NumPy's five ufunc calls cost 8-15 us on a
few rows, 61 times a SmolLM2 step)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import float32 as f32, njit, prange

from pyggml.graph.tensor import Tensor

from .fusion import rms_norm_mul_kernel as numpy_rms_norm_mul
from .numpy_attention import paged_attn as numpy_paged_attn
from .numba_quants import FAST


@njit(parallel=True, cache=True, fastmath=FAST)
def _paged_attn(q, k, v, rows, scale, softcap, out):
    """out[t, h] = softmax(softcap(q[t, h] · k[rows[t], h // G] * scale)) v[rows[t], h // G] (negative rows
    skipped; zeros where none is left)."""
    n_tok, n_head, n_kv_head, n_rows = q.shape[0], q.shape[1], k.shape[1], rows.shape[1]
    group = n_head // n_kv_head
    for task in prange(n_tok * n_kv_head):
        t, hk = task // n_kv_head, task % n_kv_head
        qs = q[t, hk * group:(hk + 1) * group]
        scores = np.full((group, n_rows), -np.inf, np.float32)
        for j in range(n_rows):  # each K row read once for the group's query heads
            r = rows[t, j]
            if r >= 0:
                kr = k[r, hk]
                for g in range(group):
                    s = f32(0)
                    for d in range(kr.shape[0]):
                        s += qs[g, d] * kr[d]
                    s *= scale
                    scores[g, j] = softcap * np.tanh(s / softcap) if softcap > 0 else s
        for g in range(group):
            top = scores[g].max()
            total = f32(0)
            for j in range(n_rows):
                p = f32(0) if scores[g, j] == -np.inf else np.exp(scores[g, j] - top)
                scores[g, j] = p
                total += p
            if total > 0:
                scores[g] /= total
        os = out[t, hk * group:(hk + 1) * group]
        os[:] = 0
        for j in range(n_rows):
            r = rows[t, j]
            if r >= 0:
                vr = v[r, hk]
                for g in range(group):
                    p = scores[g, j]
                    for d in range(vr.shape[0]):
                        os[g, d] += p * vr[d]


def paged_attn(node: Tensor, out: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
               rows: np.ndarray) -> Callable[[], None]:
    """paged_attn through the numba kernel for an F32 cache; an F16 one goes through the NumPy kernel."""
    if not all(a.dtype == np.float32 for a in (q, k, v, out)):
        return numpy_paged_attn(node, out, q, k, v, rows)
    scale, softcap = np.float32(node.params["scale"]), np.float32(node.params["logit_softcap"])
    return lambda: _paged_attn(q, k, v, rows, scale, softcap, out)


@njit(cache=True, fastmath=FAST)
def _rms_norm_mul(x, w, eps, out):
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w; out may be x."""
    n = x.shape[1]
    for t in range(x.shape[0]):
        s = f32(0)
        for i in range(n):
            s += x[t, i] * x[t, i]
        scale = f32(1) / np.sqrt(s / f32(n) + eps)
        for i in range(n):
            out[t, i] = x[t, i] * scale * w[i]


def rms_norm_mul(node: Tensor, out: np.ndarray, x: np.ndarray, w: np.ndarray) -> Callable[[], None]:
    """rms_norm_mul through the numba kernel for contiguous F32 rows; anything else through the NumPy kernel."""
    if not (x.dtype == out.dtype == w.dtype == np.float32 and x.flags.c_contiguous and out.flags.c_contiguous):
        return numpy_rms_norm_mul(node, out, x, w)
    rows, rows_out, eps = x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1]), np.float32(node.params["eps"])
    return lambda: _rms_norm_mul(rows, w, eps, rows_out)
