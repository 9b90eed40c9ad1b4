"""What every op definition shares: node creation, validation helpers and the op property table."""
from __future__ import annotations

from typing import Any

from pyggml.graph.dtypes import FLOAT_TYPES, INDEX_TYPES, DType
from pyggml.graph.errors import ShapeError
from pyggml.graph.tensor import Tensor

# Ops whose kernel may write its result over its first source (ggml_op_can_inplace).
INPLACE_OPS = frozenset({
    "add", "sub", "mul", "div", "scale", "sqr", "sqrt", "neg", "exp", "tanh", "silu", "gelu", "relu",
    "clamp", "rms_norm", "norm", "soft_max_ext", "rope", "diag_mask_inf",
})
# Ops whose result shares its source's storage: no computation, no allocation.
VIEW_OPS = frozenset({"view", "reshape", "permute", "transpose"})
# Ops whose result is written into the storage of an existing tensor (returned as a view of it).
WRITE_OPS = frozenset({"cpy", "set_rows"})


def make(op: str, shape: tuple[int, ...], srcs: tuple[Tensor, ...], dtype: DType = DType.F32,
         **params: Any) -> Tensor:
    """A new node computed by `op` from `srcs`."""
    return Tensor(shape, dtype, op=op, srcs=srcs, params=params)


def fail(op: str, message: str, *tensors: Tensor) -> ShapeError:
    """A ShapeError naming the op and the shapes/dtypes of its operands."""
    operands = ", ".join(f"{list(t.shape)} {t.dtype.name}" for t in tensors)
    return ShapeError(f"{op}: {message} (operands: {operands})")


def need_float(op: str, *tensors: Tensor) -> None:
    """Every operand must be F32/F16/BF16."""
    if any(t.dtype not in FLOAT_TYPES for t in tensors):
        raise fail(op, "needs float operands", *tensors)


def need_index(op: str, idx: Tensor, ndim: int = 1) -> None:
    """idx must be an I32/I64 tensor of at most `ndim` dims."""
    if idx.dtype not in INDEX_TYPES or idx.ndim > ndim:
        raise fail(op, f"indices must be I32/I64 of at most {ndim} dims", idx)


def can_repeat(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    """True if `small` tiles `big` (ggml_can_repeat): aligned from the right, each dim divides."""
    if len(small) > len(big):
        return False
    return all(s != 0 and b % s == 0 for s, b in zip(reversed(small), reversed(big)))


def norm_axis(op: str, axis: int, ndim: int, *tensors: Tensor) -> int:
    """A non-negative axis, checked against ndim."""
    if not -ndim <= axis < ndim:
        raise fail(op, f"axis {axis} out of range for {ndim} dims", *tensors)
    return axis % ndim
