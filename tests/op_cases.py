"""The op cases every backend is compared on against the NumPy backend (ggml's test-backend-ops), without pytest:
examples/gpu_check.py runs them on a GPU."""
from __future__ import annotations

from collections.abc import Callable

import gguf
import numpy as np
from gguf import quants

import pyggml as pg
from pyggml import DType
from pyggml.backends.quants import FORMATS
from pyggml.graph.block_layouts import BLOCKS

MAX_NMSE = 1e-7
Q8_ACTIVATIONS_NMSE = 5e-4  # ggml's test-backend-ops limit for mul_mat, whose CPU kernels quantize activations
STORED_TYPES = [*FORMATS, DType.F16]  # the types weights keep on a backend that reads them as stored
Case = Callable[[np.random.Generator], pg.Tensor]


def r(rng: np.random.Generator, *shape: int) -> pg.Tensor:
    """A constant of standard-normal float32 values."""
    return pg.from_numpy(rng.standard_normal(shape).astype(np.float32))


def idx(values: list[int], dtype=np.int32) -> pg.Tensor:
    return pg.from_numpy(np.array(values, dtype))


def mask(rng: np.random.Generator, rows: int, cols: int) -> pg.Tensor:
    m = np.where(rng.random((rows, cols)) < 0.3, -np.inf, 0).astype(np.float32)
    m[:, 0] = 0
    return pg.from_numpy(m)


def kv_rows(rng: np.random.Generator, n_tok: int, n_read: int, n_rows: int) -> pg.Tensor:
    """(n_tok, n_read) rows for paged_attn: random rows of n_rows, about a third -1 (none), the last token none."""
    rows = np.where(rng.random((n_tok, n_read)) < 0.3, -1, rng.integers(0, n_rows, (n_tok, n_read)))
    rows[-1] = -1
    return pg.from_numpy(rows.astype(np.int32))


def q8_rows(rng: np.random.Generator) -> pg.Tensor:
    return pg.from_numpy(quants.quantize(rng.standard_normal((6, 64)).astype(np.float32), DType.Q8_0), dtype=DType.Q8_0)


def stored_product(rng: np.random.Generator, dtype: DType, n: int) -> pg.Tensor:
    """mul_mat of a 7-row weight of dtype, two blocks (or 64 halves) per row, with n activation rows."""
    if dtype == DType.F16:
        w = pg.from_numpy(rng.standard_normal((7, 64)).astype(np.float16))
    else:
        w = blocks_leaf(dtype, 7, 2 * gguf.GGML_QUANT_SIZES[dtype][0], rng)
    return pg.mul_mat(w, r(rng, n, w.shape[-1]))


# op -> cases (each builds one output from random constants; permuted/strided views exercise the view ops)
CASES: dict[str, list[Case]] = {
    "mul_mat": [lambda g: pg.mul_mat(r(g, 5, 8), r(g, 3, 8)),
                lambda g: pg.mul_mat(r(g, 2, 5, 8), r(g, 4, 3, 8)),
                lambda g: pg.mul_mat(pg.from_numpy(np.random.default_rng(1).standard_normal((5, 8)).astype(np.float16)),
                                     r(g, 3, 8)),
                # weights as stored in a GGUF (every block type, F16): 7 rows (an odd pair and a partial group for
                # the numba kernels); 1, 3, 6 and 11 activation rows (register tiles: 11 is a tile of 8 and one of
                # 3), 23 (rows dequantized once: five four-row tiles, a two-row and a one-row one), 300 (panels
                # and BLAS)
                *[lambda g, t=t, n=n: stored_product(g, t, n) for t in STORED_TYPES for n in (1, 3, 6, 11, 23, 300)]],
    **{op: [lambda g, op=op: getattr(pg, op)(r(g, 4, 6, 8), r(g, 6, 8)),
            lambda g, op=op: getattr(pg, op)(pg.permute(r(g, 8, 6, 4), 2, 1, 0), r(g, 1, 8))]
       for op in ("add", "sub", "mul")},
    "div": [lambda g: pg.div(r(g, 4, 8), pg.exp(r(g, 8)))],
    "scale": [lambda g: pg.scale(r(g, 4, 8), 0.5, 0.25)],
    **{op: [lambda g, op=op: getattr(pg, op)(pg.transpose(r(g, 8, 4)))] for op in ("sqr", "neg", "exp", "tanh", "silu",
                                                                                   "gelu", "relu")},
    "sqrt": [lambda g: pg.sqrt(pg.sqr(r(g, 4, 8)))],
    "swiglu": [lambda g: pg.swiglu(r(g, 3, 16)), lambda g: pg.swiglu(r(g, 3, 8), r(g, 3, 8), swapped=True),
               lambda g: pg.swiglu(pg.scale(r(g, 4, 16), 40.0)),  # gates past e^±88
               lambda g: pg.swiglu(r(g, 2, 3, 8), r(g, 2, 3, 8))],
    "geglu": [lambda g: pg.geglu(r(g, 3, 16))],
    "rms_norm": [lambda g: pg.rms_norm(r(g, 2, 3, 32), 1e-6)],
    "norm": [lambda g: pg.norm(r(g, 3, 32), 1e-5)],
    "soft_max_ext": [lambda g: pg.soft_max_ext(r(g, 4, 3, 7), mask(g, 3, 7), scale=0.3),
                     lambda g: pg.soft_max_ext(r(g, 4, 3, 7), mask(g, 3, 7), max_bias=8.0),
                     lambda g: pg.soft_max_ext(r(g, 3, 7))],
    "rope": [lambda g: pg.rope(r(g, 3, 2, 16), idx([0, 5, 9]), 16),
             lambda g: pg.rope(r(g, 3, 2, 16), idx([1, 2, 3]), 8, mode=pg.ROPE_NEOX, freq_base=500.0,
                               freq_scale=0.5, n_ctx_orig=64, ext_factor=1.0)],
    "get_rows": [lambda g: pg.get_rows(r(g, 6, 8), idx([4, 0, 4])),
                 lambda g: pg.get_rows(q8_rows(g), idx([5, 1], np.int64))],
    "set_rows": [lambda g: pg.set_rows(r(g, 6, 8), r(g, 2, 8), idx([3, 1]))],
    "cpy": [lambda g: pg.cpy(pg.transpose(r(g, 8, 4)), r(g, 4, 8)),
            lambda g: pg.cpy(r(g, 4, 8), pg.from_numpy(np.zeros((4, 8), np.float16)))],
    "cont": [lambda g: pg.cont(pg.permute(r(g, 2, 3, 4), 2, 0, 1))],
    "view": [lambda g: pg.cont(pg.view(r(g, 4, 8), (3, 5), (32, 4), offset=4))],
    "reshape": [lambda g: pg.exp(pg.reshape(r(g, 4, 8), (8, 4)))],
    "permute": [lambda g: pg.cont(pg.permute(r(g, 2, 3, 4), 1, 2, 0))],
    "transpose": [lambda g: pg.cont(pg.transpose(r(g, 3, 5)))],
    "concat": [lambda g: pg.concat(r(g, 2, 3), r(g, 2, 4), axis=1)],
    "sum_rows": [lambda g: pg.sum_rows(r(g, 3, 9))],
    "mean": [lambda g: pg.mean(r(g, 3, 9))],
    "argmax": [lambda g: pg.argmax(r(g, 3, 9))],
    "clamp": [lambda g: pg.clamp(r(g, 3, 9), -0.5, 0.5)],
    "diag_mask_inf": [lambda g: pg.soft_max_ext(pg.diag_mask_inf(r(g, 2, 3, 5), 2))],
    "flash_attn_ext": [lambda g: pg.flash_attn_ext(r(g, 4, 3, 8), r(g, 2, 7, 8), r(g, 2, 7, 8), mask(g, 3, 7), 0.35),
                       lambda g: pg.flash_attn_ext(r(g, 4, 3, 8), r(g, 2, 7, 8), r(g, 2, 7, 8), mask(g, 3, 7), 0.35,
                                                   logit_softcap=5.0),
                       # no mask, Dv != D; K/V as views of a (KV, Hkv, D) cache; ALiBi
                       lambda g: pg.flash_attn_ext(r(g, 4, 3, 8), r(g, 2, 7, 8), r(g, 2, 7, 5), None, 0.35),
                       lambda g: pg.flash_attn_ext(pg.permute(r(g, 3, 4, 8), 1, 0, 2), pg.permute(r(g, 7, 2, 8), 1, 0, 2),
                                                   pg.permute(r(g, 7, 2, 8), 1, 0, 2), mask(g, 3, 7), 0.35),
                       lambda g: pg.flash_attn_ext(r(g, 4, 3, 8), r(g, 2, 7, 8), r(g, 2, 7, 8), mask(g, 3, 7), 0.35,
                                                   max_bias=8.0)],
    "paged_attn": [lambda g: pg.paged_attn(r(g, 3, 4, 8), r(g, 20, 2, 8), r(g, 20, 2, 5), kv_rows(g, 3, 6, 20), 0.35),
                   lambda g: pg.paged_attn(r(g, 2, 6, 8), r(g, 20, 3, 8), r(g, 20, 3, 8), kv_rows(g, 2, 9, 20), 0.35,
                                           logit_softcap=5.0)],
}
CASE_IDS = [(op, i) for op, cases in CASES.items() for i in range(len(cases))]


def nmse(got: np.ndarray, want: np.ndarray) -> float:
    """Normalized mean squared error (as test-backend-ops); -inf entries must agree exactly."""
    finite = np.isfinite(want)
    assert np.array_equal(finite, np.isfinite(got))
    got, want = got[finite].astype(np.float64), want[finite].astype(np.float64)
    return float(np.sum((got - want) ** 2) / max(np.sum(want ** 2), 1e-30))


def random_blocks(dtype: DType, rows: int, blocks_per_row: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, bytes per row) of random blocks whose float16 scale fields are finite and moderate."""
    _, type_size = gguf.GGML_QUANT_SIZES[dtype]
    blocks = rng.integers(0, 256, (rows * blocks_per_row, type_size), dtype=np.uint8)
    for offset in BLOCKS[dtype].scalars():
        scales = rng.uniform(-2.0, 2.0, len(blocks)).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def blocks_leaf(dtype: DType, rows: int, row_len: int, rng: np.random.Generator) -> pg.Tensor:
    """A constant of random quantized blocks."""
    raw = random_blocks(dtype, rows, row_len // gguf.GGML_QUANT_SIZES[dtype][0], rng)
    return pg.from_numpy(raw, dtype=dtype)


def half(rng, *shape, dtype=DType.F16) -> pg.Tensor:
    """A constant in F16, or BF16 (held as its uint16 bits)."""
    values = rng.standard_normal(shape).astype(np.float32)
    if dtype == DType.F16:
        return pg.from_numpy(values.astype(np.float16))
    return pg.from_numpy((values.view(np.uint32) >> 16).astype(np.uint16), dtype=DType.BF16)


HALF_CASES = {
    "mul_mat": lambda g, t: pg.mul_mat(half(g, 6, 8, dtype=t), r(g, 3, 8)),
    "add": lambda g, t: pg.add(half(g, 4, 8, dtype=t), r(g, 8)),
    "rms_norm": lambda g, t: pg.rms_norm(half(g, 3, 16, dtype=t), 1e-6),
    "rope": lambda g, t: pg.rope(half(g, 3, 2, 16, dtype=t), pg.from_numpy(np.array([0, 4, 9], np.int32)), 16),
    "get_rows": lambda g, t: pg.get_rows(half(g, 6, 8, dtype=t), pg.from_numpy(np.array([5, 0], np.int32))),
    "set_rows": lambda g, t: pg.set_rows(half(g, 6, 8, dtype=t), r(g, 2, 8), pg.from_numpy(np.array([3, 1]))),
    "cpy": lambda g, t: pg.cpy(r(g, 4, 8), half(g, 4, 8, dtype=t)),
    "soft_max_ext": lambda g, t: pg.soft_max_ext(r(g, 2, 3, 7), half(g, 3, 7, dtype=t), scale=0.5),
    "paged_attn": lambda g, t: pg.paged_attn(r(g, 3, 4, 8), half(g, 20, 2, 8, dtype=t), half(g, 20, 2, 8, dtype=t),
                                             kv_rows(g, 3, 6, 20), 0.35),
}


# a mask is F32/F16 only; the NumPy backend holds a BF16 leaf as F32, so set_rows into it is not a reference
HALF_IDS = [(op, t) for op in sorted(HALF_CASES) for t in (DType.F16, DType.BF16)
            if t == DType.F16 or op not in ("soft_max_ext", "set_rows")]


def quant_cases(types: list[DType]) -> dict[str, Case]:
    """mul_mat with a few rows (decode) and with many (prefill), and get_rows, on random blocks of each type."""
    cases: dict[str, Case] = {}
    for t in types:
        n = max(256, gguf.GGML_QUANT_SIZES[t][0])
        cases[f"mul_mat-{t.name}-decode"] = lambda g, t=t, n=n: pg.mul_mat(blocks_leaf(t, 6, n, g), r(g, 2, n))
        cases[f"mul_mat-{t.name}-prefill"] = lambda g, t=t, n=n: pg.mul_mat(blocks_leaf(t, 6, n, g), r(g, 12, n))
        cases[f"get_rows-{t.name}"] = lambda g, t=t, n=n: pg.get_rows(blocks_leaf(t, 6, n, g), idx([4, 1, 4]))
    return cases


# a case per raw CUDA kernel that the cases above do not reach (decode attention, products of few rows)
RAW_CASES = {
    "attn_decode_f16": lambda g: pg.flash_attn_ext(r(g, 4, 1, 64), half(g, 2, 7, 64), half(g, 2, 7, 64),
                                                   mask(g, 1, 7), 0.35),
    "attn_decode_f32": lambda g: pg.flash_attn_ext(r(g, 4, 1, 8), r(g, 2, 7, 8), r(g, 2, 7, 8), None, 0.35),
    "mm_small_f16": lambda g: pg.mul_mat(half(g, 2, 7, 8), r(g, 4, 1, 8)),
    "to_f16_q8_0": lambda g: pg.mul_mat(blocks_leaf(DType.Q8_0, 6, 64, g), r(g, 9, 64)),
    "get_rows_q4_k": lambda g: pg.get_rows(blocks_leaf(DType.Q4_K, 6, 256, g), pg.from_numpy(np.array([1, 5]))),
    "glu_f32": lambda g: pg.geglu(r(g, 3, 16)),
    "mmv_f16": lambda g: pg.mul_mat(half(g, 6, 8), r(g, 2, 8)),
}


def all_cases(quant_types: list[DType]) -> dict[str, tuple[Case, float]]:
    """name -> (case, NMSE limit): every op case, the F16/BF16, quantized (of quant_types) and raw-kernel cases."""
    cases = {f"{op}-{i}": (CASES[op][i], MAX_NMSE) for op, i in CASE_IDS}
    cases.update({f"{op}-{t.name}": (lambda g, op=op, t=t: HALF_CASES[op](g, t), 1e-5) for op, t in HALF_IDS})
    cases.update({name: (case, 1e-6) for name, case in quant_cases(quant_types).items()})
    cases.update({f"raw-{name}": (case, 1e-5) for name, case in RAW_CASES.items()})
    return cases
