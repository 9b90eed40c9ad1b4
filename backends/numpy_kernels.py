"""NumPy kernels: op name -> factory(node, out, *srcs) returning the closure that computes the node.

Factories run once per plan: they precompute views, tables and broadcast shapes, so that the closures
they return do only the arithmetic. `out` may be the same memory as the first source (in-place ops).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from pyggml.graph.dtypes import DType, is_quantized
from pyggml.graph.tensor import Tensor

from .quants import dequantize_rows

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
    """Float32 values of an array held in dtype's storage (BF16 is held as uint16)."""
    if dtype == DType.BF16 or x.dtype == np.uint16:
        return (x.astype(np.uint32) << 16).view(F32)
    return x if x.dtype == F32 else x.astype(F32)


def split_view(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Reshape that must not copy (splitting dims of a strided view is always possible)."""
    return np.reshape(x, shape, copy=False)


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
    def factory(node: Tensor, out, a, b):
        a, b = as_f32(a, node.srcs[0].dtype), as_f32(b, node.srcs[1].dtype)
        out_t, b_t = tiled(out, b)
        a_t = split_view(a, out_t.shape)
        return lambda: fn(a_t, b_t, out=out_t)
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


UNARY: dict[str, Callable[[np.ndarray, np.ndarray], object]] = {
    "sqr": lambda x, o: np.square(x, out=o), "sqrt": lambda x, o: np.sqrt(x, out=o),
    "neg": lambda x, o: np.negative(x, out=o), "exp": lambda x, o: np.exp(x, out=o),
    "tanh": lambda x, o: np.tanh(x, out=o), "relu": lambda x, o: np.maximum(x, 0, out=o),
    "silu": silu_into, "gelu": gelu_into,
}


@kernel(*UNARY)
def unary(node: Tensor, out, a):
    fn, a = UNARY[node.op], as_f32(a, node.srcs[0].dtype)
    return lambda: fn(a, out)


@kernel("scale")
def scale(node: Tensor, out, a):
    s, bias = node.params["s"], node.params["bias"]
    if bias == 0.0:
        return lambda: np.multiply(a, F32(s), out=out)
    return lambda: (np.multiply(a, F32(s), out=out), np.add(out, F32(bias), out=out))


@kernel("clamp")
def clamp(node: Tensor, out, a):
    lo, hi = F32(node.params["min"]), F32(node.params["max"])
    return lambda: np.clip(a, lo, hi, out=out)


GLU_GATES = {"swiglu": silu_into, "geglu": gelu_into}


@kernel(*GLU_GATES)
def glu(node: Tensor, out, a, b=None):
    gate_fn = GLU_GATES[node.op]
    if b is None:
        n = out.shape[-1]
        a, b = a[..., :n], a[..., n:]
    gate, up = (b, a) if node.params["swapped"] else (a, b)

    def run():
        g = np.empty(out.shape, F32)
        gate_fn(gate, g)
        np.multiply(g, up, out=out)
    return run


@kernel("rms_norm")
def rms_norm(node: Tensor, out, a):
    eps = node.params["eps"]

    def run():
        ms = np.einsum("...i,...i->...", a, a)[..., None]
        ms *= F32(1.0 / a.shape[-1])
        ms += F32(eps)
        np.sqrt(ms, out=ms)
        np.divide(a, ms, out=out)
    return run


@kernel("norm")
def norm(node: Tensor, out, a):
    eps = node.params["eps"]

    def run():
        centered = a - a.mean(axis=-1, keepdims=True)
        var = np.mean(np.square(centered), axis=-1, keepdims=True)
        np.divide(centered, np.sqrt(var + F32(eps)), out=out)
    return run


@kernel("sum_rows")
def sum_rows(node: Tensor, out, a):
    return lambda: np.sum(a, axis=-1, keepdims=True, out=out)


@kernel("mean")
def mean(node: Tensor, out, a):
    return lambda: np.mean(a, axis=-1, keepdims=True, out=out)


@kernel("argmax")
def argmax(node: Tensor, out, a):
    return lambda: np.copyto(out, np.argmax(a, axis=-1), casting="unsafe")


@kernel("cont", "cpy")
def copy(node: Tensor, out, a, b=None):
    src_dtype = node.srcs[0].dtype
    if is_quantized(src_dtype):
        raise NotImplementedError("cpy from a quantized tensor: dequantize through get_rows instead")
    return lambda: np.copyto(out, np.reshape(as_f32(a, src_dtype), out.shape), casting="unsafe")


@kernel("concat")
def concat(node: Tensor, out, a, b):
    axis = node.params["axis"]
    return lambda: np.concatenate((a, b), axis=axis, out=out)


@kernel("diag_mask_inf")
def diag_mask_inf(node: Tensor, out, a):
    rows, cols = a.shape[-2:]
    hidden = np.arange(cols)[None, :] > node.params["n_past"] + np.arange(rows)[:, None]

    def run():
        if out is not a:
            np.copyto(out, a)
        out[..., hidden] = -np.inf
    return run


@kernel("get_rows")
def get_rows(node: Tensor, out, a, idx):
    a_type = node.srcs[0].dtype
    if a.ndim == 3 or out.ndim == 3:
        return lambda: np.copyto(out, np.take_along_axis(as_f32(a, a_type), idx[..., None].astype(np.intp), 1))
    if is_quantized(a_type) and a.dtype == np.uint8:
        row_len = node.shape[-1]
        return lambda: np.copyto(out, dequantize_rows(a, a_type, idx, row_len))
    if a.dtype == F32:
        return lambda: np.take(a, idx, axis=0, out=out)
    return lambda: np.copyto(out, as_f32(a[idx], a_type))


@kernel("set_rows")
def set_rows(node: Tensor, out, dst, src, idx):
    def run():
        out[idx] = src
    return run


def matmul_views(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views (aT, b, out) for which np.matmul does ggml's mul_mat, a's leading dims broadcast over b's."""
    lead_b = b.shape[:-2]
    lead_a = (1,) * (len(lead_b) - (a.ndim - 2)) + a.shape[:-2]
    a_shape, b_shape = [], []
    for x, y in zip(lead_a, lead_b):
        a_shape += [x, 1]
        b_shape += [x, y // x]
    a_t = np.swapaxes(split_view(a, tuple(a_shape) + a.shape[-2:]), -1, -2)
    return a_t, split_view(b, tuple(b_shape) + b.shape[-2:]), split_view(out, tuple(b_shape) + out.shape[-2:])


@kernel("mul_mat")
def mul_mat(node: Tensor, out, a, b):
    a_type, b_type = node.srcs[0].dtype, node.srcs[1].dtype
    if a.dtype == np.uint8:
        raise NotImplementedError("mul_mat needs a dense weight: place it dense")
    b = as_f32(b, b_type)
    if a.dtype == F32:
        a_t, b_v, out_v = matmul_views(a, b, out)
        return lambda: np.matmul(b_v, a_t, out=out_v)

    def run():  # F16/BF16 a: converted per call (slow; the NumPy backend keeps weights in F32 by default)
        a_t, b_v, out_v = matmul_views(as_f32(a, a_type), b, out)
        np.matmul(b_v, a_t, out=out_v)
    return run
