"""The numba backend: weights stay GGUF blocks, it is the default, and both reference models give the NumPy
backend's logits (the per-op kernels are compared in test_backend_ops)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import pyggml as pg
from conftest import F32_CACHE
from op_cases import random_blocks
from pyggml.backends import NumpyBackend, default_backend
from pyggml.backends.numba.backend import NumbaBackend
from pyggml.graph.dtypes import DType
from pyggml.model.model import Model


def test_default_backend_is_numba():
    assert isinstance(default_backend(), NumbaBackend)


def test_without_numba_the_numpy_backend_is_used_and_said_in_one_line():
    code = ("import sys; sys.modules['numba'] = None\n"
            "from pyggml.backends import default_backend; print(default_backend().name)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "numpy"
    assert len(done.stderr.strip().splitlines()) == 1 and "numba" in done.stderr


def test_a_weight_read_by_mul_mat_keeps_its_blocks():
    rng = np.random.default_rng(0)
    raw = random_blocks(DType.Q4_K, 8, 1, rng)
    w = pg.from_numpy(raw, dtype=DType.Q4_K)
    backend = NumbaBackend()
    plan = pg.compile(pg.mul_mat(w, pg.from_numpy(rng.standard_normal((1, 256)).astype(np.float32))), backend)
    plan.run()
    held = plan.array(w)
    assert held.dtype == np.uint8 and np.shares_memory(held, raw) and w not in backend._placed[True]


def test_a_weight_without_a_block_kernel_is_dequantized_once():
    """A 3-D quantized weight (broadcast over b's batches) goes the NumPy way: held dense."""
    rng = np.random.default_rng(1)
    w = pg.from_numpy(random_blocks(DType.Q8_0, 8, 1, rng).reshape(2, 4, 34), dtype=DType.Q8_0)
    out = pg.mul_mat(w, pg.from_numpy(rng.standard_normal((2, 3, 32)).astype(np.float32)))
    backend = NumbaBackend()
    np.testing.assert_allclose(pg.compute(out, backend=backend), pg.compute(out, backend=NumpyBackend()), rtol=1e-6)
    assert backend._placed[True][w].dtype == np.float32


@pytest.mark.parametrize("name", ["smollm2_path", "gemma3_path"])
def test_reference_models_match_the_numpy_backend(name, request):
    """Prefill and a few decode steps: the block kernels' logits equal the dense F32 ones within 1e-3."""
    path = request.getfixturevalue(name)
    prompt = list(range(2, 40))
    logits = []
    for backend in (NumbaBackend(), NumpyBackend()):
        model = Model(path, n_ctx=256, **F32_CACHE, backend=backend)
        steps = [model.eval(prompt)] + [model.eval([t]) for t in (100, 200, 300)]
        logits.append(np.concatenate(steps))
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-3, rtol=0)


def test_register_tiles_give_each_row_the_same_sums_at_any_row_count_and_refuse_strided_rows():
    """A row's products do not depend on the rows beside it (batched and single logits then agree), against
    float64 products of the dequantized weight; strided activations are refused, not misread."""
    from pyggml.backends.numba.tiles import tiled_product
    from pyggml.backends.quants import dequantize
    rng = np.random.default_rng(1)
    raw = random_blocks(DType.Q4_1, 9, 4, rng)
    x = rng.standard_normal((11, 128)).astype(np.float32)
    outs = []
    for n in (1, 3, 11):
        out = np.empty((n, 9), np.float32)
        tiled_product(DType.Q4_1, raw, x[:n], out, 2)()
        outs.append(out)
    want = x.astype(np.float64) @ dequantize(raw, DType.Q4_1, (9, 128)).astype(np.float64).T
    np.testing.assert_allclose(outs[-1], want, rtol=1e-5, atol=1e-5)
    assert np.array_equal(outs[0], outs[-1][:1]) and np.array_equal(outs[1], outs[-1][:3])
    with pytest.raises(ValueError, match="contiguous"):
        tiled_product(DType.Q4_1, raw, x[:, ::2], np.empty((11, 9), np.float32), 2)


def test_set_rows_of_several_rows_checks_its_indices():
    """The numba set_rows (several F32 rows): negative indices from the end as NumPy's, none out of range."""
    rng = np.random.default_rng(4)
    table, rows = rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal((3, 8)).astype(np.float32)
    for backend in (NumbaBackend(), NumpyBackend()):
        node = pg.set_rows(pg.from_numpy(table), pg.from_numpy(rows), pg.from_numpy(np.array([4, -1, 0], np.int32)))
        want = table.copy()
        want[[4, 5, 0]] = rows
        np.testing.assert_array_equal(pg.compute(node, backend=backend), want)
    bad = pg.set_rows(pg.from_numpy(table), pg.from_numpy(rows), pg.from_numpy(np.array([1, 6, 0], np.int32)))
    with pytest.raises(IndexError):
        pg.compute(bad, backend=NumbaBackend())


def test_set_rows_into_a_float16_table_rounds_as_numpy():
    """Several F32 rows into an F16 table (an F16 KV cache): the numba kernel rounds as NumPy's astype."""
    rng = np.random.default_rng(5)
    values = rng.standard_normal((6, 32)).astype(np.float32) * 100
    rows = rng.standard_normal((3, 32)).astype(np.float32) * 100
    got = []
    for backend in (NumbaBackend(), NumpyBackend(DType.F16)):
        table = pg.cpy(pg.from_numpy(values), pg.new_tensor((6, 32), DType.F16, "t", pg.Flag.PERSISTENT))
        node = pg.set_rows(table, pg.from_numpy(rows), pg.from_numpy(np.array([4, 0, 2], np.int32)))
        got.append(pg.compute(node, backend=backend))
    want = values.astype(np.float16)
    want[[4, 0, 2]] = rows.astype(np.float16)
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(got[1], want)
