"""Graph.build: depth-first topological order, leafs apart from nodes, automatic names, shared sources once."""
from __future__ import annotations

import numpy as np
import pytest

import pyggml as pg
from pyggml import Graph


def small_graph() -> tuple[Graph, dict[str, pg.Tensor]]:
    """out = silu(mul_mat(w, x) + bias) * (mul_mat(w, x) + bias): a diamond on the add."""
    w = pg.from_numpy(np.zeros((4, 3), np.float32))
    x = pg.input_tensor((2, 3), name="x")
    b = pg.from_numpy(np.zeros((4,), np.float32)).set_name("bias")
    mm = pg.mul_mat(w, x)
    h = pg.add(mm, b)
    s = pg.silu(h)
    out = pg.mul(s, h).set_name("out")
    return Graph.build(out), dict(w=w, x=x, b=b, mm=mm, h=h, s=s, out=out)


def test_leafs_and_nodes_in_depth_first_order():
    g, t = small_graph()
    assert g.leafs == [t["w"], t["x"], t["b"]]
    assert g.nodes == [t["mm"], t["h"], t["s"], t["out"]]
    assert g.outputs == [t["out"]]
    assert g.inputs == [t["x"]]
    assert len(g) == 4


def test_automatic_names_unless_set():
    g, t = small_graph()
    assert [g.label(x) for x in g.leafs] == ["leaf_0", "x", "bias"]
    assert [g.label(x) for x in g.nodes] == ["node_0", "node_1", "node_2", "out"]
    assert g.find("node_1") is t["h"] and g.find("leaf_0") is t["w"] and g.find("out") is t["out"]
    with pytest.raises(KeyError):
        g.find("nope")


def test_a_shared_source_is_built_once_and_before_every_reader():
    a = pg.input_tensor((3,), name="a")
    top = pg.neg(a)
    left, right = pg.exp(top), pg.tanh(top)
    bottom = pg.add(pg.mul(left, right), pg.add(left, top))
    g = Graph.build(bottom)
    assert g.leafs == [a]
    assert len(g.nodes) == len({id(n) for n in g.nodes}) == 6
    position = {id(n): i for i, n in enumerate(g.nodes)}
    for node in g.nodes:
        for src in node.srcs:
            if not src.is_leaf:
                assert position[id(src)] < position[id(node)]
    assert g.nodes[0] is top


def test_several_outputs_in_order_and_shared_parts_once():
    a = pg.input_tensor((3,), name="a")
    shared = pg.exp(a)
    first, second = pg.neg(shared), pg.sqr(shared)
    g = Graph.build([second, first])
    assert g.nodes == [shared, second, first]
    assert g.outputs == [second, first]


def test_a_view_depends_on_the_tensor_owning_its_storage():
    a = pg.input_tensor((4, 4), name="a")
    e = pg.exp(a)
    v = pg.transpose(pg.view(e, (2, 4), offset=32))
    g = Graph.build(pg.cont(v))
    assert g.nodes[0] is e and v.view_src is e and v.view_offset == 32
    assert [n.op for n in g.nodes] == ["exp", "view", "permute", "cont"]


def test_a_write_into_a_persistent_tensor_depends_on_it():
    cache = pg.new_tensor((8, 4), name="cache", flags=pg.Flag.PERSISTENT)
    rows = pg.set_rows(cache, pg.input_tensor((2, 4), name="src"), pg.input_tensor((2,), pg.DType.I32, "idx"))
    g = Graph.build(rows)
    assert g.leafs == [cache, g.find("src"), g.find("idx")] and g.nodes == [rows]
    assert rows.view_src is cache


def test_a_long_chain_builds_without_recursion():
    t = pg.input_tensor((2,), name="a")
    for _ in range(20000):
        t = pg.neg(t)
    assert len(Graph.build(t)) == 20000


def test_ops_record_without_computing():
    a = pg.from_numpy(np.ones((2, 2), np.float32))
    node = pg.add(a, a)
    assert node.op == "add" and node.data is None and node.srcs == (a, a)
    assert node.shape == (2, 2) and node.dtype == pg.DType.F32 and not node.is_leaf
    assert pg.scale(a, 2.0, 0.5).params == {"s": 2.0, "bias": 0.5}
