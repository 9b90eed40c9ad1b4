"""Row gather and scatter: embedding lookups and KV-cache writes."""
from __future__ import annotations

from pyggml.graph.dtypes import DType, FLOAT_TYPES, ROW_QUANT_TYPES, is_quantized
from pyggml.graph.tensor import Tensor

from .core import fail, need_index


# get_rows: a (R, C) [or (B, R, C)], idx (N,) [or (B, N)] I32 -> (N, C) [or (B, N, C)] F32
def get_rows(a: Tensor, idx: Tensor) -> Tensor:
    """Gather rows of a (any float or quantized type) by index, as F32."""
    need_index("get_rows", idx, ndim=2)
    if a.ndim != idx.ndim + 1 or (a.ndim == 3 and a.shape[0] != idx.shape[0]):
        raise fail("get_rows", "needs a (R, C) with idx (N,), or a (B, R, C) with idx (B, N)", a, idx)
    if not (a.dtype in FLOAT_TYPES or is_quantized(a.dtype)):
        raise fail("get_rows", "a must be float or quantized", a, idx)
    return Tensor(idx.shape + (a.shape[-1],), DType.F32, op="get_rows", srcs=(a, idx))


# set_rows: dst (R, C) float or Q8_0/Q4_0, src (N, C) F32, idx (N,) I32/I64 -> dst with dst[idx[i]] = src[i]
def set_rows(dst: Tensor, src: Tensor, idx: Tensor) -> Tensor:
    """Scatter src's rows into dst at idx (converting to dst's dtype, quantizing rows of blocks); the result is a
    view of dst."""
    need_index("set_rows", idx)
    if dst.ndim != 2 or src.ndim != 2 or src.shape[1] != dst.shape[1] or idx.shape[0] != src.shape[0]:
        raise fail("set_rows", "needs dst (R, C), src (N, C) and idx (N,)", dst, src, idx)
    if dst.dtype not in FLOAT_TYPES | ROW_QUANT_TYPES or src.dtype not in FLOAT_TYPES:
        raise fail("set_rows", "dst must be float, Q8_0 or Q4_0 and src float", dst, src, idx)
    return Tensor(dst.shape, dst.dtype, op="set_rows", srcs=(dst, src, idx), view_src=dst, strides=dst.strides)
