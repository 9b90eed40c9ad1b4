"""Graph dumps: the text table (golden), Graphviz DOT, JSON round trip, rendering through `dot`."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

import pyggml as pg
from pyggml import DType, Graph, PyggmlError
from pyggml.graph import dump
from test_graph import small_graph


GOLDEN_TEXT = """\
kind  #  name    op       shape   dtype  sources
leaf  0  leaf_0  const    [4, 3]  F32
leaf  1  x       input    [2, 3]  F32
leaf  2  bias    const    [4]     F32
node  0  node_0  mul_mat  [2, 4]  F32    leaf_0, x
node  1  node_1  add      [2, 4]  F32    node_0, bias
node  2  node_2  silu     [2, 4]  F32    node_1
node  3  out     mul      [2, 4]  F32    node_2, node_1
"""


def test_text_table_golden():
    g, _ = small_graph()
    assert g.to_text() == GOLDEN_TEXT


def test_dot_records_and_source_slot_edges():
    g, t = small_graph()
    dot = g.to_dot()
    assert dot.startswith("digraph G {") and dot.rstrip().endswith("}")
    assert dot.count("shape = record") == len(g.nodes) + len(g.leafs)
    assert f'"t{t["mm"].id}" [style = filled; fillcolor = white; shape = record; ' \
           f'label="node_0 | mul_mat | [2, 4] F32"];' in dot
    assert 'label="<x>x | [2, 3] F32"' in dot and "fillcolor = lightblue" in dot  # the input leaf
    assert 'label="<x>bias | [4] F32"' in dot and "fillcolor = pink" in dot      # a constant leaf
    edge = '  "t{}" -> "t{}" [ arrowhead = vee; style = solid; label = "src{}"; ]'
    for src, dst, slot in [("w", "mm", 0), ("x", "mm", 1), ("mm", "h", 0), ("b", "h", 1), ("s", "out", 0),
                           ("h", "out", 1), ("h", "s", 0)]:
        assert edge.format(t[src].id, t[dst].id, slot) in dot
    assert dot.count("->") == 7


def test_dot_escapes_record_characters_in_names():
    a = pg.input_tensor((2,), name="a|b{c}<d>")
    assert r'a\|b\{c\}\<d\>' in Graph.build(pg.neg(a)).to_dot()


def attention_graph() -> Graph:
    """A graph with views, permutes, params of several kinds, flags and a write into a persistent tensor."""
    x = pg.input_tensor((3, 8), name="x")
    wq = pg.from_numpy(np.zeros((8, 8), np.float32), flags=pg.Flag.WEIGHT).set_name("wq")
    cache = pg.new_tensor((6, 8), DType.F16, "cache", pg.Flag.PERSISTENT)
    pos = pg.input_tensor((3,), DType.I32, "pos")
    q = pg.rope(pg.reshape(pg.mul_mat(wq, pg.rms_norm(x, 1e-6)), (3, 2, 4)), pos, 4, pg.ROPE_NEOX, 500.0)
    k = pg.set_rows(cache, x, pg.input_tensor((3,), DType.I64, "idx"))
    kv = pg.view(k, (2, 6, 4), strides=(8, 16, 2), offset=0)
    scores = pg.soft_max_ext(pg.mul_mat(kv, pg.permute(q, 1, 0, 2)), None, 0.5, 0.0)
    return Graph.build(pg.sum_rows(scores).set_flag(pg.Flag.OUTPUT))


def structure(g: Graph) -> list[tuple]:
    """Everything but ids and data: per tensor its kind, label, op, shape, dtype, flags, params, sources, view."""
    where = {id(t): ("leaf", i) for i, t in enumerate(g.leafs)} | {id(t): ("node", i) for i, t in enumerate(g.nodes)}
    rows = []
    for t in g.leafs + g.nodes:
        view = (where[id(t.view_src)], t.view_offset, t.strides) if t.view_src is not None else None
        rows.append((where[id(t)], g.label(t), t.op, t.shape, t.dtype, t.flags, t.params,
                     [where[id(s)] for s in t.srcs], view))
    return rows


def test_json_round_trip_rebuilds_the_structure():
    g = attention_graph()
    back = Graph.from_json(g.to_json())
    assert structure(back) == structure(g)
    assert [back.label(t) for t in back.outputs] == [g.label(t) for t in g.outputs]
    assert all(t.data is None for t in back.leafs)
    assert back.to_json() != "" and structure(Graph.from_json(back.to_json())) == structure(g)


def test_json_round_trip_graph_computes_the_same():
    rng = np.random.default_rng(3)
    a = pg.input_tensor((2, 3), name="a")
    out = pg.soft_max_ext(pg.scale(pg.cont(pg.transpose(a)), 2.0), None, 0.5)
    back = Graph.from_json(Graph.build(out).to_json())
    value = rng.standard_normal((2, 3)).astype(np.float32)
    want = pg.compile(out).run({"a": value})[0]
    got = pg.Plan(back, pg.NumpyBackend()).run({"a": value})[0]
    np.testing.assert_array_equal(got, want)


def test_from_json_rejects_other_documents():
    with pytest.raises(PyggmlError, match="not a pyggml graph"):
        Graph.from_json('{"format": "something-else"}')


def test_render_says_clearly_when_graphviz_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(dump.shutil, "which", lambda name: None)
    g, _ = small_graph()
    with pytest.raises(PyggmlError, match="Graphviz"):
        g.render(str(tmp_path / "g.svg"))
    assert not (tmp_path / "g.svg").exists()


def test_render_runs_dot_with_the_format_of_the_suffix(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "dot"  # a stand-in for Graphviz: records its arguments, copies stdin to -o
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\nout="$3"\ncat > "$out"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    g, _ = small_graph()
    target = tmp_path / "graph.png"
    assert g.render(str(target)) == str(target)
    assert (fake.parent / "args").read_text().split() == ["-Tpng", "-o", str(target)]
    assert Path(target).read_text() == g.to_dot()
