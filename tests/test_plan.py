"""Plans: compiled once and run many times, outputs copied out, memory reused but never overwritten too early."""
from __future__ import annotations

import gc
import math
import random

import numpy as np
import pytest

import pyggml as pg
from pyggml import DType, Flag, PyggmlError


def f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Standard-normal float32 values."""
    return rng.standard_normal(shape).astype(np.float32)


def test_one_plan_run_twice_with_different_inputs():
    rng = np.random.default_rng(0)
    w_value = f32(rng, 5, 4)
    x = pg.input_tensor((3, 4), name="x")
    bias = pg.input_tensor((5,), name="bias")
    out = pg.silu(pg.add(pg.mul_mat(pg.from_numpy(w_value), x), bias))
    plan = pg.compile(out)
    for _ in range(2):
        xv, bv = f32(rng, 3, 4), f32(rng, 5)
        h = xv.astype(np.float64) @ w_value.T.astype(np.float64) + bv
        (got,) = plan.run({"x": xv, bias: bv})  # by name or by tensor
        np.testing.assert_allclose(got, h / (1 + np.exp(-h)), rtol=1e-5, atol=1e-6)


def test_outputs_are_copies_that_later_runs_do_not_change():
    x = pg.input_tensor((4,), name="x")
    plan = pg.compile([pg.scale(x, 2.0), pg.exp(x)])
    first = plan.run({"x": np.ones(4)})
    second = plan.run({"x": np.zeros(4)})
    np.testing.assert_array_equal(first[0], [2, 2, 2, 2])
    np.testing.assert_allclose(first[1], [math.e] * 4, rtol=1e-6)
    np.testing.assert_array_equal(second[0], [0, 0, 0, 0])
    first[0][:] = 7  # writing into a returned array does not touch the plan
    np.testing.assert_array_equal(plan.run()[0], [0, 0, 0, 0])


def test_inputs_are_checked():
    plan = pg.compile(pg.neg(pg.input_tensor((2, 3), name="x")))
    with pytest.raises(PyggmlError, match="no input 'y'"):
        plan.run({"y": np.zeros((2, 3))})
    with pytest.raises(PyggmlError, match="expected \\[2, 3\\]"):
        plan.run({"x": np.zeros(5)})


def test_compute_returns_one_array_or_a_list():
    a = pg.from_numpy(np.array([1.0, 4.0], np.float32))
    np.testing.assert_array_equal(pg.compute(pg.sqrt(a)), [1, 2])
    got = pg.compute(pg.sqrt(a), pg.neg(a))
    assert isinstance(got, list) and len(got) == 2
    np.testing.assert_array_equal(got[1], [-1, -4])


def test_profile_times_every_step():
    x = pg.input_tensor((4,), name="x")
    plan = pg.compile(pg.neg(pg.exp(pg.transpose(pg.reshape(x, (2, 2))))))
    plan.run({"x": np.arange(4)}, profile=True)
    assert [n.op for n, _ in plan.last_profile] == ["exp", "neg"]  # views are not steps
    assert all(seconds >= 0 for _, seconds in plan.last_profile)


# ---------------------------------------------------------------------------------------------- memory plan

def test_a_long_chain_reuses_memory_and_runs_in_place():
    x = pg.input_tensor((256,), name="x")
    t = x
    for i in range(50):
        t = pg.tanh(t) if i % 2 else pg.scale(t, 1.01)
    t = pg.mul_mat(pg.reshape(t, (16, 16)), pg.reshape(pg.exp(x), (16, 16)))  # not in place: another shape
    plan = pg.compile(t)
    intermediates = sum(n.nbytes for n in plan.graph.nodes if not pg.ops.is_view(n.op))
    assert plan.arena_bytes < intermediates / 10
    in_place = [slot for _, slot in plan.memory() if slot.inplace_of]
    assert len(in_place) >= 48
    assert "in place of" in plan.describe()
    value = np.linspace(-1, 1, 256).astype(np.float32)
    want = value.astype(np.float64)
    for i in range(50):
        want = np.tanh(want) if i % 2 else want * 1.01
    want = np.exp(value.astype(np.float64)).reshape(16, 16) @ want.reshape(16, 16).T
    np.testing.assert_allclose(plan.run({"x": value})[0], want, rtol=1e-5)


def test_outputs_are_never_overwritten_in_place():
    x = pg.input_tensor((8,), name="x")
    h = pg.exp(x)
    plan = pg.compile([h, pg.neg(h)])  # neg is h's last reader, but h is an output
    value = np.arange(8, dtype=np.float32) / 8
    got_h, got_neg = plan.run({"x": value})
    np.testing.assert_allclose(got_h, np.exp(value), rtol=1e-6)
    np.testing.assert_allclose(got_neg, -np.exp(value), rtol=1e-6)


def test_a_value_read_through_a_view_later_is_kept():
    x = pg.input_tensor((4, 4), name="x")
    e = pg.exp(x)
    late_view = pg.transpose(e)
    chain = pg.neg(e)  # could run in place of e, but e is still read through late_view
    for _ in range(3):
        chain = pg.tanh(chain)
    out = pg.add(chain, late_view)
    value = np.arange(16, dtype=np.float32).reshape(4, 4) / 16
    want = np.tanh(np.tanh(np.tanh(-np.exp(value)))) + np.exp(value).T
    np.testing.assert_allclose(pg.compile(out).run({"x": value})[0], want, rtol=1e-5)


def rms(v: np.ndarray) -> np.ndarray:
    """Rows divided by their root mean square (eps 1e-5)."""
    return v / np.sqrt((v * v).mean(-1, keepdims=True) + 1e-5)


def softmax(v: np.ndarray) -> np.ndarray:
    """Row softmax."""
    e = np.exp(v - v.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class RandomGraph:
    """A random DAG of elementwise, matmul, view and layout ops over (6, 6) values, evaluated alongside in NumPy."""

    N = 6

    def __init__(self, seed: int):
        self.py = random.Random(seed)
        self.np = np.random.default_rng(seed)
        self.inputs = [pg.input_tensor((self.N, self.N), name=f"in{i}") for i in range(3)]
        self.input_values: dict[str, np.ndarray] = {}
        self.const = f32(self.np, self.N, self.N)
        self.values: list[tuple[pg.Tensor, object]] = [(t, (lambda i: lambda env: env[f"in{i}"])(i))
                                                        for i, t in enumerate(self.inputs)]
        self.values.append((pg.from_numpy(self.const), lambda env: self.const.astype(np.float64)))

    def pick(self) -> tuple[pg.Tensor, object]:
        """A recent value more often than an old one (long chains and long-lived values both occur)."""
        n = len(self.values)
        return self.values[max(0, n - 1 - int(self.py.expovariate(0.3)))] if self.py.random() < 0.8 \
            else self.py.choice(self.values)

    def step(self) -> None:
        """Append one random op applied to existing values, with its NumPy meaning (values stay bounded)."""
        (a, fa), (b, fb) = self.pick(), self.pick()
        kind = self.py.choice(["unary", "unary", "binary", "binary", "row", "mul_mat", "view", "concat",
                               "reshape", "norm", "softmax", "cont"])
        if kind == "unary":
            op, ref = self.py.choice([(pg.tanh, np.tanh), (pg.neg, np.negative),
                                      (lambda t: pg.scale(t, 0.5, 0.25), lambda v: v * 0.5 + 0.25),
                                      (pg.silu, lambda v: v / (1 + np.exp(-v))),
                                      (lambda t: pg.clamp(t, -1.0, 1.0), lambda v: np.clip(v, -1, 1)),
                                      (pg.relu, lambda v: np.maximum(v, 0)),
                                      (lambda t: pg.exp(pg.neg(pg.sqr(t))), lambda v: np.exp(-v * v))])
            self.values.append((op(a), lambda env: ref(fa(env))))
        elif kind == "binary":  # add/sub halved, mul normalised: magnitudes stay bounded on long chains
            op, ref = self.py.choice([(pg.add, np.add), (pg.sub, np.subtract), (pg.mul, np.multiply)])
            if op is pg.mul:
                self.values.append((pg.rms_norm(op(a, b), 1e-5), lambda env: rms(ref(fa(env), fb(env)))))
            else:
                self.values.append((pg.scale(op(a, b), 0.5), lambda env: ref(fa(env), fb(env)) * 0.5))
        elif kind == "row":  # broadcast a row of b over a
            r = self.py.randrange(self.N)
            row = pg.view(pg.cont(b), (self.N,), offset=self.N * 4 * r)
            self.values.append((pg.scale(pg.add(a, row), 0.5), lambda env: (fa(env) + fb(env)[r]) * 0.5))
        elif kind == "mul_mat":
            self.values.append((pg.rms_norm(pg.mul_mat(a, b), 1e-5), lambda env: rms(fb(env) @ fa(env).T)))
        elif kind == "view":  # a transposed view, through permute or through explicit strides
            if self.py.random() < 0.5:
                self.values.append((pg.transpose(a), lambda env: fa(env).T))
            else:
                c = pg.cont(a)
                self.values.append((pg.view(c, (self.N, self.N), strides=(4, 4 * self.N)), lambda env: fa(env).T))
        elif kind == "concat":  # bottom half of a on top of the top half of b
            half = self.N // 2
            top = pg.view(pg.cont(a), (half, self.N), offset=half * self.N * 4)
            bottom = pg.view(pg.cont(b), (half, self.N))
            self.values.append((pg.concat(top, bottom, 0),
                                lambda env: np.concatenate([fa(env)[half:], fb(env)[:half]])))
        elif kind == "reshape":
            t = pg.reshape(pg.reshape(pg.cont(a), (2, self.N * self.N // 2)), (self.N, self.N))
            self.values.append((t, fa))
        elif kind == "norm":
            self.values.append((pg.rms_norm(a, 1e-5), lambda env: rms(fa(env))))
        elif kind == "softmax":
            self.values.append((pg.soft_max_ext(a, None, 0.7), lambda env: softmax(fa(env) * 0.7)))
        else:
            self.values.append((pg.cont(a), fa))

    def build(self, n_ops: int) -> tuple[list[pg.Tensor], list[object]]:
        """n_ops random ops, then 1-3 outputs: the last value and some random earlier ones."""
        for _ in range(n_ops):
            self.step()
        chosen = [self.values[-1]] + self.py.sample(self.values[4:-1], k=self.py.randrange(3))
        return [t for t, _ in chosen], [f for _, f in chosen]


@pytest.mark.parametrize("seed", range(40))
def test_random_dags_match_a_direct_evaluation(seed):
    graph = RandomGraph(seed)
    outputs, refs = graph.build(30)
    plan = pg.compile(outputs, pg.NumpyBackend())
    for run in range(2):  # the same plan with new inputs
        env = {f"in{i}": f32(graph.np, 6, 6) * 0.5 for i in range(3)}
        got = plan.run({t.name: env[t.name] for t in plan.graph.inputs})  # the inputs this graph reads
        wants = [ref({k: v.astype(np.float64) for k, v in env.items()}) for ref in refs]
        for g, w in zip(got, wants):
            w = np.asarray(w)
            assert g.shape == w.shape
            scale = max(1.0, float(np.abs(w).max()))
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * scale, err_msg=f"seed {seed} run {run}")


def test_random_dags_reuse_memory():
    graph = RandomGraph(1234)
    outputs, _ = graph.build(60)
    plan = pg.compile(outputs[:1], pg.NumpyBackend())
    owned = sum(n.nbytes for n in plan.graph.nodes if n in plan.slots)
    assert plan.arena_bytes < owned


# ---------------------------------------------------------------------------------------------- KV-cache pattern

@pytest.mark.parametrize("cache_type", [DType.F32, DType.F16])
def test_set_rows_then_a_view_sees_the_new_rows_and_later_plans_too(cache_type):
    rng = np.random.default_rng(5)
    held = np.float32 if cache_type == DType.F32 else np.float16
    backend = pg.NumpyBackend()
    cache = pg.new_tensor((8, 4), cache_type, "cache", Flag.PERSISTENT)
    rows, idx = pg.input_tensor((2, 4), name="rows"), pg.input_tensor((2,), DType.I64, "idx")
    written = pg.set_rows(cache, rows, idx)
    n_kv = 4
    kv = pg.view(written, (n_kv, 4))                      # rows 0..3 of the cache, after the write
    q = pg.input_tensor((1, 4), name="q")
    scores = pg.mul_mat(kv, q)                            # reads the cache through the view
    plan = pg.compile(scores, backend)
    want_cache = np.zeros((8, 4), held)
    for step, positions in enumerate(([0, 1], [2, 3])):  # two decode steps: the first rows stay
        new, qv = f32(rng, 2, 4), f32(rng, 1, 4)
        (got,) = plan.run({"rows": new, "idx": np.array(positions, np.int64), "q": qv})
        want_cache[positions] = new.astype(held)
        want = qv.astype(np.float64) @ want_cache[:n_kv].astype(np.float64).T
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")

    # a second plan on the same backend reads the cache directly: it sees what the first plan wrote
    reader = pg.compile(pg.cont(pg.view(cache, (8, 4))), backend)
    np.testing.assert_array_equal(reader.run()[0], want_cache)
    # and a third plan writes again, which the second plan sees on its next run
    more = pg.compile(pg.set_rows(cache, pg.input_tensor((1, 4), name="r"),
                                  pg.input_tensor((1,), DType.I32, "i")), backend)
    more.run({"r": np.full((1, 4), 3.0), "i": np.array([6], np.int32)})
    want_cache[6] = 3.0
    np.testing.assert_array_equal(reader.run()[0], want_cache)


def test_writes_listed_first_are_seen_by_views_of_the_cache_itself():
    """llama.cpp's pattern: the K write is expanded into the graph before the attention that reads the cache."""
    backend = pg.NumpyBackend()
    cache = pg.new_tensor((6, 2), DType.F32, "k_cache", Flag.PERSISTENT)
    write = pg.cpy(pg.input_tensor((1, 2), name="k"), pg.view(cache, (1, 2), offset=2 * 2 * 4))  # row 2
    read = pg.sum_rows(pg.view(cache, (3, 2)))  # rows 0..2 of the cache itself, not of the write
    plan = pg.compile([write, read], backend)
    got = plan.run({"k": np.array([[1.5, 2.0]], np.float32)})[1]
    np.testing.assert_array_equal(got, [[0.0], [0.0], [3.5]])


def test_a_fresh_backend_starts_with_a_fresh_cache():
    cache = pg.new_tensor((2, 2), DType.F32, "c", Flag.PERSISTENT)
    b1, b2 = pg.NumpyBackend(), pg.NumpyBackend()
    pg.compute(pg.set_rows(cache, pg.from_numpy(np.ones((1, 2), np.float32)),
                           pg.from_numpy(np.array([0], np.int32))), backend=b1)
    np.testing.assert_array_equal(pg.compute(pg.cont(cache), backend=b1), [[1, 1], [0, 0]])
    np.testing.assert_array_equal(pg.compute(pg.cont(cache), backend=b2), [[0, 0], [0, 0]])


def test_backend_forgets_leafs_no_graph_holds():
    """One-off graphs on a long-lived backend do not accumulate placed arrays."""
    backend = pg.NumpyBackend()
    for _ in range(3):
        pg.compute(pg.neg(pg.from_numpy(np.ones((64, 64), np.float32))), backend=backend)
    gc.collect()
    assert len(backend._placed[True]) == 0
    kept = pg.from_numpy(np.ones(4, np.float32))
    np.testing.assert_array_equal(pg.compute(pg.neg(kept), backend=backend), -np.ones(4))
    assert list(backend._placed[True]) == [kept]
