"""Tensor: one node or leaf of a lazy graph; it records what to compute, never computes."""
from __future__ import annotations

import enum
import itertools
from typing import Any

import numpy as np

from .dtypes import DType, as_dtype, block_layout, is_quantized, nbytes, numpy_dtype
from .errors import ShapeError

MAX_DIMS = 4
_ids = itertools.count()


class Flag(enum.IntFlag):
    """Roles of a tensor: inputs change per run, persistent tensors (weights, KV cache) stay placed."""
    NONE = 0
    INPUT = 1
    OUTPUT = 2
    WEIGHT = 4
    PERSISTENT = 8


def contiguous_strides(shape: tuple[int, ...], dtype: DType) -> tuple[int, ...]:
    """Byte strides of a contiguous tensor in NumPy order; a quantized type strides by rows (last stride 0)."""
    if not shape:
        return ()
    if is_quantized(dtype):
        block, size = block_layout(dtype)
        inner, step = 0, shape[-1] // block * size
    else:
        inner = numpy_dtype(dtype).itemsize
        step = inner * shape[-1]
    strides = [inner]
    for dim in reversed(shape[:-1]):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


class Tensor:
    """A graph value: shape (NumPy order), dtype, the op and sources that make it, or host data for a leaf."""

    __slots__ = ("id", "shape", "dtype", "op", "srcs", "params", "name", "flags", "data",
                 "view_src", "view_offset", "strides", "__weakref__")

    def __init__(self, shape: tuple[int, ...], dtype: DType | int | str = DType.F32, *, op: str | None = None,
                 srcs: tuple[Tensor, ...] = (), params: dict[str, Any] | None = None, name: str = "",
                 flags: Flag = Flag.NONE, data: np.ndarray | None = None, view_src: Tensor | None = None,
                 view_offset: int = 0, strides: tuple[int, ...] | None = None):
        shape = tuple(int(d) for d in shape)
        if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
            raise ShapeError(f"tensor {name or '?'}: shape {shape} must have at most {MAX_DIMS} non-negative dims")
        self.id = next(_ids)
        self.shape, self.dtype = shape, as_dtype(dtype)
        self.op, self.srcs, self.params = op, tuple(srcs), dict(params or {})
        self.name, self.flags, self.data = name, Flag(flags), data
        # a view always points at the storage-owning tensor, with the offset into that storage
        base = view_src.view_src if view_src is not None and view_src.view_src is not None else None
        self.view_src = base or view_src
        self.view_offset = view_offset + (view_src.view_offset if base is not None else 0)
        self.strides = strides if strides is not None else contiguous_strides(shape, self.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nelements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        """Bytes this tensor's elements occupy when stored contiguously."""
        return nbytes(self.shape, self.dtype)

    @property
    def is_leaf(self) -> bool:
        return self.op is None

    @property
    def is_view(self) -> bool:
        return self.view_src is not None

    @property
    def is_contiguous(self) -> bool:
        return self.strides == contiguous_strides(self.shape, self.dtype) or self.nelements <= 1

    def set_name(self, name: str) -> Tensor:
        """Name the tensor (chainable, like ggml_set_name)."""
        self.name = name
        return self

    def set_flag(self, flag: Flag) -> Tensor:
        """Add a role flag (chainable)."""
        self.flags |= flag
        return self

    def __repr__(self) -> str:
        what = self.op or ("input" if self.flags & Flag.INPUT else "leaf")
        return f"Tensor({self.name or '#' + str(self.id)}, {what}, {list(self.shape)}, {self.dtype.name})"


def new_tensor(shape: tuple[int, ...], dtype: DType | int | str = DType.F32, name: str = "",
               flags: Flag = Flag.NONE) -> Tensor:
    """A leaf without data: an input or a persistent buffer (e.g. a KV cache)."""
    return Tensor(shape, dtype, name=name, flags=flags)


def input_tensor(shape: tuple[int, ...], dtype: DType | int | str = DType.F32, name: str = "") -> Tensor:
    """A leaf whose value is supplied on every run of a plan."""
    return Tensor(shape, dtype, name=name, flags=Flag.INPUT)


def from_numpy(array: np.ndarray, name: str = "", flags: Flag = Flag.NONE,
               dtype: DType | int | str | None = None) -> Tensor:
    """A leaf carrying host data; `dtype` + raw blocks (shape rows x bytes) make a quantized leaf."""
    if dtype is None or not is_quantized(as_dtype(dtype)):
        array = np.asarray(array, order="C")  # the tensor's strides are contiguous: its data must be too
        return Tensor(array.shape, as_dtype(dtype or array.dtype), name=name, flags=flags, data=array)
    qtype = as_dtype(dtype)
    block, size = block_layout(qtype)
    shape = tuple(array.shape[:-1]) + (array.shape[-1] // size * block,)
    return Tensor(shape, qtype, name=name, flags=flags, data=array)
