"""Layout ops: views that share storage (view, reshape, permute, transpose) and copies (cont, cpy, concat)."""
from __future__ import annotations

from collections.abc import Sequence

from pyggml.graph.dtypes import block_layout, is_quantized, nbytes
from pyggml.graph.tensor import Tensor, contiguous_strides

from .core import fail, norm_axis

Shape = Sequence[int]


def _storage_bytes(a: Tensor) -> int:
    return (a.view_src or a).nbytes


def _view_node(op: str, a: Tensor, shape: Shape, strides: Shape, offset: int, **params) -> Tensor:
    shape, strides = tuple(int(d) for d in shape), tuple(int(s) for s in strides)
    if is_quantized(a.dtype) and (not shape or strides[-1] != 0 or shape[-1] % block_layout(a.dtype)[0]):
        # a view of blocks keeps each innermost row whole, contiguous blocks (the last stride is 0, as stored)
        raise fail(op, "a view of a block-quantized tensor must keep its rows of whole blocks contiguous", a)
    end = a.view_offset + offset + sum((d - 1) * abs(s) for d, s in zip(shape, strides)) + _last_bytes(a, shape)
    if min(shape, default=1) > 0 and (offset < 0 or end > _storage_bytes(a)):
        raise fail(op, f"view of {list(shape)} at offset {offset} runs past the storage", a)
    return Tensor(shape, a.dtype, op=op, srcs=(a,), params=dict(params, shape=list(shape), strides=list(strides),
                  offset=offset), view_src=a, view_offset=offset, strides=strides)


def _last_bytes(a: Tensor, shape: tuple[int, ...]) -> int:
    """Bytes past the last element's start that a view reaches: one element, or a whole row of blocks."""
    return nbytes(shape[-1:], a.dtype) if is_quantized(a.dtype) else nbytes((1,), a.dtype)


# view: a (...) -> shape, sharing a's storage at byte offset with byte strides (default contiguous)
def view(a: Tensor, shape: Shape, strides: Shape | None = None, offset: int = 0) -> Tensor:
    """A strided window on a's storage (ggml_view_Nd; offset and strides in bytes)."""
    strides = contiguous_strides(tuple(shape), a.dtype) if strides is None else strides
    return _view_node("view", a, shape, strides, offset)


# reshape: a (...) contiguous -> shape with the same element count
def reshape(a: Tensor, shape: Shape) -> Tensor:
    """The same contiguous elements seen with another shape."""
    shape = tuple(int(d) for d in shape)
    if not a.is_contiguous:
        raise fail("reshape", "needs a contiguous tensor (use cont first)", a)
    if Tensor(shape, a.dtype).nelements != a.nelements:
        raise fail("reshape", f"cannot reshape to {list(shape)}: element counts differ", a)
    return _view_node("reshape", a, shape, contiguous_strides(shape, a.dtype), 0)


# permute: a (d0, d1, ...) -> (d[axes[0]], d[axes[1]], ...), NumPy's transpose semantics
def permute(a: Tensor, *axes: int) -> Tensor:
    """Reorder dims: result dim i is a's dim axes[i]."""
    if sorted(axes) != list(range(a.ndim)):
        raise fail("permute", f"axes {list(axes)} are not a permutation of {a.ndim} dims", a)
    return _view_node("permute", a, [a.shape[i] for i in axes], [a.strides[i] for i in axes], 0,
                      axes=list(axes))


# transpose: a (..., m, n) -> (..., n, m)
def transpose(a: Tensor) -> Tensor:
    """Swap the last two dims."""
    if a.ndim < 2:
        raise fail("transpose", "needs at least 2 dims", a)
    axes = list(range(a.ndim - 2)) + [a.ndim - 1, a.ndim - 2]
    return permute(a, *axes)


# cont: a (...) -> a contiguous copy, optionally with a new shape of the same element count
def cont(a: Tensor, shape: Shape | None = None) -> Tensor:
    """A contiguous copy of a (ggml_cont / ggml_cont_Nd)."""
    shape = tuple(int(d) for d in (shape or a.shape))
    if Tensor(shape, a.dtype).nelements != a.nelements:
        raise fail("cont", f"cannot make {list(shape)}: element counts differ", a)
    return Tensor(shape, a.dtype, op="cont", srcs=(a,))


# cpy: a (...), b (...) with equal element counts -> b, holding a's values converted to b's dtype
def cpy(a: Tensor, b: Tensor) -> Tensor:
    """Copy a into b's storage (converting dtype); the result is a view of b."""
    if a.nelements != b.nelements:
        raise fail("cpy", "element counts differ", a, b)
    if is_quantized(b.dtype):
        raise fail("cpy", "cannot write into a block-quantized tensor", a, b)
    return Tensor(b.shape, b.dtype, op="cpy", srcs=(a, b), view_src=b, strides=b.strides)


# concat: a (...), b (...) equal except on axis -> joined along axis
def concat(a: Tensor, b: Tensor, axis: int = 0) -> Tensor:
    """a and b joined along axis."""
    axis = norm_axis("concat", axis, a.ndim, a, b)
    if a.ndim != b.ndim or a.dtype != b.dtype or any(
            x != y for i, (x, y) in enumerate(zip(a.shape, b.shape)) if i != axis):
        raise fail("concat", f"shapes must match except on axis {axis}", a, b)
    shape = tuple(x + y if i == axis else x for i, (x, y) in enumerate(zip(a.shape, b.shape)))
    return Tensor(shape, a.dtype, op="concat", srcs=(a, b), params={"axis": axis})
