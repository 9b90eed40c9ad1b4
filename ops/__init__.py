"""The op vocabulary: each op records a node after checking shapes; no op computes anything."""
from .attention import ROPE_NEOX, ROPE_NORMAL, diag_mask_inf, flash_attn_ext, rope, soft_max_ext
from .core import INPLACE_OPS, VIEW_OPS, WRITE_OPS
from .elementwise import (BINARY_OPS, UNARY_OPS, add, clamp, div, exp, geglu, gelu, mul, neg, relu, scale,
                          silu, sqr, sqrt, sub, swiglu, tanh)
from .layout import concat, cont, cpy, permute, reshape, transpose, view
from .matmul import mul_mat
from .norm import norm, rms_norm
from .reduce import argmax, mean, sum_rows
from .rows import get_rows, set_rows

ALL_OPS = (
    "mul_mat", *BINARY_OPS, "scale", *UNARY_OPS, "swiglu", "geglu", "rms_norm", "norm", "soft_max_ext", "rope",
    "get_rows", "set_rows", "cpy", "cont", "view", "reshape", "permute", "transpose", "concat", "sum_rows",
    "mean", "argmax", "clamp", "diag_mask_inf", "flash_attn_ext",
)
__all__ = ["ALL_OPS", "INPLACE_OPS", "ROPE_NEOX", "ROPE_NORMAL", "VIEW_OPS", "WRITE_OPS", *ALL_OPS]
