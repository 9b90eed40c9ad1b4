"""Graph fusions: each pass gives a smaller graph computing what the unfused graph computes."""
from __future__ import annotations

import numpy as np
import pytest

import pyggml as pg
from pyggml.backends import NumpyBackend, Plan
from pyggml.backends.fusion import FUSIONS, fuse
from pyggml.backends.numba.backend import NumbaBackend
from pyggml.graph.graph import Graph
from pyggml.model.model import Model
from synthetic_llama import TinyLlama, make_weights, write_gguf

rng = np.random.default_rng(3)


def const(*shape: int) -> pg.Tensor:
    return pg.from_numpy(rng.standard_normal(shape).astype(np.float32))


def norm_then_weight() -> pg.Tensor:
    return pg.add(pg.mul(pg.rms_norm(const(3, 16), 1e-5), const(16)), const(3, 16))


def attention_output() -> pg.Tensor:
    kq = pg.soft_max_ext(pg.mul_mat(const(2, 5, 8), const(4, 3, 8)))  # K (2 heads) · Q (4 heads): (4, 3, 5)
    kqv = pg.mul_mat(pg.transpose(const(2, 5, 8)), kq)                 # (4, 3, 8)
    return pg.cont(pg.permute(kqv, 1, 0, 2), (3, 32))


def last_row() -> pg.Tensor:
    x = pg.exp(const(1, 16))
    return pg.sqr(pg.get_rows(x, pg.from_numpy(np.array([0], np.int32))))


PATTERNS = {"rms_norm_mul": (norm_then_weight, "rms_norm_mul"), "permuted_product": (attention_output, "mul_mat_permuted"),
            "attention": (attention_output, "flash_attn_ext"), "one_row_gather": (last_row, None)}
NEEDS = {"attention": ["permuted_product"]}  # passes a pass follows


def test_every_fusion_has_a_pattern():
    assert sorted(PATTERNS) == sorted(FUSIONS)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_fusion_is_smaller_and_equal_to_the_unfused_graph(name):
    build, fused_op = PATTERNS[name]
    graph = Graph.build(build())
    before = fuse(graph, NEEDS.get(name, []))
    fused = fuse(graph, NEEDS.get(name, []) + [name])
    assert len(fused.nodes) < len(before.nodes)
    assert fused_op is None or fused_op in {n.op for n in fused.nodes}
    want, = Plan(graph, NumpyBackend()).run()
    got, = Plan(fused, NumpyBackend()).run()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_graph_without_patterns_is_returned_as_is():
    graph = Graph.build(pg.exp(const(2, 3)))
    assert fuse(graph, FUSIONS) is graph


def test_decode_step_on_the_numba_backend_has_fewer_nodes_and_the_same_logits(tmp_path):
    cfg = TinyLlama()
    path = write_gguf(tmp_path / "tiny.gguf", cfg, make_weights(cfg))
    models = [Model(path, n_ctx=64, backend=b) for b in (NumbaBackend(), NumpyBackend())]
    logits = [np.concatenate([m.eval([1, 2, 3, 4]), m.eval([5])]) for m in models]
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)
    fused, plain = (len(m.context.last_plan.graph.nodes) for m in models)
    # per layer: two norms; the attention's scores, softmax, V's transpose (a view node), products, their permute
    # (a view) and copy become flash_attn_ext and a reshape (a view); once: the final norm and both last-row
    # gathers
    assert plain - fused == 6 * cfg.n_layer + 3


def test_a_numpy_fallback_keeps_the_numba_fusions(tmp_path):
    """[numba, numpy] (the preferred backend and its CPU fallback) fuses as numba alone does, with the same
    logits; NumPy alone, which wants no pass, runs the unfused graph."""
    cfg = TinyLlama()
    path = write_gguf(tmp_path / "tiny.gguf", cfg, make_weights(cfg))
    backends = {"numba": NumbaBackend(), "both": pg.backends.Scheduler([NumbaBackend(), NumpyBackend()]),
                "numpy": NumpyBackend()}
    models = {name: Model(path, n_ctx=64, backend=b) for name, b in backends.items()}
    logits = {name: np.concatenate([m.eval([1, 2, 3, 4]), m.eval([5])]) for name, m in models.items()}
    np.testing.assert_allclose(logits["both"], logits["numba"], rtol=1e-6, atol=1e-6)
    ops = {name: [n.op for n in m.context.last_plan.graph.nodes] for name, m in models.items()}
    assert ops["both"] == ops["numba"]
    assert {"flash_attn_ext", "rms_norm_mul"} <= set(ops["both"])
    assert not {"flash_attn_ext", "rms_norm_mul"} & set(ops["numpy"])


@pytest.mark.parametrize("shape", [(1, 16), (3, 16), (2, 3, 16)])
def test_rms_norm_mul_kernel_of_the_numba_backend_equals_the_formula(shape):
    x, w = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    plan = pg.compile([pg.mul(pg.rms_norm(pg.from_numpy(x), 1e-5), pg.from_numpy(w))], NumbaBackend())
    assert [n.op for n in plan.graph.nodes] == ["rms_norm_mul"]
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(plan.run()[0], want, rtol=1e-5, atol=1e-6)
