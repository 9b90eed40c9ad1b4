"""The scheduler over a fake device and NumPy: placement, fallbacks, pins, splits, copies, and the promise
"weights once, per decode step only the inputs in and the logits out" on the synthetic llama."""
from __future__ import annotations

import numpy as np
import pytest

import pyggml as pg
from pyggml.backends import NumpyBackend, Plan, Scheduler, compile as compile_plan
from fake_device import DeviceArray, TestDevice
from pyggml.graph.errors import PyggmlError
from pyggml.model.model import Model
from synthetic_llama import TinyLlama, make_weights, write_gguf

CFG = TinyLlama()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("sched") / "tiny-llama.gguf", CFG, make_weights(CFG))


def small_graph(rng):
    """x -> mul_mat(w) -> silu -> add(b) -> rms_norm: one weight, one input."""
    w = pg.from_numpy(rng.standard_normal((6, 4)).astype(np.float32), name="w")
    b = pg.from_numpy(rng.standard_normal(6).astype(np.float32), name="b")
    x = pg.input_tensor((3, 4), name="x")
    y = pg.rms_norm(pg.add(pg.silu(pg.mul_mat(w, x)), b))
    return x, y


def test_device_arrays_refuse_host_reads():
    dev = TestDevice()
    a = dev.empty((2, 3), np.dtype(np.float32))
    with pytest.raises(TypeError):
        np.asarray(a)
    dev.upload(a, np.ones((2, 3), np.float32))
    assert isinstance(a, DeviceArray) and dev.download(a).sum() == 6
    assert dev.uploads == [24] and dev.downloads == [24]


@pytest.mark.parametrize("unsupported", [(), ("silu",), ("mul_mat", "rms_norm")])
def test_results_match_numpy_with_fallbacks(unsupported):
    rng = np.random.default_rng(0)
    x, y = small_graph(rng)
    value = rng.standard_normal((3, 4)).astype(np.float32)
    want = compile_plan(y).run({x: value})[0]
    plan = compile_plan(y, [TestDevice(unsupported), NumpyBackend()])
    assert isinstance(plan, Plan)
    np.testing.assert_allclose(plan.run({x: value})[0], want, rtol=1e-6)
    for node in plan.graph.nodes:
        assert (plan.where[node].name == "numpy") == (node.op in unsupported)


def test_splits_and_copies_are_counted():
    rng = np.random.default_rng(0)
    x, y = small_graph(rng)
    dev = TestDevice(["silu"])
    plan = compile_plan(y, [dev, NumpyBackend()])
    assert [s.backend.name for s in plan.splits] == ["testdevice", "numpy", "testdevice"]
    assert [(c.src, c.dst, c.nbytes) for c in plan.copies] == [("testdevice", "numpy", 72),
                                                               ("numpy", "testdevice", 72)]
    dev.reset_counts()
    plan.run({x: np.zeros((3, 4), np.float32)})
    assert dev.uploads == [48, 72] and dev.downloads == [72, 72]  # x, silu in; mul_mat out, result out
    text = plan.describe()
    assert "3 splits, 2 copies (144 bytes per run)" in text and "-> numpy, 72 bytes" in text


def test_weight_lives_on_the_first_backend_supporting_its_readers():
    rng = np.random.default_rng(0)
    x, y = small_graph(rng)
    plan = compile_plan(y, [TestDevice(["mul_mat"]), NumpyBackend()])
    w = next(t for t in plan.graph.leafs if t.name == "w")
    b = next(t for t in plan.graph.leafs if t.name == "b")
    assert plan.where[w].name == "numpy" and plan.where[b].name == "testdevice"


def test_pins_by_name():
    rng = np.random.default_rng(0)
    x, y = small_graph(rng)
    silu = y.srcs[0].srcs[0]
    silu.name = "act"
    plan = compile_plan(y, Scheduler([TestDevice(), NumpyBackend()], pins={"act": "numpy"}))
    assert plan.where[silu].name == "numpy" and len(plan.splits) == 3
    with pytest.raises(PyggmlError):
        Scheduler([NumpyBackend()], pins={"act": "cuda"})


def decode_model(tiny, dev):
    model = Model(tiny, n_ctx=64, backend=Scheduler([dev, NumpyBackend()]))
    model.eval([1, 2, 3, 4])
    model.eval([5])  # warm-up: the decode plan is compiled, weights placed
    return model


def test_weights_once_then_only_inputs_in_and_logits_out(tiny):
    dev = TestDevice()
    model = decode_model(tiny, dev)
    placed = sum(w.nbytes for w in make_weights(CFG).values()) + model.cache.nbytes
    assert placed <= dev.upload_bytes < placed + 4096  # weights and KV cache once, plus two steps' inputs
    plan = next(p for key, (p, _) in model.context.batch._plans.items() if key[0] == 1)
    assert len(plan.splits) == 1 and plan.copies == []
    for token in (6, 7, 8):
        dev.reset_counts()
        model.eval([token])
        inputs = sum(a.nbytes for arrays in plan.inputs.values() for _, a in arrays)
        assert dev.upload_bytes == inputs and len(dev.uploads) == len(plan.inputs) == 5
        assert dev.downloads == [CFG.n_vocab * 4]
    dev.reset_counts()
    model.eval([9, 10])  # a new step shape: a new plan, the weights already there
    assert dev.upload_bytes < 4096


@pytest.mark.parametrize("unsupported", [(), ("rope",), ("get_rows", "soft_max_ext", "flash_attn_ext")])
def test_generation_matches_numpy(tiny, unsupported):
    ref = Model(tiny, n_ctx=64).generate([1, 2, 3], max_tokens=8, temperature=0.0, logprobs=True)
    got = decode_model(tiny, TestDevice(unsupported))
    got.reset()
    out = got.generate([1, 2, 3], max_tokens=8, temperature=0.0, logprobs=True)
    assert out.tokens == ref.tokens
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
