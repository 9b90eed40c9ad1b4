"""The NumPy backend: the reference CPU backend implementing every op."""
from __future__ import annotations

import numpy as np

from pyggml.graph.dtypes import DType, is_quantized, nbytes, numpy_dtype
from pyggml.graph.tensor import Tensor

from .. import fusion  # noqa: F401  (register the attention and fused kernels)
from ..base import Backend
from ..quants import dequantize
from . import attention  # noqa: F401  (register the attention and fused kernels)
from .kernels import KERNELS, as_f32

WEIGHT_DTYPES = (DType.F32, DType.F16)


class NumpyBackend(Backend):
    """CPU backend on NumPy; quantized weights become F32 (or F16 on request) once, when placed."""

    name = "numpy"
    kernels = KERNELS

    def __init__(self, weight_dtype: DType = DType.F32):
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype must be one of {[t.name for t in WEIGHT_DTYPES]}")
        super().__init__()
        self.weight_dtype = weight_dtype

    def make_placed(self, leaf: Tensor, dense: bool) -> np.ndarray:
        if leaf.data is None and is_quantized(leaf.dtype):  # a quantized KV cache: zero blocks, (rows, row bytes)
            return np.zeros((leaf.nelements // leaf.shape[-1], nbytes(leaf.shape[-1:], leaf.dtype)), np.uint8)
        if leaf.data is None:
            return np.zeros(leaf.shape, numpy_dtype(leaf.dtype))
        if not is_quantized(leaf.dtype):
            data = np.asarray(leaf.data).reshape(leaf.shape)
            if leaf.dtype in (DType.F16, DType.BF16):
                return as_f32(data, leaf.dtype).astype(numpy_dtype(self.weight_dtype), copy=False)
            return data
        if not dense:
            return np.asarray(leaf.data).reshape(-1, leaf.data.shape[-1])
        values = dequantize(np.asarray(leaf.data), leaf.dtype, leaf.shape)
        return values.astype(np.float16) if self.weight_dtype == DType.F16 else values

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype)

    def arena_view(self, arena: np.ndarray, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return arena[offset:offset + n].view(dtype).reshape(shape)

    def strided_view(self, base: np.ndarray, offset: int, shape: tuple[int, ...],
                     strides: tuple[int, ...]) -> np.ndarray:
        return np.ndarray(shape, base.dtype, buffer=base, offset=offset, strides=strides)

    def upload(self, dst: np.ndarray, host: np.ndarray) -> None:
        np.copyto(dst, np.reshape(host, dst.shape), casting="same_kind")

    def download(self, src: np.ndarray) -> np.ndarray:
        return np.array(src, copy=True)
