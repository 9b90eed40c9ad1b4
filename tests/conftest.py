"""Shared pytest fixtures: the reference models, fetched once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from pyggml.graph.errors import PyggmlError


def _pulled(name: str) -> Path:
    """The cached GGUF file of a known model, or skip when it cannot be had."""
    from pyggml.model.pull import pull
    try:
        return pull(name)
    except PyggmlError as e:
        pytest.skip(f"model {name} unavailable: {e}")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF."""
    return _pulled("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """Gemma 3 270M Q4_K_M GGUF."""
    return _pulled("gemma3-270m")
