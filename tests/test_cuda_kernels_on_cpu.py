"""The CuPy backend's raw CUDA kernels computing on the CPU (tests/cuda_emulation.py: the same CUDA C compiled
with g++, blocks run as threads) inside the stand-in for cupy: every op case, F16/BF16 and quantized case and
raw-kernel case against the NumPy backend, and the synthetic Q8_0 llama against the NumPy backend, eagerly and
with graph replay."""
from __future__ import annotations

import numpy as np
import pytest

import cuda_emulation
import fake_cupy
import pyggml as pg
from conftest import F32_CACHE, float32_backend
from op_cases import all_cases, nmse
from pyggml.backends.cupy.backend import CupyBackend
from pyggml.backends.cupy.quants import DEVICE_FORMATS
from pyggml.backends.numpy.backend import NumpyBackend
from pyggml.backends.numpy.kernels import as_f32
from pyggml.model.model import Model
from test_cupy_backend import tiny_q8  # noqa: F401  (a fixture)

UNAVAILABLE = cuda_emulation.available()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))

CASES_ALL = all_cases(sorted(DEVICE_FORMATS))


@pytest.fixture
def emulated(monkeypatch) -> CupyBackend:
    monkeypatch.setattr(fake_cupy, "RawModule", cuda_emulation.EmulatedRawModule, raising=False)
    return CupyBackend(xp=fake_cupy, raw_kernels=True)


def launched(backend: CupyBackend) -> list[str]:
    return backend.raw._module.launched if backend.raw._module is not None else []


@pytest.mark.parametrize("name", sorted(CASES_ALL))
def test_case_matches_numpy(emulated, name):
    build, limit = CASES_ALL[name]
    want = pg.compute(build(np.random.default_rng(7)), backend=NumpyBackend())
    result = build(np.random.default_rng(7))
    got = pg.compute(result, backend=emulated)
    assert nmse(as_f32(got, result.dtype), as_f32(want, result.dtype)) <= limit
    if name.startswith("raw-"):
        assert name.removeprefix("raw-") in launched(emulated)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graph-replay"])
def test_generation_matches_numpy(emulated, tiny_q8, graphs):  # noqa: F811  (a fixture)
    emulated.cuda_graphs = graphs
    ref = Model(tiny_q8, n_ctx=64, backend=float32_backend(), **F32_CACHE).generate([1, 2, 3], max_tokens=4,
                                                                                temperature=0.0, logprobs=True)
    out = Model(tiny_q8, n_ctx=64, **F32_CACHE, backend=emulated).generate([1, 2, 3], max_tokens=4, temperature=0.0,
                                                               logprobs=True)
    assert out.tokens == ref.tokens
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-4)
    # attention is one fused flash_attn_ext: attn_decode in decode, two batched products in the prefill
    assert {"get_rows_q8_0", "mmv_q8_0", "rms_norm_f32", "rope_f32", "glu_f32", "attn_decode_f32"} \
        <= set(launched(emulated))
