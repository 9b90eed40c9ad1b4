"""The CuPy backend's raw-kernel path: factories launching the CUDA kernels of cuda_sources.py.

Each factory has the name of the op it computes and returns None when its kernel does not cover the case (the
array-level path of cupy_kernels.py then computes it). Kernels compile once per backend, on first use (at plan
compilation, before any capture). Strides are passed in elements.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from pyggml.graph.tensor import Tensor
from pyggml.ops import ROPE_NEOX

from ..base import Step
from ..numpy.attention import yarn_corr_dims
from ..numpy.kernels import F32
from . import cuda_sources
from .kernels import uses_blas

KERNEL_NAMES = ([f"{kind}_{t}" for t in cuda_sources.BLOCK_TYPES for kind in ("mmv", "get_rows", "to_f16")]
                + ["rms_norm_f32", "rope_f32", "soft_max_f32", "glu_f32"]
                + [f"{kind}_{f}" for f in cuda_sources.FLOAT_TYPES for kind in ("attn_decode", "mm_small")])
MMV_ROWS = 8  # a product with at most this many rows of b runs as mat-vec kernels (decode), else through cuBLAS
ROWS_PER_BLOCK = 4  # warps (output rows) per block of the mat-vec kernels
THREADS = 256
I32, I64 = np.int32, np.int64
NULL = np.uint64(0)


def elems(x: Any, axis: int) -> I64:
    """The stride of an axis in elements."""
    return I64(x.strides[axis] // x.itemsize)


def blocks_for(n: int) -> tuple[int]:
    """The grid of a launch with a thread per element."""
    return (max(1, math.ceil(n / THREADS)),)


def weight_kind(node: Tensor, a: Any) -> str | None:
    """The kernel suffix of a weight read as blocks (raw GGUF blocks, or an F16 matrix as 1-element blocks)."""
    name = node.srcs[0].dtype.name.lower()
    if a.dtype == np.uint8 and name in cuda_sources.BLOCK_TYPES:
        return name
    return "f16" if a.dtype == np.float16 and a.ndim == 2 and a.flags.c_contiguous else None


class RawKernels:
    """The compiled CUDA kernels of one backend and the factories that launch them."""

    def __init__(self, backend: Any):
        self.backend, self.xp = backend, backend.xp
        self._module: Any = None

    def fn(self, name: str) -> Any:
        """A kernel by name (the module compiles with NVRTC on the first call)."""
        if self._module is None:
            self._module = self.xp.RawModule(code=cuda_sources.source(), options=("--std=c++17",))
        return self._module.get_function(name)

    def mul_mat(self, node: Tensor, out, a, b) -> Step | None:
        if b.dtype != F32 or out.dtype != F32:
            return None
        kind = weight_kind(node, a) if len(node.srcs[0].shape) == 2 else None
        if kind is not None and b.ndim == 2 and b.flags.c_contiguous and out.flags.c_contiguous:
            return self._weight_product(kind, node, out, a, b)
        if a.dtype in (F32, np.float16) and a.ndim == b.ndim and b.ndim in (2, 3) and b.shape[-2] <= MMV_ROWS:
            return self._small_product(*((out, a, b) if b.ndim == 3 else (out[None], a[None], b[None])))
        return None

    def _weight_product(self, kind: str, node: Tensor, out, a, b) -> Step:
        """Mat-vec kernels for a few rows; else the weight dequantized to F16 and a cuBLAS product."""
        (rows, depth), row_bytes = node.srcs[0].shape, I64(a.nbytes // node.srcs[0].shape[0])
        if b.shape[0] <= MMV_ROWS:
            fn, grid = self.fn(f"mmv_{kind}"), (math.ceil(rows / ROWS_PER_BLOCK), b.shape[0])
            args = (a, b, out, I32(depth), I32(rows), row_bytes, I64(depth), I64(rows))
            return lambda: fn(grid, (32, ROWS_PER_BLOCK), args)
        scratch = self.backend.scratch((rows, depth), np.float16)
        fn, n = self.fn(f"to_f16_{kind}"), rows * depth
        args = (a, scratch, I32(depth), row_bytes, I64(n))
        xp, weight_t = self.xp, scratch.T

        def run() -> None:
            fn(blocks_for(n), (THREADS,), args)
            xp.matmul(b, weight_t, out=out)
        return uses_blas(run)

    def _small_product(self, out, a, b) -> Step:
        """out[i] = b[i] @ a[i // ratio].T for a few rows per batch (decode attention over the cache views)."""
        batch, n, depth = b.shape
        m_rows, kind = a.shape[1], "f16" if a.dtype == np.float16 else "f32"
        fn = self.fn(f"mm_small_{kind}")
        grid = (math.ceil(m_rows / ROWS_PER_BLOCK), n, batch)
        args = (a, b, out, I32(m_rows), I32(depth), I32(batch // a.shape[0]), elems(a, 0), elems(a, 1), elems(a, 2),
                elems(b, 0), elems(b, 1), elems(b, 2), elems(out, 0), elems(out, 1))
        return lambda: fn(grid, (32, ROWS_PER_BLOCK), args)

    def get_rows(self, node: Tensor, out, a, idx) -> Step | None:
        kind = weight_kind(node, a)
        if kind is None or out.dtype != F32 or not out.flags.c_contiguous or not idx.flags.c_contiguous:
            return None
        src_shape, n = node.srcs[0].shape, out.size
        per_batch, batch_rows = (idx.shape[1], src_shape[1]) if out.ndim == 3 else (idx.size, 0)
        row_bytes = a.nbytes // int(np.prod(src_shape[:-1]))
        fn = self.fn(f"get_rows_{kind}")
        args = (a, idx, I32(idx.dtype == np.int64), out, I32(out.shape[-1]), I64(row_bytes), I64(n), I32(per_batch),
                I64(batch_rows))
        return lambda: fn(blocks_for(n), (THREADS,), args)

    def rms_norm(self, node: Tensor, out, a) -> Step | None:
        return self.rms_norm_rows(a, None, out, node.params["eps"])

    def rms_norm_rows(self, x, weight, out, eps: float) -> Step | None:
        """out = x / sqrt(mean(x^2) + eps) [* weight] over contiguous F32 rows: one launch."""
        if x.dtype != F32 or out.dtype != F32 or not (x.flags.c_contiguous and out.flags.c_contiguous):
            return None
        ncols = x.shape[-1]
        fn = self.fn("rms_norm_f32")
        args = (x, NULL if weight is None else weight, out, I32(ncols), F32(eps), I64(ncols), I64(ncols))
        return lambda: fn((x.size // ncols,), (THREADS,), args)

    def rope(self, node: Tensor, out, a, pos, freq_factors=None) -> Step | None:
        if a.dtype != F32 or out.dtype != F32 or a.strides[-1] != 4 or out.strides[-1] != 4:
            return None
        p, (n_tokens, n_heads, head_dim) = node.params, a.shape
        low, high = (0.0, 0.0) if p["ext_factor"] == 0.0 else \
            yarn_corr_dims(p["n_dims"], p["n_ctx_orig"], p["freq_base"], p["beta_fast"], p["beta_slow"])
        fn, n = self.fn("rope_f32"), n_tokens * n_heads * (head_dim // 2)
        args = (a, out, pos, I32(pos.dtype == np.int64), NULL if freq_factors is None else freq_factors,
                I32(n_tokens), I32(n_heads), I32(head_dim), I32(p["n_dims"]), I32(p["mode"] == ROPE_NEOX),
                *(F32(p[k]) for k in ("freq_base", "freq_scale", "ext_factor", "attn_factor")), F32(low), F32(high),
                elems(a, 0), elems(a, 1), elems(out, 0), elems(out, 1))
        return lambda: fn(blocks_for(n), (THREADS,), args)

    def soft_max_ext(self, node: Tensor, out, a, mask=None) -> Step | None:
        contiguous = a.dtype == F32 and a.flags.c_contiguous and out.flags.c_contiguous
        mask_rows = mask is None or (mask.ndim == 2 and mask.strides[0] == mask.shape[1] * mask.itemsize)
        if not contiguous or not mask_rows:
            return None
        ncols, rows = a.shape[-1], a.shape[-2]
        n_heads = a.shape[-3] if a.ndim >= 3 else 1
        n_log2 = 2 ** int(math.floor(math.log2(n_heads)))
        bias = node.params["max_bias"]
        m0, m1 = (2.0 ** (-bias / n_log2), 2.0 ** (-bias / 2.0 / n_log2)) if bias > 0 else (1.0, 1.0)
        mask32 = mask if mask is not None and mask.dtype == F32 else NULL
        mask16 = mask if mask is not None and mask.dtype == np.float16 else NULL
        fn = self.fn("soft_max_f32")
        args = (a, mask32, mask16, out, I32(ncols), I32(rows), I32(n_heads), I32(rows), I64(0), I32(1),
                F32(node.params["scale"]), F32(m0), F32(m1), I32(n_log2))
        return lambda: fn((a.size // ncols,), (THREADS,), args)

    def _glu(self, node: Tensor, out, a, b=None) -> Step | None:
        if a.dtype != F32 or a.ndim != 2 or a.strides[-1] != 4 or not out.flags.c_contiguous:
            return None
        n = out.shape[-1]
        gate, up = (a[:, :n], a[:, n:]) if b is None else (a, b)
        if node.params["swapped"]:
            gate, up = up, gate
        if up.dtype != F32 or up.strides[-1] != 4:
            return None
        fn, total = self.fn("glu_f32"), out.size
        args = (gate, up, out, I32(n), I64(total), elems(gate, 0), elems(up, 0), I32(node.op == "geglu"))
        return lambda: fn(blocks_for(total), (THREADS,), args)

    swiglu = geglu = _glu

    def flash_attn_ext(self, node: Tensor, out, q, k, v, mask=None) -> Step | None:
        p = node.params
        if p["max_bias"] > 0 or out.ndim != 3:
            return None
        return self.attention(q, k, v, mask, out, elems(out, 1), p["scale"], p["logit_softcap"])

    def attention(self, q, k, v, mask, out, out_head: I64, scale: float, softcap: float = 0.0) -> Step | None:
        """softmax(q k^T * scale + mask) v for one query row per head (H, 1, D), K/V (Hkv, n_kv, D) from the
        cache: a block per KV head, a warp per query head of its group; out rows `out_head` elements apart."""
        kind = {F32: "f32", np.float16: "f16"}.get(k.dtype.type)
        decode = q.ndim == 3 and q.shape[1] == 1 and q.dtype == F32 and k.dtype == v.dtype and kind is not None
        rows_contiguous = q.strides[-1] == 4 and k.strides[-1] == v.strides[-1] == k.itemsize
        if not decode or not rows_contiguous or max(k.shape[-1], v.shape[-1]) > 256:
            return None
        if mask is not None and (mask.dtype != F32 or mask.strides[-1] != 4):
            return None
        n_kv_heads, group = k.shape[0], q.shape[0] // k.shape[0]
        if group > 32:  # a warp per query head of the group, in one block
            return None
        fn = self.fn(f"attn_decode_{kind}")
        args = (q, k, v, NULL if mask is None else mask, out, I32(k.shape[1]), I32(k.shape[2]), I32(v.shape[2]),
                I32(group), F32(scale), F32(softcap), elems(q, 0), elems(k, 0), elems(k, 1), elems(v, 0),
                elems(v, 1), out_head)
        return lambda: fn((n_kv_heads,), (32, group), args)
