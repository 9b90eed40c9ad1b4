"""Every op on every backend that can be created here against the NumPy backend (ggml's test-backend-ops):
normalized mean squared error <= 1e-7 in F32 (5e-4, ggml's own limit, for mul_mat on numba-q8, which rounds
activations to 8 bits). Backends that cannot be created (cupy without a GPU) skip."""
from __future__ import annotations

import numpy as np
import pytest

import pyggml as pg
from fake_device import TestDevice
from op_cases import CASE_IDS, CASES, HALF_CASES, HALF_IDS, MAX_NMSE, Q8_ACTIVATIONS_NMSE, nmse
from pyggml.backends import registry
from pyggml.backends.numpy.backend import NumpyBackend
from pyggml.graph.errors import PyggmlError
from pyggml.ops import OPS


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
    # numba-q8 rounds mul_mat's activations to 8 bits (its own tests hold it to float64 of rounded activations)
    assert nmse(got, want) <= (Q8_ACTIVATIONS_NMSE if backend.name == "numba-q8" and op == "mul_mat" else MAX_NMSE)


@pytest.mark.parametrize("op,dtype", HALF_IDS, ids=[f"{op}-{t.name}" for op, t in HALF_IDS])
def test_half_precision_operands_match_numpy(backend, op, dtype):
    """F16 and BF16 operands (an F16 KV cache read by the attention kernels, among others)."""
    want = pg.compute(HALF_CASES[op](np.random.default_rng(3), dtype), backend=NumpyBackend())
    got = pg.compute(HALF_CASES[op](np.random.default_rng(3), dtype), backend=backend)
    assert got.shape == want.shape and nmse(got, want) <= 1e-5
