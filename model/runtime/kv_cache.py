"""The KV cache's element types, its sizes per layer, and the additive attention masks."""
from __future__ import annotations

import numpy as np

from pyggml.graph.dtypes import DType, block_layout
from pyggml.graph.errors import PyggmlError

KV_PAD = 256  # the attended KV length is padded to a multiple of this, so decode plans are reused
KV_TYPES = (DType.F32, DType.F16, DType.Q8_0, DType.Q4_0)  # llama.cpp's --cache-type-k/-v choices people use
DEFAULT_KV_TYPE = DType.F16  # as llama.cpp
BLOCK_SIZE = 16  # tokens per block of the paged cache


def check_kv_types(type_k: DType, type_v: DType, head_dim: int, head_dim_v: int) -> tuple[DType, DType]:
    """The K and V cache types, refused unless each is one of KV_TYPES whose blocks split its head dim."""
    for name, dtype, dim in (("K", type_k, head_dim), ("V", type_v, head_dim_v)):
        if dtype not in KV_TYPES:
            raise PyggmlError(f"{name} cache type must be one of {[t.name.lower() for t in KV_TYPES]}, "
                              f"not {dtype.name.lower()}")
        block = block_layout(dtype)[0]
        if dim % block:
            raise PyggmlError(f"{name} cache type {dtype.name.lower()} needs a head dim that is a multiple of "
                              f"{block}, not {dim}")
    return type_k, type_v


def layer_rows(window: int | None, n_ctx: int, n_batch: int, swa_full: bool = False,
               block_size: int = BLOCK_SIZE) -> int:
    """Cache rows of a layer for one sequence: n_ctx, or for a sliding-window layer the whole blocks that a batch
    of n_batch tokens and the window before it span (window + n_batch when both are whole blocks, as llama.cpp
    sizes its SWA cache); the paged cache rounds n_ctx up to whole blocks."""
    if window is None or swa_full:
        return n_ctx
    return min(n_ctx, block_size * (-(-n_batch // block_size) + -(-(window - 1) // block_size)))


def cache_bytes(windows: list[int | None], n_ctx: int, kv_width: int, element_bytes: int, n_batch: int = 512,
                swa_full: bool = False) -> int:
    """Bytes of K and V over all layers (kv_width = n_kv_head x (head_dim + head_dim_v))."""
    return sum(layer_rows(w, n_ctx, n_batch, swa_full) for w in windows) * kv_width * element_bytes


def causal_mask(positions: np.ndarray, window: int | None = None) -> np.ndarray:
    """The additive mask of a batch attending to itself: causal, and within the window if any."""
    visible = positions[None, :] <= positions[:, None]
    if window is not None:
        visible &= positions[:, None] - positions[None, :] < window
    return additive_mask(visible)


def additive_mask(visible: np.ndarray) -> np.ndarray:
    """0 where visible, -inf elsewhere, as F32."""
    return np.where(visible, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)
