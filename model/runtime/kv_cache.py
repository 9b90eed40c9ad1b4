"""KV cache: per-layer K and V persistent tensors, the host-side record of which position each row holds,
and the per-step inputs derived from it (rows to write, attention mask)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pyggml import ops
from pyggml.graph.dtypes import DType, block_layout, nbytes
from pyggml.graph.errors import PyggmlError
from pyggml.graph.tensor import Flag, Tensor, new_tensor

if TYPE_CHECKING:
    from .step import StepInputs

KV_PAD = 256  # the attended KV length is padded to a multiple of this, so decode plans are reused
KV_TYPES = (DType.F32, DType.F16, DType.Q8_0, DType.Q4_0)  # llama.cpp's --cache-type-k/-v choices people use
DEFAULT_KV_TYPE = DType.F16  # as llama.cpp


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


def layer_rows(window: int | None, n_ctx: int, n_batch: int, swa_full: bool = False) -> int:
    """Cache rows of a layer: n_ctx, or for a sliding-window layer a ring of window + n_batch rows (enough for
    a whole batch to see its window), as llama.cpp sizes its SWA cache."""
    if window is None or swa_full or window + n_batch >= n_ctx:
        return n_ctx
    return window + n_batch


def cache_bytes(windows: list[int | None], n_ctx: int, kv_width: int, element_bytes: int, n_batch: int = 512,
                swa_full: bool = False) -> int:
    """Bytes of K and V over all layers (kv_width = n_kv_head x (head_dim + head_dim_v))."""
    return sum(layer_rows(w, n_ctx, n_batch, swa_full) for w in windows) * kv_width * element_bytes


@dataclass
class CacheKind:
    """Layers sharing one cell layout: a full cache or a ring; `window` limits what a query sees (SWA)."""
    rows: int
    window: int | None
    ring: bool
    cell_pos: np.ndarray  # position held by each row, -1 when empty

    def write_rows(self, positions: np.ndarray) -> np.ndarray:
        """Rows where tokens at these positions go: the position itself, or position mod rows for a ring."""
        return positions % self.rows if self.ring else positions

    def visible(self, positions: np.ndarray, n_kv: int) -> np.ndarray:
        """(len(positions), n_kv) bool: row r holds a position query p may see (causal, within the window)."""
        cells = self.cell_pos[None, :n_kv]
        ok = (cells >= 0) & (cells <= positions[:, None])
        if self.window is not None:
            ok &= positions[:, None] - cells < self.window
        return ok


class KVCache:
    """K and V tensors of (rows, n_kv_head * head_dim) per layer; full layers hold n_ctx rows, sliding
    layers a ring of window + n_batch rows (as llama.cpp sizes its SWA cache)."""

    def __init__(self, n_layer: int, n_ctx: int, n_kv_head: int, head_dim: int, dtype: DType = DEFAULT_KV_TYPE,
                 windows: list[int | None] | None = None, n_batch: int = 512, head_dim_v: int | None = None,
                 swa_full: bool = False, dtype_v: DType | None = None):
        self.n_ctx, self.n_batch = n_ctx, n_batch
        self.n_kv_head, self.head_dim, self.head_dim_v = n_kv_head, head_dim, head_dim_v or head_dim
        self.dtype, self.dtype_v = check_kv_types(dtype, dtype_v or dtype, self.head_dim, self.head_dim_v)
        windows = windows or [None] * n_layer
        self.kinds: dict[int | None, CacheKind] = {}
        for w in dict.fromkeys(windows):
            rows = layer_rows(w, n_ctx, n_batch, swa_full)
            self.kinds[w] = CacheKind(rows, w, rows < n_ctx, np.full(rows, -1, np.int64))
        self.layer_kind = [self.kinds[w] for w in windows]
        self.k = [self._tensor(f"cache_k_l{il}", kind.rows, self.head_dim, self.dtype)
                  for il, kind in enumerate(self.layer_kind)]
        self.v = [self._tensor(f"cache_v_l{il}", kind.rows, self.head_dim_v, self.dtype_v)
                  for il, kind in enumerate(self.layer_kind)]
        self.n_past = 0

    def _tensor(self, name: str, rows: int, dim: int, dtype: DType) -> Tensor:
        return new_tensor((rows, self.n_kv_head * dim), dtype, name=name, flags=Flag.PERSISTENT)

    @property
    def nbytes(self) -> int:
        """Bytes of all K and V tensors."""
        return sum(t.nbytes for t in self.k + self.v)

    def n_kv(self, kind: CacheKind, end: int) -> int:
        """The padded number of rows attention reads when positions up to `end` are filled."""
        if kind.ring:
            return kind.rows
        return min(kind.rows, -(-end // KV_PAD) * KV_PAD)

    def check_room(self, n_new: int) -> None:
        """Refuse a batch that does not fit in the context."""
        if self.n_past + n_new > self.n_ctx:
            raise PyggmlError(f"{self.n_past + n_new} tokens do not fit in the context of {self.n_ctx}")

    def commit(self, positions: np.ndarray) -> None:
        """Record that these positions were written (call after the step that wrote them)."""
        for kind in self.kinds.values():
            kind.cell_pos[kind.write_rows(positions)] = positions
        self.n_past = int(positions[-1]) + 1

    def truncate(self, n: int) -> None:
        """Keep positions below n, forget the rest (the tensors keep their memory; masks hide stale rows)."""
        for kind in self.kinds.values():
            kind.cell_pos[kind.cell_pos >= n] = -1
        self.n_past = min(self.n_past, n)

    def kv_views(self, k: Tensor, v: Tensor, inp: StepInputs, il: int, window: int | None) -> tuple[Tensor, Tensor]:
        """Write this step's k, v rows (T, Hkv, D) into layer il's cache; return (Hkv, n_kv, D) views of its
        first n_kv rows (of a quantized cache: rows of whole blocks per head)."""
        n_tokens, n_kv_head = k.shape[0], k.shape[1]
        idx, n_kv = inp.kv_idx[window], inp.kq_mask[window].shape[-1]
        views = []
        for cur, store, name in ((k, self.k[il], "k_cache"), (v, self.v[il], "v_cache")):
            dim = cur.shape[-1]
            written = ops.set_rows(store, ops.reshape(cur, (n_tokens, n_kv_head * dim)), idx)
            strides = (nbytes((dim,), store.dtype), store.strides[0], store.strides[-1])
            views.append(ops.view(written, (n_kv_head, n_kv, dim), strides).set_name(f"{name}-{il}"))
        return views[0], views[1]

    def step_inputs(self, positions: np.ndarray) -> dict[int | None, tuple[np.ndarray, np.ndarray]]:
        """Per cache kind: (rows to write, additive float mask) for a batch at these positions."""
        end = int(positions[-1]) + 1
        inputs = {}
        for w, kind in self.kinds.items():
            rows = kind.write_rows(positions)
            saved = kind.cell_pos[rows].copy()
            kind.cell_pos[rows] = positions  # the batch sees itself (causally)
            visible = kind.visible(positions, self.n_kv(kind, end))
            kind.cell_pos[rows] = saved
            inputs[w] = (rows.astype(np.int64), additive_mask(visible))
        return inputs


def causal_mask(positions: np.ndarray, window: int | None = None) -> np.ndarray:
    """The additive mask of a batch attending to itself: causal, and within the window if any."""
    visible = positions[None, :] <= positions[:, None]
    if window is not None:
        visible &= positions[:, None] - positions[None, :] < window
    return additive_mask(visible)


def additive_mask(visible: np.ndarray) -> np.ndarray:
    """0 where visible, -inf elsewhere, as F32."""
    return np.where(visible, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)
