"""`pyggml bench`, its KV-cache study and `pyggml profile`: JSON against schemas, byte accounting, timing sums."""
from __future__ import annotations

import csv
import io
import json
import sys

import jsonschema
import numpy as np
import pytest

from chat_llama import CFG, write_chat_llama
from pyggml.cli import main
from pyggml.model.tooling.kv_study import Fit
from pyggml.backends import NumpyBackend, Scheduler, default_backend, registry
from pyggml.backends.numba.backend import NumbaBackend
from pyggml.graph.dtypes import nbytes as tensor_nbytes
from fake_device import TestDevice
from pyggml.model.model import Model
from pyggml.model.tooling.profile import chrome_trace, memory_plan, profile_model
from synthetic_llama import make_weights

NUM, INT, STR, BOOL = {"type": "number"}, {"type": "integer", "minimum": 0}, {"type": "string"}, {"type": "boolean"}


def obj(**props) -> dict:
    """A schema of an object that must have exactly these properties."""
    return {"type": "object", "required": list(props), "properties": props, "additionalProperties": False}


def arr(items: dict, min_items: int = 0) -> dict:
    return {"type": "array", "items": items, "minItems": min_items}


BENCH_SCHEMA = obj(
    model=STR, backend=STR, repetitions=INT,
    bounds=obj(weight_bytes=INT, dense_bytes=INT, n_matvecs=INT, matvec_ms=NUM, matvec_tokens_per_second=NUM,
               matvec_gb_per_s=NUM, copy_gb_per_s=NUM, bandwidth_tokens_per_second=NUM),
    results=arr(obj(test=STR, n_prompt=INT, n_gen=INT, samples_ts=arr(NUM, 1), avg_ts=NUM, stddev_ts=NUM,
                    weight_bytes_per_token=NUM, gb_per_s=NUM, ratio_matvec_bound=NUM, ratio_copy_bandwidth=NUM), 1))
FIT = {**obj(a=NUM, b=NUM, r2=NUM, n_left_out=INT), "properties": {"a": NUM, "b": NUM, "c": NUM, "r2": NUM,
                                                                  "n_left_out": INT}}
CURVE = obj(step_ms=arr(NUM, 4), total_s=NUM, fit=FIT)
STUDY_SCHEMA = obj(
    model=STR, n_prompt=INT, n_tokens=INT, identical=BOOL, tokens=obj(cached=arr(INT), uncached=arr(INT)),
    positions=arr(INT), curves=obj(cached=CURVE, uncached=CURVE), speedups=arr(obj(tokens=INT, speedup=NUM), 1),
    kv_type=STR, kv_bytes_per_token=obj(**{k: obj(n_kv_head=INT, bytes=INT) for k in ("MHA", "GQA", "MQA")}),
    plot={"type": ["string", "null"]})
TOTAL = obj(name=STR, op=STR, backend=STR, count=INT, ms=NUM, share=NUM, bytes_read=INT, bytes_written=INT,
            gb_per_s=NUM, gflop_per_s=NUM)
NODE = obj(name=STR, op=STR, backend=STR, start_ms=NUM, ms=NUM, bytes_read=INT, bytes_written=INT, flops=INT,
           srcs=arr(obj(name=STR, bytes=INT)))
STEP = obj(step={"enum": ["prefill", "decode"]}, n_tokens=INT, n_past=INT, wall_ms=NUM, nodes_ms=NUM, copies_ms=NUM,
           n_nodes=INT, backends=arr(STR, 1),
           copies=arr(obj(name=STR, src=STR, dst=STR, bytes=INT, start_ms=NUM, ms=NUM)), ops=arr(TOTAL, 1),
           slowest=arr(TOTAL), nodes=arr(NODE, 1))
PROFILE_SCHEMA = obj(model=STR, steps=arr(STEP, 2), files=arr(STR))
TRACE_SCHEMA = {"type": "object", "required": ["traceEvents"], "properties": {"traceEvents": arr({"oneOf": [
    obj(name=STR, cat=STR, ph={"const": "X"}, ts=NUM, dur=NUM, pid=INT, tid=INT, args={"type": "object"}),
    obj(ph={"const": "M"}, name={"enum": ["process_name", "thread_name"]}, pid=INT, tid=INT,
        args=obj(name=STR))]}, 1)}}
SLOT = obj(id=INT, name=STR, buffer=STR, offset=INT, size=INT, first=INT, last=INT,
           inplace_of={"type": ["string", "null"]})
MEMORY_SCHEMA = obj(buffers=arr(obj(name=STR, backend=STR, bytes=INT), 1), slots=arr(SLOT, 1))
WEIGHTS = make_weights(CFG)
PER_NODE_BOOKKEEPING_S = 10e-6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(write_chat_llama(tmp_path_factory.mktemp("cli") / "chat-llama.gguf"))


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `pyggml ARGV`."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_json(capsys, schema: dict, *argv: str) -> dict:
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    doc = json.loads(out)
    jsonschema.validate(doc, schema)
    return doc


def test_bench_json_reports_tests_bounds_and_weight_bytes(tiny, capsys):
    doc = cli_json(capsys, BENCH_SCHEMA, "bench", tiny, "-p", "8", "-n", "4", "-r", "2", "-o", "json")
    pp, tg = doc["results"]
    assert (pp["test"], tg["test"]) == ("pp8", "tg4") and len(tg["samples_ts"]) == 2
    matrices = [w for w in WEIGHTS.values() if w.ndim == 2]  # the tied embedding is the output head
    assert doc["bounds"]["weight_bytes"] == tg["weight_bytes_per_token"] == sum(w.nbytes for w in matrices)
    assert doc["bounds"]["n_matvecs"] == len(matrices)
    assert tg["gb_per_s"] == pytest.approx(tg["weight_bytes_per_token"] * tg["avg_ts"] / 1e9)


def test_bench_markdown_and_csv(tiny, capsys):
    code, out, _ = cli(capsys, "bench", tiny, "-p", "4", "-n", "2", "-r", "1")
    assert code == 0 and f"| {tiny} | {default_backend().name} | pp4 |" in out and "bare bounds" in out
    code, out, _ = cli(capsys, "bench", tiny, "-p", "4", "-n", "2", "-r", "1", "-o", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["test"] for r in rows] == ["pp4", "tg2"] and float(rows[1]["avg_ts"]) > 0


def test_kv_study_tokens_identical_with_and_without_cache(tiny, capsys, tmp_path):
    plot = tmp_path / "kv.png"
    doc = cli_json(capsys, STUDY_SCHEMA, "bench", tiny, "--kv-study", "12", "--prompt", "abc", "-o", "json",
                   "--plot", str(plot), "-ctk", "f32", "-ctv", "f32")  # an F32 cache: the same as no cache
    assert doc["tokens"]["cached"] == doc["tokens"]["uncached"] and len(doc["tokens"]["cached"]) == 12
    assert doc["identical"] and doc["n_prompt"] == 3 and doc["positions"] == list(range(3, 14))
    assert [s["tokens"] for s in doc["speedups"]] == [12] and doc["kv_type"] == "F32/F32"
    head_dim, itemsize = CFG.head_dim, 4
    assert doc["kv_bytes_per_token"]["GQA"] == {"n_kv_head": CFG.n_head_kv,
                                                "bytes": 2 * CFG.n_layer * CFG.n_head_kv * head_dim * itemsize}
    assert doc["plot"] is None or plot.stat().st_size > 0


def test_kv_study_without_matplotlib_says_how_to_get_the_plot(tiny, capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = cli(capsys, "bench", tiny, "--kv-study", "5", "--prompt", "ab", "--plot", str(tmp_path / "p.png"))
    assert code == 0 and "| 5 |" in out and "a + b·p + c·p²" in out and "GQA (2 KV heads)" in out
    assert err.strip() == "plot: pip install 'pyggml[plot]' to draw it" and not (tmp_path / "p.png").exists()


def test_profile_json_trace_and_graph(tiny, capsys, tmp_path):
    trace, graph = tmp_path / "trace.json", tmp_path / "step"
    doc = cli_json(capsys, PROFILE_SCHEMA, "profile", tiny, "-p", "64", "--json", "--top", "3",
                   "--trace", str(trace), "--graph", str(graph))
    prefill, decode = doc["steps"]
    assert (prefill["n_tokens"], decode["n_tokens"], decode["n_past"]) == (64, 1, 64)
    assert abs(prefill["nodes_ms"] + prefill["copies_ms"] - prefill["wall_ms"]) <= 0.1 * prefill["wall_ms"]
    for step in doc["steps"]:
        assert sum(o["count"] for o in step["ops"]) == step["n_nodes"] == len(step["nodes"])
        assert sum(n["ms"] for n in step["nodes"]) == pytest.approx(step["nodes_ms"])
        assert len(step["slowest"]) == 3 and step["copies"] == [] and step["backends"] == [default_backend().name]
        matvecs = [n for n in step["nodes"] if n["op"] == "mul_mat" and n["srcs"][0]["name"] in WEIGHTS]
        assert len(matvecs) == len([w for w in WEIGHTS.values() if w.ndim == 2])
        for node in matvecs:
            assert node["srcs"][0]["bytes"] == WEIGHTS[node["srcs"][0]["name"]].nbytes
            assert node["bytes_read"] == sum(s["bytes"] for s in node["srcs"])
    events = json.loads(trace.read_text())
    jsonschema.validate(events, TRACE_SCHEMA)
    assert sum(e["ph"] == "X" for e in events["traceEvents"]) == prefill["n_nodes"] + decode["n_nodes"]
    memory = json.loads(graph.with_suffix(".json").read_text())
    jsonschema.validate(memory["memory"], MEMORY_SCHEMA)
    assert memory["format"] == "pyggml-graph/1" and len(memory["nodes"]) >= len(memory["memory"]["slots"])
    dot = graph.with_suffix(".dot").read_text()
    assert dot.startswith("digraph") and "xlabel" in dot and dot.rstrip().endswith("}")


def test_profile_text_tables(tiny, capsys):
    code, out, _ = cli(capsys, "profile", tiny, "-p", "8", "--top", "2")
    assert code == 0 and out.count("## ") == 2 and out.count("slowest 2 nodes") == 2
    assert "copies between backends: none" in out and "| mul_mat | mul_mat |" in out


def test_profile_decode_of_a_real_model(smollm2):
    """SmolLM2's decode step: node times add up to the run's wall time; each mat-vec reads its weight as the
    backend holds it (the GGUF blocks on the numba backend, F32 on the NumPy backend)."""
    _, decode = profile_model(smollm2, 8)
    # the profiled loop's own bookkeeping (two clock reads and an append per node) is not in any node's time
    bookkeeping = PER_NODE_BOOKKEEPING_S * len(decode.nodes)
    assert abs(decode.node_seconds + decode.copy_seconds - decode.wall_seconds) <= 0.1 * decode.wall_seconds + bookkeeping
    matvecs = [n for n in decode.nodes if n.op == "mul_mat" and n.reads[0][0] in smollm2.gguf.tensors]
    assert len(matvecs) == 1 + 7 * smollm2.hparams.n_layer
    for node in matvecs:
        name, nbytes = node.reads[0]
        info = smollm2.gguf.tensors[name]
        stored = tensor_nbytes(info.shape, info.dtype) if isinstance(smollm2.backend, NumbaBackend) else \
            4 * int(np.prod(info.shape))
        assert nbytes == stored


@pytest.mark.parametrize("command", ["bench", "profile", "chat", "generate"])
def test_bad_flag_and_missing_model_give_one_line(command, tiny, capsys, tmp_path):
    extra = ["hello"] if command == "generate" else []
    code, out, err = cli(capsys, command, tiny, *extra, "--no-such-flag")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    code, out, err = cli(capsys, command, str(tmp_path / "missing.gguf"), *extra)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and "missing.gguf" in err


@pytest.mark.parametrize("argv", [["-r", "0"], ["-p", "-1"], ["--kv-study", "2"], ["-o", "xml"], ["-p", "0", "-n", "0"]])
def test_bench_rejects_bad_values(argv, tiny, capsys):
    code, _, err = cli(capsys, "bench", tiny, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_kv_study_fit_leaves_out_stalls():
    x = np.arange(100.0)
    y = 0.01 + 1e-4 * x + 1e-6 * x ** 2
    y[[10, 50, 51]] += 1.0  # another process had the CPU
    fit = Fit.of(x, y, 2)
    assert fit.n_left_out == 3 and np.allclose(fit.coefficients, [0.01, 1e-4, 1e-6]) and fit.r2 == pytest.approx(1)


def test_profile_over_two_backends_reports_copies(tiny):
    model = Model(tiny, n_ctx=256, backend=Scheduler([TestDevice(unsupported={"rope"}), NumpyBackend()]))
    profiles = profile_model(model, 8)
    for prof in profiles:
        step = prof.to_dict()
        assert step["backends"] == ["numpy", "testdevice"] and {n["backend"] for n in step["nodes"]
                                                                 if n["op"] == "rope"} == {"numpy"}
        assert len(step["copies"]) == 4 * CFG.n_layer and {(c["src"], c["dst"]) for c in step["copies"]} == {
            ("testdevice", "numpy"), ("numpy", "testdevice")}
        assert all(c["bytes"] > 0 for c in step["copies"])
    events = chrome_trace(profiles)["traceEvents"]
    assert sum(e["ph"] == "X" and e["cat"] == "copy" for e in events) == 2 * 4 * CFG.n_layer
    assert {b["backend"] for b in memory_plan(profiles[-1].plan)["buffers"]} == {"numpy", "testdevice"}


def test_backend_option_picks_backends_and_bench_reports_those_used(tiny, capsys, monkeypatch):
    monkeypatch.setitem(registry.BUILTIN, "testdevice", "fake_device:TestDevice")  # the fixture, for this test
    doc = cli_json(capsys, BENCH_SCHEMA, "bench", tiny, "-p", "4", "-n", "2", "-r", "1", "-o", "json",
                   "--backend", "testdevice,numpy")
    assert doc["backend"] == "testdevice"  # it supports every op: the fallback is never used
    code, out, _ = cli(capsys, "bench", tiny, "-p", "4", "-n", "1", "-r", "1", "--backend", "numpy")
    assert code == 0 and f"| {tiny} | numpy | pp4 |" in out
    steps = cli_json(capsys, PROFILE_SCHEMA, "profile", tiny, "-p", "4", "--json", "--backend", "testdevice")["steps"]
    assert all(step["backends"] == ["testdevice"] for step in steps)
    code, _, err = cli(capsys, "generate", tiny, "ab", "-n", "2", "--backend", "numpy,nope")
    assert code == 2 and "unknown backend nope; available: numba, numba-q8, numpy" in err


def test_generate_n_minus_one_runs_to_eos_or_a_full_context_and_other_negatives_are_errors(tiny, capsys):
    code, out, err = cli(capsys, "generate", tiny, "abc", "-n", "-3")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "-3" in err
    code, out, err = cli(capsys, "generate", tiny, "abc", "-n", "-1", "--temp", "0", "-c", "16", "--stats")
    want = Model(tiny, n_ctx=16).generate("abc", max_tokens=16, temperature=0)
    assert code == 0 and f"generated: {len(want.tokens)} tokens" in err
    assert want.finish_reason == "stop" or len(want.tokens) == 16 - len(Model(tiny, n_ctx=16).tokenize("abc"))
