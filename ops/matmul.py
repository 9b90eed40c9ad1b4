"""Matrix multiplication with ggml's operand order and leading-dim broadcast."""
from __future__ import annotations

from pyggml.graph.dtypes import DType, FLOAT_TYPES, is_quantized
from pyggml.graph.tensor import Tensor

from .core import fail, make

MIN_DIMS = 2


# mul_mat: a (..., M, K), b (..., N, K) -> (..., N, M) F32; b's leading dims multiples of a's (GQA)
def mul_mat(a: Tensor, b: Tensor) -> Tensor:
    """b @ a.T as in ggml: a is usually a weight (out, in); a broadcasts over b's leading dims."""
    if not (a.dtype in FLOAT_TYPES or is_quantized(a.dtype)) or b.dtype not in FLOAT_TYPES:
        raise fail("mul_mat", "a must be float or quantized and b float", a, b)
    if a.ndim < MIN_DIMS or b.ndim < a.ndim:
        raise fail("mul_mat", "operands need >= 2 dims, and a no more dims than b", a, b)
    if a.shape[-1] != b.shape[-1]:
        raise fail("mul_mat", f"inner dims differ ({a.shape[-1]} vs {b.shape[-1]})", a, b)
    lead_a, lead_b = a.shape[:-2], b.shape[:-2]
    lead_a = (1,) * (len(lead_b) - len(lead_a)) + lead_a
    if any(x == 0 or y % x for x, y in zip(lead_a, lead_b)):
        raise fail("mul_mat", "b's leading dims must be multiples of a's", a, b)
    return make("mul_mat", lead_b + (b.shape[-2], a.shape[-2]), (a, b), DType.F32)
