"""CuPy backend (NVIDIA GPU). UNTESTED: no GPU was available when it was written (see docs/backends.md).

cupy is imported when the backend is created, never at import time. Weights are dequantized once on the host
and uploaded once (F32, or F16 with weight_dtype=F16); the KV cache and every intermediate live on the device.
Kernels are the NumPy kernels themselves: NumPy ufuncs and array functions called on cupy arrays dispatch to
cupy (NEP 13/18), so the two backends share one implementation.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pyggml.graph.dtypes import DType
from pyggml.graph.errors import PyggmlError
from pyggml.graph.tensor import Tensor

from .numpy_backend import NumpyBackend


def import_cupy() -> Any:
    """The cupy module with at least one GPU, or a PyggmlError saying why not."""
    try:
        import cupy
    except ImportError:
        raise PyggmlError("cupy not installed (pip install pyggml[cuda])") from None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise PyggmlError("no GPU")
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise PyggmlError(f"no GPU ({e})") from None
    return cupy


class CupyBackend(NumpyBackend):
    """GPU backend on CuPy: persistent tensors uploaded once, steps queued on the current stream."""

    name = "cupy"

    def __init__(self, weight_dtype: DType = DType.F32, device: int = 0):
        super().__init__(weight_dtype)
        self.cp = import_cupy()
        self.device = self.cp.cuda.Device(device)
        self.device.use()

    def make_placed(self, leaf: Tensor, dense: bool) -> Any:
        return self.cp.asarray(super().make_placed(leaf, dense))  # made on the host, uploaded once

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        return self.cp.empty(shape, dtype)

    def arena_view(self, arena: Any, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return arena[offset:offset + n].view(dtype).reshape(shape)

    def strided_view(self, base: Any, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
        return self.cp.ndarray(shape, base.dtype, memptr=base.data + offset, strides=strides)

    def upload(self, dst: Any, host: np.ndarray) -> None:
        dst[...] = self.cp.asarray(np.reshape(host, dst.shape).astype(dst.dtype, copy=False))

    def download(self, src: Any) -> np.ndarray:
        return self.cp.asnumpy(src)

    def synchronize(self) -> None:
        self.cp.cuda.get_current_stream().synchronize()
