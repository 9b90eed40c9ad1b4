"""NumPy kernels: op name -> factory(node, out, *srcs) returning the closure that computes the node.

Factories run once per plan: they precompute views, tables and broadcast shapes, so that the closures
they return do only the arithmetic. `out` may be the same memory as the first source (in-place ops).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from pyggml.graph.dtypes import FLOAT_TYPES, DType, block_layout, is_quantized
from pyggml.graph.tensor import Tensor

from ..quants import dequantize, dequantize_rows, quantize_rows

F32 = np.float32
GELU_COEF_A = 0.044715
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

KERNELS: dict[str, Callable] = {}


def kernel(*names: str):
    """Register a factory under one or more op names."""
    def register(fn):
        for name in names:
            KERNELS[name] = fn
        return fn
    return register


def as_f32(x: np.ndarray, dtype: DType) -> np.ndarray:
    """Float32 values of an array; BF16 values are held as uint16 (a placed BF16 weight may already be F32), a
    quantized one's as uint8 rows of blocks (..., bytes per row)."""
    if x.dtype == np.uint8 and is_quantized(dtype):
        block, size = block_layout(dtype)
        return dequantize(x, dtype, x.shape[:-1] + (x.shape[-1] // size * block,))
    if x.dtype == np.uint16 and dtype == DType.BF16:
        return (x.astype(np.uint32) << 16).view(F32)
    return x if x.dtype == F32 else x.astype(F32)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """BF16 bit patterns (uint16) of float values, rounded to nearest even as ggml_fp32_to_bf16 (NaN kept quiet)."""
    u = x.astype(F32, copy=False).view(np.uint32)  # methods only: works on any array module
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where((u & 0x7FFFFFFF) > 0x7F800000, ((u >> 16) | 64).astype(np.uint16), rounded)


def store(out: np.ndarray, values: np.ndarray, dtype: DType) -> None:
    """Write float values into out held in dtype's storage (BF16 as uint16), converting."""
    if out.dtype == np.uint16 and dtype == DType.BF16:
        np.copyto(out, to_bf16(np.broadcast_to(values, out.shape)))
    else:
        np.copyto(out, values, casting="unsafe")


def split_view(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Reshape that must not copy (splitting dims of a strided view is always possible)."""
    y = np.reshape(x, shape)
    if y.size and not np.may_share_memory(x, y):
        raise ValueError(f"reshape of {x.shape} (strides {x.strides}) to {shape} would copy")
    return y


def f32_compute(factory: Callable) -> Callable:
    """Wrap a factory written for F32 arrays: F16/BF16 sources and results go through F32 scratch arrays.

    The conversion happens inside the step, on every run, so that new input values are seen.
    """
    @functools.wraps(factory)
    def wrapped(node: Tensor, out: np.ndarray, *srcs: np.ndarray):
        convert = [i for i, (t, x) in enumerate(zip(node.srcs, srcs)) if t.dtype in FLOAT_TYPES and x.dtype != F32]
        convert_out = node.dtype in FLOAT_TYPES and out.dtype != F32
        if not convert and not convert_out:
            return factory(node, out, *srcs)
        # empty_like dispatches to the arrays' module (NEP 18): a device backend gets device scratch
        scratch = [np.empty_like(x, F32, order="C") if i in convert else x for i, x in enumerate(srcs)]
        out_f32 = np.empty_like(out, F32, order="C") if convert_out else out
        step = factory(node, out_f32, *scratch)
        pairs = [(scratch[i], srcs[i], node.srcs[i].dtype) for i in convert]

        def run():
            for dst, src, dtype in pairs:
                np.copyto(dst, as_f32(src, dtype))
            step()
            if convert_out:
                store(out, out_f32, node.dtype)
        return run
    return wrapped


def tile_shapes(big: tuple[int, ...], small: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes that make NumPy broadcasting do ggml's repeat: split each big dim d into (d // s, s)."""
    small = (1,) * (len(big) - len(small)) + small
    big_split: list[int] = []
    small_split: list[int] = []
    for d, s in zip(big, small):
        big_split += [d // s, s] if s not in (1, d) else [d]
        small_split += [1, s] if s not in (1, d) else [s]
    return tuple(big_split), tuple(small_split)


def tiled(big: np.ndarray, small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Views of big and small such that small broadcasts as ggml repeats it."""
    big_shape, small_shape = tile_shapes(big.shape, small.shape)
    return split_view(big, big_shape), split_view(small, small_shape)


def _ufunc_binary(fn: np.ufunc):
    @f32_compute
    def factory(node: Tensor, out, a, b):
        out_t, b_t = tiled(out, b)
        a_t = split_view(a, out_t.shape)
        return functools.partial(fn, a_t, b_t, out_t)  # no Python frame per call; `out` positional is cheaper
    return factory


for _name, _fn in (("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("div", np.divide)):
    kernel(_name)(_ufunc_binary(_fn))


def silu_into(x: np.ndarray, out: np.ndarray) -> None:
    """out = x * sigmoid(x); out may alias x."""
    t = np.negative(x)
    np.exp(t, out=t)
    t += 1
    np.divide(x, t, out=out)


def gelu_into(x: np.ndarray, out: np.ndarray) -> None:
    """out = gelu(x), tanh approximation; out may alias x."""
    t = np.square(x)
    t *= GELU_COEF_A
    t += 1
    t *= x
    t *= SQRT_2_OVER_PI
    np.tanh(t, out=t)
    t += 1
    t *= 0.5
    np.multiply(x, t, out=out)


# Each unary op as f(x, out), out positional: a ufunc itself where one exists (bound with partial, the step
# then costs no Python frame), else a function that may take out aliasing x.
UNARY: dict[str, Callable[[np.ndarray, np.ndarray], object]] = {
    "sqr": np.square, "sqrt": np.sqrt, "neg": np.negative, "exp": np.exp, "tanh": np.tanh,
    "relu": lambda x, o: np.maximum(x, F32(0), out=o), "silu": silu_into, "gelu": gelu_into,
}


@kernel(*UNARY)
@f32_compute
def unary(node: Tensor, out, a):
    if node.op == "relu":
        return functools.partial(np.maximum, a, F32(0), out=out)  # positional out is deprecated here
    return functools.partial(UNARY[node.op], a, out)


@kernel("scale")
@f32_compute
def scale(node: Tensor, out, a):
    s, bias = node.params["s"], node.params["bias"]
    if bias == 0.0:
        return functools.partial(np.multiply, a, F32(s), out)
    return lambda: (np.multiply(a, F32(s), out), np.add(out, F32(bias), out))


@kernel("clamp")
@f32_compute
def clamp(node: Tensor, out, a):
    lo, hi = F32(node.params["min"]), F32(node.params["max"])
    return functools.partial(np.clip, a, lo, hi, out)


def swiglu_into(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> None:
    """out = silu(gate) * up = gate * up / (1 + exp(-gate)), with one temporary."""
    t = np.negative(gate)
    np.exp(t, out=t)
    t += 1
    np.multiply(gate, up, out=out)
    out /= t


def geglu_into(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> None:
    """out = gelu(gate) * up."""
    gelu_into(gate, out)
    out *= up


GLU_GATES = {"swiglu": swiglu_into, "geglu": geglu_into}


def glu_kernel(gates: dict[str, Callable]) -> Callable:
    """The factory of the gated ops, each computed by gates[op](gate, up, out): out = act(gate) * up (out aliases
    neither: not in place)."""
    @f32_compute
    def glu(node: Tensor, out, a, b=None):
        gate_fn = gates[node.op]
        if b is None:
            n = out.shape[-1]
            a, b = a[..., :n], a[..., n:]
        gate, up = (b, a) if node.params["swapped"] else (a, b)
        return lambda: gate_fn(gate, up, out)
    return glu


kernel(*GLU_GATES)(glu_kernel(GLU_GATES))


@kernel("rms_norm")
@f32_compute
def rms_norm(node: Tensor, out, a):
    eps, inv_n = F32(node.params["eps"]), F32(1.0 / a.shape[-1])
    if a.size == a.shape[-1] and a.strides[-1] == a.itemsize:  # one row (a decode step): a BLAS dot, scalars
        row = a.reshape(-1)

        def run_row():
            np.multiply(a, F32(1.0) / np.sqrt(np.dot(row, row) * inv_n + eps), out=out)
        return run_row

    def run():
        ms = np.einsum("...i,...i->...", a, a)[..., None]
        ms *= inv_n
        ms += eps
        np.sqrt(ms, out=ms)
        np.divide(a, ms, out=out)
    return run


@kernel("norm")
@f32_compute
def norm(node: Tensor, out, a):
    eps = node.params["eps"]

    def run():
        centered = a - a.mean(axis=-1, keepdims=True)
        var = np.mean(np.square(centered), axis=-1, keepdims=True)
        np.divide(centered, np.sqrt(var + F32(eps)), out=out)
    return run


@kernel("sum_rows")
@f32_compute
def sum_rows(node: Tensor, out, a):
    return lambda: np.sum(a, axis=-1, keepdims=True, out=out)


@kernel("mean")
@f32_compute
def mean(node: Tensor, out, a):
    return lambda: np.mean(a, axis=-1, keepdims=True, out=out)


@kernel("argmax")
@f32_compute
def argmax(node: Tensor, out, a):
    return lambda: np.copyto(out, np.argmax(a, axis=-1), casting="unsafe")


@kernel("cont", "cpy")
def copy(node: Tensor, out, a, b=None):
    src_dtype = node.srcs[0].dtype
    if is_quantized(src_dtype):
        raise NotImplementedError("cpy from a quantized tensor: dequantize through get_rows instead")
    if node.dtype == src_dtype and a.dtype == out.dtype:  # a plain copy (also of BF16 bits): no float round trip
        if out.flags.c_contiguous:  # read a's elements in order straight into out, no temporary
            dst = out.reshape(a.shape)
            return lambda: np.copyto(dst, a)
        return lambda: np.copyto(out, np.reshape(a, out.shape))
    return lambda: store(out, np.reshape(as_f32(a, src_dtype), out.shape), node.dtype)


@kernel("concat")
def concat(node: Tensor, out, a, b):
    axis = node.params["axis"]
    if a.dtype == b.dtype == out.dtype:
        return lambda: np.concatenate((a, b), axis=axis, out=out)
    a_type, b_type = node.srcs[0].dtype, node.srcs[1].dtype  # e.g. a placed F16 weight held as F32
    return lambda: store(out, np.concatenate((as_f32(a, a_type), as_f32(b, b_type)), axis=axis), node.dtype)


@kernel("diag_mask_inf")
@f32_compute
def diag_mask_inf(node: Tensor, out, a):
    rows, cols = a.shape[-2:]
    hidden = np.arange(cols)[None, :] > node.params["n_past"] + np.arange(rows)[:, None]
    hidden = np.asarray(hidden, like=a)  # made once in a's array module (uploaded once to a device)

    def run():
        if out is not a:
            np.copyto(out, a)
        out[..., hidden] = -np.inf
    return run


@kernel("get_rows")
def get_rows(node: Tensor, out, a, idx):
    a_type = node.srcs[0].dtype
    if is_quantized(a_type) and a.dtype == np.uint8:  # blocks held as (all rows, bytes per row)
        row_len = node.shape[-1]
        if out.ndim == 3:  # batch b gathers rows b * R + idx[b]
            first = (np.arange(idx.shape[0]) * node.srcs[0].shape[1])[:, None]
            return lambda: np.copyto(out, dequantize_rows(a, a_type, idx + first, row_len).reshape(out.shape))
        return lambda: np.copyto(out, dequantize_rows(a, a_type, idx, row_len))
    if out.ndim == 3:
        return lambda: np.copyto(out, np.take_along_axis(as_f32(a, a_type), idx[..., None].astype(np.intp), 1))
    if a.dtype == F32:
        return lambda: np.take(a, idx, axis=0, out=out)
    return lambda: np.copyto(out, as_f32(a[idx], a_type))


@kernel("set_rows")
def set_rows(node: Tensor, out, dst, src, idx):
    src_dtype = node.srcs[1].dtype
    if is_quantized(node.dtype):
        def run_blocks():
            out[idx] = quantize_rows(as_f32(src, src_dtype), node.dtype)
        return run_blocks
    if node.dtype == DType.BF16:
        def run_bf16():
            out[idx] = to_bf16(as_f32(src, src_dtype))
        return run_bf16

    if len(idx) == 1 and src.dtype == out.dtype:  # one row (a decode step): basic indexing, no fancy scatter
        row = src[0]

        def run_one():
            out[idx[0]] = row
        return run_one

    def run():
        out[idx] = as_f32(src, src_dtype)
    return run


def matmul_views(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views (aT, b, out) for which np.matmul does ggml's mul_mat, a's leading dims broadcast over b's."""
    lead_b = b.shape[:-2]
    lead_a = (1,) * (len(lead_b) - (a.ndim - 2)) + a.shape[:-2]
    a_shape, b_shape = [], []
    for x, y in zip(lead_a, lead_b):
        a_shape += [x, 1]
        b_shape += [x, y // x]
    if b.shape[-2] == 1 and b_shape and b_shape[-1] > 1:
        # one row per head (decode): a group's heads become the rows of one product, not r products of one row
        a_t = np.swapaxes(split_view(a, tuple(a_shape[:-1]) + a.shape[-2:]), -1, -2)
        return a_t, split_view(b, tuple(b_shape) + b.shape[-1:]), split_view(out, tuple(b_shape) + out.shape[-1:])
    a_t = np.swapaxes(split_view(a, tuple(a_shape) + a.shape[-2:]), -1, -2)
    return a_t, split_view(b, tuple(b_shape) + b.shape[-2:]), split_view(out, tuple(b_shape) + out.shape[-2:])


@kernel("mul_mat")
def mul_mat(node: Tensor, out, a, b):
    a_type, b_type = node.srcs[0].dtype, node.srcs[1].dtype
    if a.dtype == np.uint8:
        raise NotImplementedError("mul_mat needs a dense weight: place it dense")
    converts = []  # (scratch F32 array, source array, dtype): F16/BF16 operands, converted on every run
    if b.dtype != F32:
        converts.append((np.empty(b.shape, F32), b, b_type))
        b = converts[-1][0]
    if a.dtype != F32:  # slow; the NumPy backend keeps weights in F32 by default
        converts.append((np.empty(a.shape, F32), a, a_type))
        a = converts[-1][0]
    a_t, b_v, out_v = matmul_views(a, b, out)
    if not converts:
        return lambda: np.matmul(b_v, a_t, out=out_v)

    def run():
        for scratch, src, dtype in converts:
            np.copyto(scratch, as_f32(src, dtype))
        np.matmul(b_v, a_t, out=out_v)
    return run
