"""Reductions over the last dim."""
from __future__ import annotations

from pyggml.graph.dtypes import DType
from pyggml.graph.tensor import Tensor

from .core import fail, make, need_float


# sum_rows: a (..., n) -> (..., 1)
def sum_rows(a: Tensor) -> Tensor:
    """Sum of each row."""
    need_float("sum_rows", a)
    return make("sum_rows", a.shape[:-1] + (1,), (a,), DType.F32)


# mean: a (..., n) -> (..., 1)
def mean(a: Tensor) -> Tensor:
    """Mean of each row."""
    need_float("mean", a)
    return make("mean", a.shape[:-1] + (1,), (a,), DType.F32)


# argmax: a (rows, n) -> (rows,) I32
def argmax(a: Tensor) -> Tensor:
    """Index of the largest value of each row (first on ties)."""
    need_float("argmax", a)
    if a.ndim != 2:
        raise fail("argmax", "needs a 2-D tensor", a)
    return make("argmax", a.shape[:-1], (a,), DType.I32)
