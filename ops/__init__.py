"""The op vocabulary: each op records a node after checking shapes; no op computes anything. `OPS` is the one
table of the ops and their properties."""
from .attention import (ROPE_NEOX, ROPE_NORMAL, diag_mask_inf, flash_attn_ext, paged_attn, rope,
                        soft_max_ext)
from .core import FUSED_OPS, OPS, OpSpec, is_view, is_write, spec
from .elementwise import add, clamp, div, exp, geglu, gelu, mul, neg, relu, scale, silu, sqr, sqrt, sub, swiglu, tanh
from .layout import concat, cont, cpy, permute, reshape, transpose, view
from .matmul import mul_mat
from .norm import norm, rms_norm
from .reduce import argmax, mean, sum_rows
from .rows import get_rows, set_rows

__all__ = ["FUSED_OPS", "OPS", "OpSpec", "spec", "ROPE_NEOX", "ROPE_NORMAL", "is_view", "is_write", *OPS]
