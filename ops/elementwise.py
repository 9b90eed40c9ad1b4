"""Elementwise ops: binary with broadcast of the second operand, unary, and the gated (GLU) units."""
from __future__ import annotations

from pyggml.graph.tensor import Tensor

from .core import can_repeat, fail, make, need_float


def _binary(op: str, a: Tensor, b: Tensor) -> Tensor:
    need_float(op, a, b)
    if not can_repeat(b.shape, a.shape):
        raise fail(op, "second operand must tile the first (each dim divides, aligned right)", a, b)
    return make(op, a.shape, (a, b), a.dtype)


# add/sub/mul/div: a (...), b tiling a -> a's shape
def add(a: Tensor, b: Tensor) -> Tensor:
    """a + b, b repeated over a."""
    return _binary("add", a, b)


def sub(a: Tensor, b: Tensor) -> Tensor:
    """a - b, b repeated over a."""
    return _binary("sub", a, b)


def mul(a: Tensor, b: Tensor) -> Tensor:
    """a * b, b repeated over a."""
    return _binary("mul", a, b)


def div(a: Tensor, b: Tensor) -> Tensor:
    """a / b, b repeated over a."""
    return _binary("div", a, b)


# scale: a (...) -> (...), a * s + bias
def scale(a: Tensor, s: float, bias: float = 0.0) -> Tensor:
    """a * s + bias (ggml_scale / ggml_scale_bias)."""
    need_float("scale", a)
    return make("scale", a.shape, (a,), a.dtype, s=float(s), bias=float(bias))


def _unary(op: str, a: Tensor) -> Tensor:
    need_float(op, a)
    return make(op, a.shape, (a,), a.dtype)


# unary ops: a (...) -> (...)
def sqr(a: Tensor) -> Tensor:
    """a**2."""
    return _unary("sqr", a)


def sqrt(a: Tensor) -> Tensor:
    """Square root."""
    return _unary("sqrt", a)


def neg(a: Tensor) -> Tensor:
    """-a."""
    return _unary("neg", a)


def exp(a: Tensor) -> Tensor:
    """e**a."""
    return _unary("exp", a)


def tanh(a: Tensor) -> Tensor:
    """Hyperbolic tangent."""
    return _unary("tanh", a)


def silu(a: Tensor) -> Tensor:
    """a * sigmoid(a)."""
    return _unary("silu", a)


def gelu(a: Tensor) -> Tensor:
    """GELU, tanh approximation (as ggml)."""
    return _unary("gelu", a)


def relu(a: Tensor) -> Tensor:
    """max(a, 0)."""
    return _unary("relu", a)


# clamp: a (...) -> (...)
def clamp(a: Tensor, min: float, max: float) -> Tensor:
    """Limit a to [min, max]."""
    need_float("clamp", a)
    return make("clamp", a.shape, (a,), a.dtype, min=float(min), max=float(max))


def _glu(op: str, a: Tensor, b: Tensor | None, swapped: bool) -> Tensor:
    need_float(op, a, *(b,) if b is not None else ())
    if b is None:
        if a.shape[-1] % 2:
            raise fail(op, "fused form needs an even last dim", a)
        return make(op, a.shape[:-1] + (a.shape[-1] // 2,), (a,), a.dtype, swapped=swapped)
    if a.shape != b.shape:
        raise fail(op, "split form needs equal shapes", a, b)
    return make(op, a.shape, (a, b), a.dtype, swapped=swapped)


# swiglu: a (..., 2n) -> (..., n) fused, or a (...), b (...) -> (...) split: silu(gate) * up
def swiglu(a: Tensor, b: Tensor | None = None, swapped: bool = False) -> Tensor:
    """silu(a) * b; fused: the first half of a's last dim gates the second (swapped: the reverse)."""
    return _glu("swiglu", a, b, swapped)


# geglu: as swiglu, with gelu (tanh approximation) as the gate
def geglu(a: Tensor, b: Tensor | None = None, swapped: bool = False) -> Tensor:
    """gelu(a) * b; fused as swiglu."""
    return _glu("geglu", a, b, swapped)
