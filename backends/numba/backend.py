"""The compiled CPU backend: quantized weights stay GGUF blocks and mul_mat reads them with numba kernels.

A weight read by mul_mat keeps its memory-mapped blocks (F16 weights stay F16); a step with up to
BLOCK_KERNEL_MAX_ROWS activation rows (decode, batched decode, prefill chunks) runs the block kernels of
numba_tiles.py and numba_quants.py, a longer one dequantizes a panel of weight rows at a time into a reused
scratch and multiplies it with BLAS. paged_attn, flash_attn_ext, rms_norm_mul, swiglu, get_rows of blocks and
set_rows of several F32 rows have numba kernels too (numba_kernels.py); every other op is the NumPy backend's
kernel.

NumbaQ8Backend ("numba-q8") takes llama.cpp's numerics instead: the weights of the types in numba_q8.TILE_LAYOUTS
are held repacked and mul_mat multiplies them with activations rounded to Q8_0 (numba_q8.py) or, for the K-quants,
Q8_K (numba_q8k.py), in integers, at every row count.
"""
from __future__ import annotations

import mmap
import threading
from collections.abc import Callable

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from pyggml.graph.dtypes import DType
from pyggml.graph.tensor import Tensor

from ..fusion import FUSIONS, mul_mat_permuted_kernel
from ..numpy.backend import NumpyBackend
from ..numpy.kernels import KERNELS, mul_mat as numpy_mul_mat
from .kernels import flash_attn_ext, get_rows, glu, paged_attn, rms_norm_mul, set_rows, tiled_get_rows
from .q8 import Q8_FORMATS, TILE_LAYOUTS, q8_product, repack
from .q8k import K_FORMATS, q8k_product
from .quants import BLOCK_TYPES, block_product, dequantize_into
from .tiles import TILED_MAX_ROWS, tiled_product

BLOCK_KERNEL_MAX_ROWS = 256  # activation rows up to which the block kernels beat dequantized panels + BLAS
# (examples/bench_matvec.py, with one task per thread and the one-row tile: the dequantize-once path is faster at
# 256 rows, 2.5 against 3.5 ms for SmolLM2's 1536 x 576 Q4_1, 52 against 80 ms for 4096 x 4096 Q4_0, and ties at
# 512)
PANEL_ELEMENTS = 1 << 20  # weight elements dequantized at a time on the prefill path (4 MiB of F32)


_BLAS = ThreadpoolController().select(user_api="blas")
_THREAD = threading.local()


def one_blas_thread(factory: Callable) -> Callable:
    """A kernel factory whose steps in a step of the block kernels' size (its attention products) run BLAS on
    one thread: woken for them, BLAS's second thread spins against numba's between the block products (Gemma
    3's decode went from 3 to 20 tok/s with its ring cache; SmolLM2's pp256 ran at 225 tok/s with two BLAS
    threads and 525 with one)."""
    def make(node: Tensor, out: np.ndarray, *srcs: np.ndarray) -> Callable[[], None]:
        step = factory(node, out, *srcs)
        if node.shape[-2] > BLOCK_KERNEL_MAX_ROWS:
            return step

        def run() -> None:
            with _BLAS.limit(limits=1):
                step()
        return run
    return make


def reads_blocks(weight: Tensor) -> bool:
    """Whether mul_mat can read this weight's blocks directly: a 2-D leaf of a type with a block kernel."""
    return weight.is_leaf and readable(weight.shape, weight.dtype)


def readable(shape: tuple[int, ...], dtype: DType) -> bool:
    """Whether a weight of this shape and type stays as stored on this backend (a block kernel reads it)."""
    return len(shape) == 2 and dtype in BLOCK_TYPES and shape[-1] % BLOCK_TYPES[dtype].block == 0


def _rows_of(b: np.ndarray, n_rows: int, k: int) -> tuple[np.ndarray, Callable[[], None] | None]:
    """b as contiguous (n_rows, K) float32: a view, or a scratch array and the step that refreshes it."""
    if b.dtype == np.float32 and b.flags.c_contiguous:
        return b.reshape(n_rows, k), None
    scratch = np.empty((n_rows, k), np.float32)
    return scratch, lambda: np.copyto(scratch, np.reshape(b, (n_rows, k)), casting="same_kind")


def _panel_scratch(n: int) -> np.ndarray:
    """A float32 scratch of at least n elements, one per thread, shared by every panel product it runs (a plan's
    steps run one after another: a scratch per node would hold 4 MiB per weight)."""
    held = getattr(_THREAD, "panel", None)
    if held is None or held.size < n:
        held = _THREAD.panel = np.empty(max(n, PANEL_ELEMENTS), np.float32)
    return held[:n]


def panel_product(dtype: DType, w: np.ndarray, x: np.ndarray, out: np.ndarray) -> Callable[[], None]:
    """out = x @ W.T, W dequantized PANEL_ELEMENTS at a time from its blocks w into the thread's scratch."""
    n_out, k = out.shape[1], x.shape[1]
    step = min(n_out, max(1, PANEL_ELEMENTS // k))

    def run() -> None:
        scratch = _panel_scratch(step * k).reshape(step, k)
        for start in range(0, n_out, step):
            panel = scratch[:min(step, n_out - start)]
            dequantize_into(dtype, w[start:start + len(panel)], panel)
            np.matmul(x, panel.T, out=out[:, start:start + len(panel)])
    return run


def block_step(dtype: DType, w: np.ndarray, x: np.ndarray, out: np.ndarray) -> Callable[[], None]:
    """out = x @ W.T through the float block kernels: register tiles up to TILED_MAX_ROWS activation rows, rows
    dequantized once up to BLOCK_KERNEL_MAX_ROWS, dequantized panels and BLAS past them."""
    if len(x) <= TILED_MAX_ROWS:
        return tiled_product(dtype, w, x, out, numba.get_num_threads())
    if len(x) <= BLOCK_KERNEL_MAX_ROWS:
        return block_product(dtype, w, x, out, numba.get_num_threads())
    return panel_product(dtype, w, x, out)


def q8_step(dtype: DType, w: np.ndarray, x: np.ndarray, out: np.ndarray) -> Callable[[], None]:
    """out = x @ W.T with x quantized to Q8_0 for the repacked types of Q8_FORMATS and to Q8_K for those of
    K_FORMATS (at every row count: they beat the float kernels at all of them), through block_step for the
    others."""
    if dtype in Q8_FORMATS:
        return q8_product(dtype, w, x, out, numba.get_num_threads())
    if dtype in K_FORMATS:
        return q8k_product(dtype, w, x, out, numba.get_num_threads())
    return block_step(dtype, w, x, out)


def block_mul_mat(step: Callable) -> Callable:
    """ggml's mul_mat where a weight held as blocks (uint8 rows) or F16 goes through step(dtype, w, x, out)."""
    def mul_mat(node: Tensor, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> Callable[[], None]:
        w_type = node.srcs[0].dtype
        if not reads_blocks(node.srcs[0]) or a.dtype not in (np.uint8, np.float16):
            return one_blas_thread(numpy_mul_mat)(node, out, a, b)
        k, n_out = node.srcs[0].shape[-1], node.shape[-1]
        n_rows = out.size // n_out
        x, refresh = _rows_of(b, n_rows, k)
        product = step(w_type, a.reshape(n_out, -1).view(np.uint8), x, out.reshape(n_rows, n_out))
        if refresh is None:
            return product
        return lambda: (refresh(), product())
    return mul_mat


class NumbaBackend(NumpyBackend):
    """CPU backend whose mul_mat reads quantized (and F16) weights as they are stored; the default where numba
    imports."""

    name = "numba"
    kernels = {**KERNELS, "mul_mat": block_mul_mat(block_step),
               "mul_mat_permuted": one_blas_thread(mul_mat_permuted_kernel), "paged_attn": paged_attn,
               "rms_norm_mul": rms_norm_mul, "swiglu": glu, "get_rows": get_rows, "flash_attn_ext": flash_attn_ext,
               "set_rows": set_rows}
    fusions = tuple(FUSIONS)

    def __init__(self) -> None:
        super().__init__(DType.F32)

    def reads_blocks(self, node: Tensor, slot: int) -> bool:
        return super().reads_blocks(node, slot) or (node.op == "mul_mat" and slot == 0 and reads_blocks(node.srcs[0]))

    def make_placed(self, leaf: Tensor, dense: bool) -> np.ndarray:
        if leaf.dtype == DType.F16 and leaf.data is not None and not dense:  # read only by mul_mat: stays F16
            return np.asarray(leaf.data).reshape(leaf.shape)
        return super().make_placed(leaf, dense)


class NumbaQ8Backend(NumbaBackend):
    """The numba backend with llama.cpp's numerics: mul_mat quantizes activations to Q8_0 (Q8_K for the K-quants)
    and sums integer products for weights of the types in TILE_LAYOUTS, which it holds repacked (numba_q8.py,
    numba_q8k.py); 2 to 4 times the float kernels' speed, logits within llama.cpp's distance of exact float32."""

    name = "numba-q8"
    kernels = {**NumbaBackend.kernels, "mul_mat": block_mul_mat(q8_step), "get_rows": tiled_get_rows}

    def make_placed(self, leaf: Tensor, dense: bool) -> np.ndarray:
        placed = super().make_placed(leaf, dense)
        if dense or leaf.dtype not in TILE_LAYOUTS or leaf.data is None:
            return placed
        return repack(leaf.dtype, placed, done=release_mapped)


def release_mapped(a: np.ndarray) -> None:
    """Take the whole pages under a out of this process's memory where a lies in a read-only file mapping (a GGUF
    file's): its repacked copy replaces them, so they are never held beside it (they stay in the page cache,
    and a later read maps them again). Any other array is left alone."""
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    base = base.obj if isinstance(base, memoryview) else base  # np.frombuffer holds the map through a memoryview
    if not isinstance(base, mmap.mmap) or not a.flags.c_contiguous:
        return
    start = a.ctypes.data - np.frombuffer(base, np.uint8).ctypes.data
    low, high = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, (start + a.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if high > low:
        base.madvise(mmap.MADV_DONTNEED, low, high - low)
