"""Normalisations over the last dim."""
from __future__ import annotations

from pyggml.graph.tensor import Tensor

from .core import make, need_float


# rms_norm: a (..., n) -> (..., n)
def rms_norm(a: Tensor, eps: float = 1e-6) -> Tensor:
    """a / sqrt(mean(a**2) + eps) over the last dim."""
    need_float("rms_norm", a)
    return make("rms_norm", a.shape, (a,), a.dtype, eps=float(eps))


# norm: a (..., n) -> (..., n)
def norm(a: Tensor, eps: float = 1e-5) -> Tensor:
    """(a - mean) / sqrt(var + eps) over the last dim."""
    need_float("norm", a)
    return make("norm", a.shape, (a,), a.dtype, eps=float(eps))
