"""An example pyggml backend plugin that brings its own kernels (see docs/backends.md): a handful of float ops
written here on NumPy arrays, everything else left to the scheduler's fallback backend."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from pyggml.backends.base import Backend, Step
from pyggml.graph.dtypes import DType, numpy_dtype
from pyggml.graph.errors import PyggmlError
from pyggml.graph.tensor import Tensor
from pyggml.ops import is_view

DENSE = (DType.F32, DType.F16)


def _binary(fn: np.ufunc) -> Callable[..., Step]:
    return lambda node, out, a, b: lambda: fn(a, b, out=out)


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., Step]:
    return lambda node, out, a: lambda: np.copyto(out, fn(a))


def _scale(node: Tensor, out: np.ndarray, a: np.ndarray) -> Step:
    s, bias = np.float32(node.params["s"]), np.float32(node.params["bias"])
    return lambda: np.copyto(out, a * s + bias)


def _rms_norm(node: Tensor, out: np.ndarray, a: np.ndarray) -> Step:
    eps = node.params["eps"]
    return lambda: np.copyto(out, a / np.sqrt(np.mean(np.square(a, dtype=np.float64), -1, keepdims=True) + eps))


def _mul_mat(node: Tensor, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> Step:
    return lambda: np.matmul(b, a.T, out=out)  # a 2-D weight (M, K), b (..., N, K): ggml's b @ a.T


KERNELS: dict[str, Callable[..., Step]] = {
    "add": _binary(np.add), "sub": _binary(np.subtract), "mul": _binary(np.multiply), "div": _binary(np.divide),
    "neg": _unary(np.negative), "exp": _unary(np.exp), "sqr": _unary(np.square), "sqrt": _unary(np.sqrt),
    "tanh": _unary(np.tanh), "silu": _unary(lambda x: x / (1 + np.exp(-x))), "scale": _scale,
    "rms_norm": _rms_norm, "mul_mat": _mul_mat,
}


class ExampleBackend(Backend):
    """Float32 NumPy arrays and the kernels above; counts the ops it runs; `skip` names ops it leaves alone."""

    name = "mybackend"
    kernels = KERNELS

    def __init__(self, skip: tuple[str, ...] = ()):
        super().__init__()  # the base keeps what make_placed makes, once per leaf
        self.skip = frozenset(skip)
        self.counts: Counter[str] = Counter()

    def supports(self, node: Tensor) -> bool:
        """Views, and its own ops on F32/F16 operands that NumPy broadcasts (mul_mat: by a 2-D weight)."""
        if node.op in self.skip or is_view(node.op):
            return node.op not in self.skip
        if node.op not in self.kernels or any(s.dtype not in DENSE for s in node.srcs):
            return False
        if node.op == "mul_mat":
            return node.srcs[0].ndim == 2
        try:
            return np.broadcast_shapes(*(s.shape for s in node.srcs)) == node.shape
        except ValueError:
            return False

    def make_placed(self, leaf: Tensor, dense: bool) -> np.ndarray:
        if leaf.dtype not in DENSE:
            raise PyggmlError(f"{self.name}: cannot hold {leaf.name} ({leaf.dtype.name}): F32 and F16 only")
        data = np.zeros(leaf.shape, numpy_dtype(leaf.dtype)) if leaf.data is None else np.asarray(leaf.data)
        return np.ascontiguousarray(data.reshape(leaf.shape))

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Its memory: a bytearray per buffer, seen as an array."""
        raw = bytearray(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        return np.frombuffer(raw, dtype).reshape(shape)

    def arena_view(self, arena: np.ndarray, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.frombuffer(arena, dtype, int(np.prod(shape, dtype=np.int64)), offset).reshape(shape)

    def strided_view(self, base: np.ndarray, offset: int, shape: tuple[int, ...],
                     strides: tuple[int, ...]) -> np.ndarray:
        flat = np.frombuffer(base, base.dtype, offset=offset)
        return np.lib.stride_tricks.as_strided(flat, shape, strides, writeable=True)

    def upload(self, dst: np.ndarray, host: np.ndarray) -> None:
        dst[...] = np.reshape(host, dst.shape)

    def download(self, src: np.ndarray) -> np.ndarray:
        return src.copy()

    def compile_node(self, node: Tensor, out: Any, srcs: list[Any]) -> Step:
        step, counts, op = super().compile_node(node, out, srcs), self.counts, node.op

        def counted() -> None:
            counts[op] += 1
            step()
        return counted
