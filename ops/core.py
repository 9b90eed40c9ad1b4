"""What every op definition shares: node creation, validation helpers and the op property table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyggml.graph.dtypes import FLOAT_TYPES, INDEX_TYPES, DType
from pyggml.graph.errors import ShapeError
from pyggml.graph.tensor import Tensor

UNARY, BINARY, GLU, VIEW, WRITE, MOVE, OTHER = "unary", "binary", "glu", "view", "write", "move", "other"


@dataclass(frozen=True)
class OpSpec:
    """One op's properties: what the memory planner, the scheduler and every backend need to know of it."""

    name: str
    arity: tuple[int, int]  # the least and most sources
    kind: str = OTHER       # unary, binary, glu, view (shares storage), write (into a source), move (copies only)
    inplace: bool = False   # the kernel may write its result over its first source (ggml_op_can_inplace)
    block_srcs: tuple[int, ...] = ()  # source slots read as stored (quantized blocks); the others dense

    @property
    def view(self) -> bool:
        """The result shares its source's storage: no computation, no allocation."""
        return self.kind == VIEW

    @property
    def write(self) -> bool:
        """The result is written into an existing tensor's storage (and returned as a view of it)."""
        return self.kind == WRITE

    @property
    def arithmetic(self) -> bool:
        """The op computes values (views, writes and copies only move data)."""
        return self.kind not in (VIEW, WRITE, MOVE)


def _specs(*specs: OpSpec) -> dict[str, OpSpec]:
    return {s.name: s for s in specs}


# The op vocabulary, one row per op (ggml's op enum with ggml_op_can_inplace and friends folded in).
OPS: dict[str, OpSpec] = _specs(
    OpSpec("mul_mat", (2, 2)),
    *(OpSpec(op, (2, 2), BINARY, inplace=True) for op in ("add", "sub", "mul", "div")),
    OpSpec("scale", (1, 1), inplace=True),
    *(OpSpec(op, (1, 1), UNARY, inplace=True) for op in ("sqr", "sqrt", "neg", "exp", "tanh", "silu", "gelu", "relu")),
    OpSpec("swiglu", (1, 2), GLU), OpSpec("geglu", (1, 2), GLU),
    OpSpec("rms_norm", (1, 1), inplace=True), OpSpec("norm", (1, 1), inplace=True),
    OpSpec("soft_max_ext", (1, 2), inplace=True), OpSpec("rope", (2, 3), inplace=True),
    OpSpec("get_rows", (2, 2), MOVE, block_srcs=(0,)), OpSpec("set_rows", (3, 3), WRITE, block_srcs=(0,)),
    OpSpec("cpy", (2, 2), WRITE), OpSpec("cont", (1, 1), MOVE),
    *(OpSpec(op, (1, 1), VIEW, block_srcs=(0,)) for op in ("view", "reshape", "permute", "transpose")),
    OpSpec("concat", (2, 2), MOVE),
    OpSpec("sum_rows", (1, 1)), OpSpec("mean", (1, 1)), OpSpec("argmax", (1, 1)),
    OpSpec("clamp", (1, 1), inplace=True), OpSpec("diag_mask_inf", (1, 1), inplace=True),
    OpSpec("flash_attn_ext", (3, 4), block_srcs=(1, 2)), OpSpec("paged_attn", (4, 4), block_srcs=(1, 2)),
)


# Ops that only a backend's graph rewrites make (backends/fusion.py: passes and kernels), never model code; not
# part of the vocabulary, but the planner and the profiler need their properties too.
FUSED_OPS: dict[str, OpSpec] = _specs(
    OpSpec("rms_norm_mul", (2, 2), inplace=True),  # rms_norm(x) * w
    OpSpec("mul_mat_permuted", (2, 2)),              # mul_mat written in a permuted layout
)


def spec(op: str) -> OpSpec:
    """The properties of an op of the vocabulary or of a fused op."""
    return OPS.get(op) or FUSED_OPS[op]


def is_view(op: str | None) -> bool:
    """True for ops whose result shares its source's storage (False for a leaf's op, None)."""
    return op is not None and spec(op).view


def is_write(op: str | None) -> bool:
    """True for ops that write into an existing tensor's storage (False for a leaf's op, None)."""
    return op is not None and spec(op).write


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
