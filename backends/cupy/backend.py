"""CuPy backend (NVIDIA GPU): raw GGUF blocks on the device, steps on a non-blocking stream, plans captured as
CUDA graphs and replayed (see docs/backends.md for what has run where).

cupy is imported when the backend is created, never at import time, through `import_cupy` (or given as `xp`:
the tests hand it a CPU stand-in). Quantized weights are uploaded once as their blocks and read as blocks by
`get_rows` and `mul_mat`; F16/BF16 tensors stay F16/BF16 on the device. Kernels: cupy_kernels.py.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from pyggml.graph.dtypes import DType, is_quantized, nbytes, numpy_dtype
from pyggml.graph.errors import PyggmlError
from pyggml.graph.graph import Graph
from pyggml.graph.tensor import Tensor

from ..base import Backend, Step
from ..fusion import FUSIONS
from ..quants import dequantize
from .kernels import KERNELS, is_capturable
from .quants import DEVICE_FORMATS, Dequantizer, dequantize_rows

WEIGHT_DTYPES = (DType.F32, DType.F16)
BLOCK_READERS = ("get_rows", "mul_mat")  # ops whose kernels read source 0 as raw blocks


def import_cupy() -> Any:
    """The cupy module with at least one GPU, or a PyggmlError saying why not."""
    try:
        import cupy
    except ImportError:
        raise PyggmlError("cupy not installed (pip install pyggml[cuda12] or pyggml[cuda13])") from None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise PyggmlError("no GPU")
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise PyggmlError(f"no GPU ({e})") from None
    return cupy


class CupyBackend(Backend):
    """GPU backend on CuPy: persistent tensors uploaded once, steps queued on a non-blocking stream."""

    name = "cupy"
    kernels = KERNELS

    def __init__(self, weight_dtype: DType = DType.F32, device: int = 0, raw_kernels: bool | None = None,
                 cuda_graphs: bool = True, xp: Any = None):
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype must be one of {[t.name for t in WEIGHT_DTYPES]}")
        super().__init__()
        self.weight_dtype, self.cuda_graphs = weight_dtype, cuda_graphs
        self.xp = xp if xp is not None else import_cupy()
        self.xp.cuda.Device(device).use()
        self.stream = self.xp.cuda.Stream(non_blocking=True)  # the legacy default stream cannot be captured
        self.stream.use()
        self.dq = Dequantizer(self.xp)
        self._scratch: dict[tuple, Any] = {}
        self.raw = self._raw_kernels(raw_kernels)
        # every pass of backends/fusion.py; fused attention only where the raw attn_decode kernel runs it (the array
        # path's would call cuBLAS, which a CUDA graph cannot capture)
        self.fusions = tuple(f for f in FUSIONS if self.raw is not None or f != "attention")

    def _raw_kernels(self, wanted: bool | None) -> Any:
        """The CUDA kernels (compiled on first use), when cupy has RawModule and they are not turned off."""
        if wanted is False or (wanted is None and not hasattr(self.xp, "RawModule")):
            return None
        from .raw import RawKernels
        return RawKernels(self)

    def reads_blocks(self, node: Tensor, slot: int) -> bool:
        return slot == 0 and node.op in BLOCK_READERS and node.srcs[0].dtype in DEVICE_FORMATS

    def const(self, host: np.ndarray) -> Any:
        """A constant made on the host once per plan, uploaded once."""
        return self.xp.asarray(np.ascontiguousarray(host))

    def scratch(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        """A device buffer shared by every step that needs one of this shape and dtype (steps run in order)."""
        key = (tuple(shape), np.dtype(dtype))
        if key not in self._scratch:
            self._scratch[key] = self.xp.empty(shape, dtype)
        return self._scratch[key]

    def make_placed(self, leaf: Tensor, dense: bool) -> Any:
        if not is_quantized(leaf.dtype):  # F16 stays float16, BF16 its uint16 bits: converted inside kernels
            if leaf.data is None:
                return self.xp.zeros(leaf.shape, numpy_dtype(leaf.dtype))
            return self.const(np.asarray(leaf.data).reshape(leaf.shape))
        if not dense:
            if leaf.data is None:  # zero blocks, (rows, bytes per row)
                return self.xp.zeros((leaf.nelements // leaf.shape[-1], nbytes(leaf.shape[-1:], leaf.dtype)), np.uint8)
            return self.const(np.asarray(leaf.data).reshape(-1, leaf.data.shape[-1]))
        weight = numpy_dtype(self.weight_dtype)
        if leaf.dtype in DEVICE_FORMATS or leaf.data is None:  # its blocks (placed once) dequantized here
            values = dequantize_rows(self.dq, self.place(leaf, False), leaf.dtype, None, leaf.shape[-1])
            return values.reshape(leaf.shape).astype(weight)
        return self.const(dequantize(np.asarray(leaf.data), leaf.dtype, leaf.shape).astype(weight))

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        return self.xp.empty(shape, dtype)

    def arena_view(self, arena: Any, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return arena[offset:offset + n].view(dtype).reshape(shape)

    def strided_view(self, base: Any, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
        return self.xp.ndarray(shape, base.dtype, memptr=base.data + offset, strides=strides)

    def upload(self, dst: Any, host: np.ndarray) -> None:
        dst.set(np.ascontiguousarray(np.reshape(host, dst.shape), dtype=dst.dtype))

    def download(self, src: Any) -> np.ndarray:
        return src.get()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def compile_node(self, node: Tensor, out: Any, srcs: list[Any]) -> Step:
        return self.kernels[node.op](self, node, out, *srcs)

    def sequence(self, graph: Graph, steps: list[tuple[Tensor, Step]]) -> list[Step]:
        """A plan's steps as one CUDA graph when graphs are on and no step calls cuBLAS."""
        calls = super().sequence(graph, steps)
        if not self.cuda_graphs or not calls or not all(is_capturable(s) for s in calls):
            return calls
        return [GraphReplay(self, calls)]


class GraphReplay:
    """A plan's steps run eagerly once (kernels compile, the private pool fills), captured on the second run,
    then replayed; temporaries come from a pool of the graph's own, so no later allocation reuses them."""

    def __init__(self, backend: CupyBackend, steps: list[Step]):
        self.backend, self.steps = backend, steps
        self.pool = backend.xp.cuda.MemoryPool()
        self.graph: Any = None
        self.warm = self.failed = False

    def _run_steps(self) -> None:
        for step in self.steps:
            step()

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.launch(self.backend.stream)
            return
        with self.backend.xp.cuda.using_allocator(self.pool.malloc):
            if not self.warm or self.failed:
                self._run_steps()
                self.warm = True
                return
            self._capture()
        if self.graph is not None:
            self.graph.launch(self.backend.stream)
        else:
            self._run_steps()

    def _capture(self) -> None:
        stream = self.backend.stream
        stream.begin_capture()
        try:
            self._run_steps()
        except Exception as e:  # noqa: BLE001  (what cannot be captured runs eagerly from now on)
            warnings.warn(f"CUDA graph capture failed, running eagerly: {e}", RuntimeWarning, stacklevel=3)
            self.failed = True
        finally:
            graph = self._end_capture()
        self.graph = None if self.failed else graph

    def _end_capture(self) -> Any:
        """The captured graph, or None when CUDA invalidated the capture."""
        try:
            return self.backend.stream.end_capture()
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"CUDA graph capture failed, running eagerly: {e}", RuntimeWarning, stacklevel=4)
            self.failed = True
            return None
