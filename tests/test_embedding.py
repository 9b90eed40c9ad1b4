"""Model.embed: pooled, normalized hidden states against a float64 transcription of the forward pass."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import F32_CACHE
from pyggml.graph.errors import PyggmlError
from pyggml.model.runtime.embedding import normalize
from pyggml.model.model import Model
from synthetic_llama import TinyLlama, make_weights, reference_hidden, write_gguf

CFG = TinyLlama()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    weights = make_weights(CFG)
    return write_gguf(tmp_path_factory.mktemp("embed") / "tiny-llama.gguf", CFG, weights), weights


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


@pytest.mark.parametrize("pooling,want", [("mean", lambda h: unit(h.mean(0))), ("last", lambda h: unit(h[-1])),
                                          ("cls", lambda h: unit(h[0])), ("none", lambda h: h)])
def test_embed_pools_and_normalizes_the_hidden_states(tiny, pooling, want):
    path, weights = tiny
    model = Model(path, n_ctx=64, **F32_CACHE)
    inputs = [[5, 9, 2, 7, 1], [3, 3, 8], [11]]
    got = model.embed(inputs, pooling=pooling)
    assert len(got) == 3
    for ids, vector in zip(inputs, got):
        np.testing.assert_allclose(vector, want(reference_hidden(CFG, weights, np.array(ids))), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(model.embed(inputs[0], pooling=pooling)[0], got[0])  # one input alone


def test_embed_defaults_to_the_ggufs_pooling_type_and_refuses_others(tiny):
    path, weights = tiny
    assert Model(path, n_ctx=64).pooling == "last"  # no pooling_type in the file
    model = Model(path, n_ctx=64, kv_overrides={"llama.pooling_type": 1}, **F32_CACHE)
    assert model.pooling == "mean"
    raw = model.embed([4, 6, 8], normalize=-1)[0]
    np.testing.assert_allclose(raw, reference_hidden(CFG, weights, np.array([4, 6, 8])).mean(0), atol=1e-4, rtol=0)
    with pytest.raises(PyggmlError, match="pooling_type 4 is not supported"):
        Model(path, n_ctx=64, kv_overrides={"llama.pooling_type": 4})
    with pytest.raises(PyggmlError, match="pooling must be one of none, mean, cls, last, not 'max'"):
        model.embed([1, 2], pooling="max")
    with pytest.raises(PyggmlError, match="must have 1 to 64"):
        model.embed([list(range(65))])


def test_normalize_is_llama_cpps_common_embd_normalize():
    x = np.array([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(normalize(x, 2), [[0.6, -0.8, 0.0], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(normalize(x, 1), [[3 / 7, -4 / 7, 0.0], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(normalize(x, 0), [[3 * 32760 / 4, -32760, 0.0], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(normalize(x, 3), [x[0] / np.cbrt(27 + 64), [0, 0, 0]], rtol=1e-6)
    np.testing.assert_array_equal(normalize(x, -1), x)
