"""CuPy kernels: op name -> factory(device, node, out, *srcs) returning the closure that computes the node.

Two paths per op. The array-level path runs on cupy functions only: the NumPy kernels dispatched to cupy through
NumPy's protocols (NEP 13/18; every scratch array and constant is made in the arrays' module, once), with
device versions of what must differ from the host (rope tables from the device positions, dequantization of
GGUF blocks, products without cuBLAS for a few rows). The raw path (`device.raw`, the CUDA kernels of
cuda_sources.py) is taken on a GPU where a fused or block-reading kernel exists for the case; it returns None
where none does. A step that calls cuBLAS is marked (`blas`): it cannot be captured into a CUDA graph.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from pyggml.graph.dtypes import is_quantized
from pyggml.graph.tensor import Tensor

from ..base import Step
from ..numpy.attention import rope_angles, rope_constants, rope_halves, rotate
from ..numpy.kernels import F32, KERNELS as NUMPY_KERNELS, as_f32, f32_compute, matmul_views
from .quants import dequantize_rows

# a product of at most this many multiplications (rows x cols x depth) runs as multiply-and-sum, not cuBLAS
SMALL_PRODUCT = 1 << 22

DeviceFactory = Callable[..., Step]
KERNELS: dict[str, DeviceFactory] = {}


def uses_blas(step: Step) -> Step:
    """Mark a step that calls cuBLAS (not capturable into a CUDA graph)."""
    return _Marked(step, blas=True)


class _Marked:
    """A step with attributes (partials and ufuncs take none)."""

    __slots__ = ("step", "blas")

    def __init__(self, step: Step, blas: bool):
        self.step, self.blas = step, blas

    def __call__(self) -> None:
        self.step()


def device_kernel(*names: str):
    """Register a device factory; with a raw variant tried first on a GPU (`device.raw.<op>`)."""
    def register(fn: DeviceFactory) -> DeviceFactory:
        @functools.wraps(fn)
        def factory(dev, node: Tensor, out, *srcs) -> Step:
            raw = getattr(dev.raw, node.op, None) if dev.raw is not None else None
            step = raw(node, out, *srcs) if raw is not None else None
            return step if step is not None else fn(dev, node, out, *srcs)
        for name in names:
            KERNELS[name] = factory
        return factory
    return register


def _dispatched(op: str) -> DeviceFactory:
    """The NumPy kernel of op, run on device arrays through NumPy's dispatch protocols."""
    return lambda dev, node, out, *srcs: NUMPY_KERNELS[op](node, out, *srcs)


for _op in NUMPY_KERNELS:
    device_kernel(_op)(_dispatched(_op))


@device_kernel("rope")
def rope(dev, node: Tensor, out, a, pos, freq_factors=None) -> Step:
    """Rope with cos/sin tables computed on the device from the position input, every run."""
    def f32_factory(node: Tensor, out, a, pos, freq_factors=None) -> Step:
        p = node.params
        inv_freq, mix, mscale = rope_constants(p)
        inv_freq, mix = dev.const(inv_freq), None if mix is None else dev.const(mix)
        halves, n = rope_halves(p, a, out), p["n_dims"]
        tail = (a[..., n:], out[..., n:]) if n < a.shape[-1] and out is not a else None

        def run() -> None:
            freqs = inv_freq if freq_factors is None else inv_freq / freq_factors
            rotate(*halves, *rope_angles(pos, freqs, mix, mscale, p["freq_scale"]))
            if tail is not None:
                dev.xp.copyto(tail[1], tail[0])
        return run
    return f32_compute(f32_factory)(node, out, a, pos, *(() if freq_factors is None else (freq_factors,)))


@device_kernel("rms_norm")
def rms_norm(dev, node: Tensor, out, a) -> Step:
    """x / sqrt(mean(x^2) + eps)."""
    def f32_factory(node: Tensor, out, a) -> Step:
        return norm_rows_step(dev, a, out, node.params["eps"])
    return f32_compute(f32_factory)(node, out, a)


def norm_rows_step(dev, x, out, eps: float, weight=None) -> Step:
    """out = x / sqrt(mean(x^2) + eps) [* weight] over F32 rows: a raw kernel, or square and mean (no cuBLAS)."""
    raw = dev.raw.rms_norm_rows(x, weight, out, eps) if dev.raw is not None else None
    if raw is not None:
        return raw
    xp, eps = dev.xp, F32(eps)

    def run() -> None:
        xp.divide(x, xp.sqrt(xp.mean(xp.square(x), axis=-1, keepdims=True) + eps), out=out)
        if weight is not None:
            xp.multiply(out, weight, out=out)
    return run


@device_kernel("rms_norm_mul")
def rms_norm_mul(dev, node: Tensor, out, x, w) -> Step:
    """rms_norm(x) * w (backends/fusion.py's pass): one raw launch reading the weight, or array functions."""
    def f32_factory(node: Tensor, out, x, w) -> Step:
        return norm_rows_step(dev, x, out, node.params["eps"], w)
    return f32_compute(f32_factory)(node, out, x, w)


@device_kernel("mul_mat_permuted")
def mul_mat_permuted(dev, node: Tensor, out, a, b) -> Step:
    """mul_mat written straight into its permuted layout (backends/fusion.py's permuted_product)."""
    axes = node.params["axes"]
    permuted_shape = [node.params["product_shape"][i] for i in axes]
    return mul_mat(dev, node, out.reshape(permuted_shape).transpose(*(int(i) for i in np.argsort(axes))), a, b)


@device_kernel("get_rows")
def get_rows(dev, node: Tensor, out, a, idx) -> Step:
    """Rows gathered; from quantized blocks, only the gathered rows are dequantized, on the device."""
    a_type = node.srcs[0].dtype
    if not (is_quantized(a_type) and a.dtype == np.uint8):
        return NUMPY_KERNELS["get_rows"](node, out, a, idx)
    row_len, xp = node.shape[-1], dev.xp
    first = dev.const((np.arange(idx.shape[0]) * node.srcs[0].shape[1])[:, None]) if out.ndim == 3 else None
    dst = out.reshape(-1, row_len)

    def run() -> None:
        rows = idx if first is None else idx + first
        xp.copyto(dst, dequantize_rows(dev.dq, a, a_type, rows, row_len))
    return run


@device_kernel("mul_mat")
def mul_mat(dev, node: Tensor, out, a, b) -> Step:
    """b @ a.T: operands converted to F32 on the device (blocks dequantized), then a product."""
    xp, (a_t, b_t) = dev.xp, (node.srcs[0].dtype, node.srcs[1].dtype)
    fills = []
    if a.dtype == np.uint8:  # raw GGUF blocks (rows, bytes per row): into a buffer shared by same-shaped weights
        blocks, a = a, dev.scratch(node.srcs[0].shape, F32)
        fills.append(lambda: xp.copyto(a, dequantize_rows(dev.dq, blocks, a_t, None, a.shape[-1]).reshape(a.shape)))
    elif a.dtype != F32:
        src_a, a = a, dev.scratch(a.shape, F32)
        fills.append(lambda: xp.copyto(a, as_f32(src_a, a_t)))
    if b.dtype != F32:
        src_b, b = b, xp.empty(b.shape, F32)
        fills.append(lambda: xp.copyto(b, as_f32(src_b, b_t)))
    w_t, b_v, out_v = matmul_views(a, b, out)
    rows, depth, cols = b_v.shape[-2], b_v.shape[-1], w_t.shape[-1]
    if rows * depth * cols <= SMALL_PRODUCT:  # a few rows (decode): multiply and sum, capturable
        bb, ww = b_v[..., :, :, None], w_t[..., None, :, :]
        product: Step = lambda: xp.sum(xp.multiply(bb, ww), axis=-2, out=out_v)  # noqa: E731
    else:
        product = uses_blas(functools.partial(xp.matmul, b_v, w_t, out=out_v))

    def run() -> None:
        for fill in fills:
            fill()
        product()
    return product if not fills else _Marked(run, getattr(product, "blas", False))


@device_kernel("flash_attn_ext", "paged_attn")
def batched_attention(dev, node: Tensor, out, *srcs) -> Step:
    """The NumPy kernel (two batched products through cuBLAS) where no raw decode kernel applies."""
    return uses_blas(NUMPY_KERNELS[node.op](node, out, *srcs))


def is_capturable(step: Any) -> bool:
    """Whether a step can be captured into a CUDA graph (it calls no cuBLAS)."""
    return not getattr(step, "blas", False)
