"""Shared pytest fixtures: the reference models (fetched once, then cached) and models loaded once per session."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # the reference fixtures, kept in the repository
F32_CACHE = {"type_k": "f32", "type_v": "f32"}  # a float32 KV cache: what matches the float32 references tightly


@functools.cache
def float32_backend():
    """numba, whose products are exact float32: the float32 references are checked on it (the default backend,
    numba-q8, rounds activations to 8 bits as llama.cpp does; tests/test_numba_q8.py holds it to llama.cpp's
    distance)."""
    from pyggml.backends.numba.backend import NumbaBackend
    return NumbaBackend()


def _pulled(name: str) -> Path:
    """The cached GGUF file of a known model; a failure to fetch it fails the test (CI can fetch it)."""
    from pyggml.model.tooling.pull import pull
    return pull(name, progress=False)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF."""
    return _pulled("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """Gemma 3 270M Q4_K_M GGUF."""
    return _pulled("gemma3-270m")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """SmolLM2 loaded once with float32 products and KV cache (tests reset its cache before use)."""
    from pyggml.model.model import Model
    return Model(smollm2_path, n_ctx=2048, backend=float32_backend(), **F32_CACHE)


@pytest.fixture(scope="session")
def gemma3(gemma3_path):
    """Gemma 3 loaded once with float32 products and KV cache (tests reset its cache before use)."""
    from pyggml.model.model import Model
    return Model(gemma3_path, n_ctx=2048, backend=float32_backend(), **F32_CACHE)


def load_reference(name: str) -> dict:
    """A llama.cpp / float32 reference fixture from tests/fixtures."""
    return json.loads((FIXTURES / name).read_text())


def assert_follows_references(tokens: list[int], case: dict) -> None:
    """Greedy tokens equal llama.cpp's up to where the float32 reference departs from llama.cpp, and there
    side with the float32 reference."""
    departs = [i for i, (a, b) in enumerate(zip(case["tf_argmax"], case["greedy_ids"])) if a != b]
    until = departs[0] if departs else len(case["greedy_ids"])
    assert tokens[:until] == case["greedy_ids"][:until]
    if departs and len(tokens) > until:
        assert tokens[until] == case["tf_argmax"][until]
