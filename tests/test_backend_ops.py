"""Every op on every backend that can be created here against the NumPy backend (ggml's test-backend-ops):
normalized mean squared error <= 1e-7 in F32. Backends that cannot be created (cupy without a GPU) skip."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from gguf import quants

import pyggml as pg
from pyggml import DType
from pyggml.backends import registry
from pyggml.backends.numpy_backend import NumpyBackend
from pyggml.graph.errors import PyggmlError
from pyggml.backends.numba_quants import BLOCK_TYPES
from pyggml.ops import OPS
from blocks import random_blocks
from fake_device import TestDevice

MAX_NMSE = 1e-7
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


def weight(rng: np.random.Generator, dtype: DType, rows: int = 7) -> pg.Tensor:
    """A (rows, two blocks) weight of random blocks of dtype (F16: random halves)."""
    block = BLOCK_TYPES[dtype][0]
    if dtype == DType.F16:
        return pg.from_numpy(rng.standard_normal((rows, 2 * block)).astype(np.float16))
    return pg.from_numpy(random_blocks(dtype, rows, 2, rng), dtype=dtype)


def quantized_product(rng: np.random.Generator, dtype: DType, n: int) -> pg.Tensor:
    """mul_mat of a 7-row weight of dtype (a partial group of four rows) with n activation rows."""
    w = weight(rng, dtype)
    return pg.mul_mat(w, r(rng, n, w.shape[-1]))


def q8_rows(rng: np.random.Generator) -> pg.Tensor:
    return pg.from_numpy(quants.quantize(rng.standard_normal((6, 64)).astype(np.float32), DType.Q8_0), dtype=DType.Q8_0)


# op -> cases (each builds one output from random constants; permuted/strided views exercise the view ops)
CASES: dict[str, list[Case]] = {
    "mul_mat": [lambda g: pg.mul_mat(r(g, 5, 8), r(g, 3, 8)),
                lambda g: pg.mul_mat(r(g, 2, 5, 8), r(g, 4, 3, 8)),
                lambda g: pg.mul_mat(pg.from_numpy(np.random.default_rng(1).standard_normal((5, 8)).astype(np.float16)),
                                     r(g, 3, 8)),
                # every type the block kernels read, against the NumPy backend's dense weights: 1 and 3 rows
                # (the mat-vec), 12 rows (dequantized panels and BLAS)
                *[lambda g, t=t, n=n: quantized_product(g, t, n) for t in BLOCK_TYPES for n in (1, 3, 12)]],
    **{op: [lambda g, op=op: getattr(pg, op)(r(g, 4, 6, 8), r(g, 6, 8)),
            lambda g, op=op: getattr(pg, op)(pg.permute(r(g, 8, 6, 4), 2, 1, 0), r(g, 1, 8))]
       for op in ("add", "sub", "mul")},
    "div": [lambda g: pg.div(r(g, 4, 8), pg.exp(r(g, 8)))],
    "scale": [lambda g: pg.scale(r(g, 4, 8), 0.5, 0.25)],
    **{op: [lambda g, op=op: getattr(pg, op)(pg.transpose(r(g, 8, 4)))] for op in ("sqr", "neg", "exp", "tanh", "silu",
                                                                                   "gelu", "relu")},
    "sqrt": [lambda g: pg.sqrt(pg.sqr(r(g, 4, 8)))],
    "swiglu": [lambda g: pg.swiglu(r(g, 3, 16)), lambda g: pg.swiglu(r(g, 3, 8), r(g, 3, 8), swapped=True)],
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
                                                   logit_softcap=5.0)],
}
CASE_IDS = [(op, i) for op, cases in CASES.items() for i in range(len(cases))]


def nmse(got: np.ndarray, want: np.ndarray) -> float:
    """Normalized mean squared error (as test-backend-ops); -inf entries must agree exactly."""
    finite = np.isfinite(want)
    assert np.array_equal(finite, np.isfinite(got))
    got, want = got[finite].astype(np.float64), want[finite].astype(np.float64)
    return float(np.sum((got - want) ** 2) / max(np.sum(want ** 2), 1e-30))


def test_every_op_has_a_case():
    assert [op for op in OPS if op not in CASES] == []


@pytest.mark.parametrize("op,i", CASE_IDS, ids=[f"{op}-{i}" for op, i in CASE_IDS])
def test_op_table_tells_the_truth(op, i):
    nodes = pg.Graph.build(CASES[op][i](np.random.default_rng(7))).nodes
    for node in nodes:
        spec = OPS[node.op]
        assert spec.arity[0] <= len(node.srcs) <= spec.arity[1], node.op
        assert (node.view_src is not None) == (spec.view or spec.write), node.op
        assert all(slot < spec.arity[0] for slot in spec.block_srcs), node.op


@pytest.fixture(scope="module", params=[*sorted(registry.BUILTIN), "testdevice"])
def backend(request):
    """Each built-in backend that can be created here (cupy needs a GPU: the one allowed skip), and the test
    device."""
    if request.param == "testdevice":
        return TestDevice()
    try:
        return registry.create(request.param)
    except PyggmlError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("op,i", CASE_IDS, ids=[f"{op}-{i}" for op, i in CASE_IDS])
def test_op_matches_numpy(backend, op, i):
    want = pg.compute(CASES[op][i](np.random.default_rng(7)), backend=NumpyBackend())
    got = pg.compute(CASES[op][i](np.random.default_rng(7)), backend=backend)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert nmse(got, want) <= MAX_NMSE
