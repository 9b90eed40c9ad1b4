"""The foundation examples run and print what they promise."""
from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import pyggml
from chat_llama import write_chat_llama

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run an example script with this interpreter; return its stdout (it must exit 0)."""
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_simple_mul_mat_prints_ggml_values():
    out = run_example("simple_mul_mat.py")
    assert "mul_mat" in out and "result" in out  # the graph table
    assert out.endswith("mul mat (4 x 3) (transposed result):\n"
                        "[ 60.00 55.00 50.00 110.00\n"
                        " 90.00 54.00 54.00 126.00\n"
                        " 42.00 29.00 28.00 64.00 ]\n")


def test_dump_graph_writes_dot_and_says_when_dot_is_missing(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path / "empty-bin"))  # no Graphviz on this PATH
    out = run_example("dump_graph.py", str(tmp_path / "attn.dot"), env=env)
    dot = (tmp_path / "attn.dot").read_text()
    assert dot.startswith("digraph G {")
    for label in ("rms_norm", "mul_mat", "rope", "soft_max_ext", "kq | mul_mat", "kqv | mul_mat"):
        assert label in dot
    assert "SVG not written" in out and "Graphviz" in out
    assert not (tmp_path / "attn.svg").exists()


def test_dump_graph_renders_svg_when_dot_is_present(tmp_path):
    fake = tmp_path / "bin" / "dot"  # a stand-in for Graphviz that writes a minimal SVG to -o
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\ncat > /dev/null\necho "<svg/>" > "$3"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PATH=f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = run_example("dump_graph.py", env=env, cwd=tmp_path)  # default path: graph.dot
    assert (tmp_path / "graph.dot").exists() and (tmp_path / "graph.svg").read_text() == "<svg/>\n"
    assert "wrote graph.svg" in out


def _load_example(name: str):
    """An example script imported as a module."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mix", ["q4_0", "q8_0", "q4_k_m"])
def test_synthetic_gguf_has_the_shapes_asked_for_and_runs(mix, tmp_path):
    """The real-size writer, on a small shape: every matrix of its list with llama.cpp's type for it, values of
    about unit norm per sqrt(K) centred on 0, merges that make tokens of the vocabulary, and a model that loads
    and gives finite logits."""
    synthetic = _load_example("synthetic_gguf")
    shape = synthetic.Shape(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_vocab=600, tied=False)
    synthetic.write(tmp_path / "s.gguf", shape, mix)
    model = pyggml.load(tmp_path / "s.gguf")
    tensors = model.gguf.tensors
    assert {name: tuple(tensors[name].shape) for name, _ in synthetic.matrices(shape)} == dict(synthetic.matrices(shape))
    types = {name: tensors[name].dtype.name for name, _ in synthetic.matrices(shape)}
    if mix == "q4_k_m":  # with 2 layers llama.cpp's use_more_bits picks layer 1 (il >= 7n/8)
        more = {"output.weight", "blk.1.attn_v.weight", "blk.1.ffn_down.weight"}
        assert types == {name: "Q6_K" if name in more else "Q4_K" for name in types}
    else:
        assert set(types.values()) == {mix.upper()}
    down = gguf.dequantize(np.asarray(model.gguf.tensor_data("blk.0.ffn_down.weight")), tensors[
        "blk.0.ffn_down.weight"].dtype)
    assert abs(down.std() * np.sqrt(shape.n_ff) - 1) < 0.1 and abs(down.mean()) < 0.15 * down.std()  # Q4_0: -0.5 d
    tokens = set(model.gguf.metadata["tokenizer.ggml.tokens"])
    merges = model.gguf.metadata["tokenizer.ggml.merges"]
    assert merges and all(m.replace(" ", "") in tokens for m in merges)
    assert np.isfinite(model.eval([1, 2, 3])).all()


def test_bench_matvec_prints_a_row_per_type_and_row_count():
    out = run_example("bench_matvec.py", "--types", "Q4_0", "Q6_K", "--rows", "1", "8", "--shape", "64", "256",
                      "-r", "1", cwd=EXAMPLES)
    rows = [line.split(" | ")[:2] for line in out.splitlines() if line.startswith("| Q")]
    assert rows == [["| Q4_0", "1"], ["| Q4_0", "8"], ["| Q6_K", "1"], ["| Q6_K", "8"]]


def test_bench_batch_prints_rates_and_weight_products(tmp_path):
    synthetic = _load_example("synthetic_gguf")
    path = tmp_path / "s.gguf"
    synthetic.write(path, synthetic.Shape(n_layer=2, n_embd=64, n_ff=96, n_head=4, n_head_kv=2, n_vocab=300,
                                          tied=False), "q8_0")
    args = ("--model", str(path), "--batches", "1", "3", "--ctx", "64", "-r", "1")
    out = run_example("bench_batch.py", *args, "--tokens", "3", cwd=EXAMPLES)
    assert [line.split(" | ")[0] for line in out.splitlines() if line[:3] in ("| 1", "| 3")] == ["| 1", "| 3"]
    assert "KV memory of 16 sequences" in out and "paged" in out
    out = run_example("bench_batch.py", *args, "--weights", cwd=EXAMPLES)
    rows = [line.split(" | ") for line in out.splitlines() if line[:3] in ("| 1", "| 3")]
    assert [r[0] for r in rows] == ["| 1", "| 3"] and rows[0][2] == "1.00x"
    out = run_example("bench_batch.py", *args, "--tokens", "2", "--ops", cwd=EXAMPLES)
    cells = {line.split(" | ")[0]: line.split(" | ")[1:] for line in out.splitlines() if line.startswith("| ")}
    assert "| weight products" in cells and "| all ops" in cells and len(cells["| all ops"]) == 2


def test_generate_runs_on_the_backend_asked_for(tmp_path):
    """The main job's script: the fastest backend by default, another by name, one line for an unknown one."""
    synthetic = _load_example("synthetic_gguf")
    path = tmp_path / "s.gguf"
    synthetic.write(path, synthetic.Shape(n_layer=1, n_embd=64, n_ff=96, n_head=4, n_head_kv=2, n_vocab=300,
                                          tied=False), "q8_0")
    texts = [run_example("generate.py", "--model", str(path), "ab", "-n", "4", *backend, cwd=EXAMPLES)
             for backend in ([], ["--backend", "numba"])]
    assert all(text.startswith("ab") for text in texts)
    done = subprocess.run([sys.executable, str(EXAMPLES / "generate.py"), "--model", str(path), "--backend", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "unknown backend 'nope'" in done.stderr


def test_bench_grammar_prints_mask_costs(tmp_path):
    path = write_chat_llama(tmp_path / "chat.gguf", n_ctx=512)
    out = run_example("bench_grammar.py", "--model", str(path), "--batches", "1", "2", "--tokens", "3",
                      cwd=EXAMPLES).splitlines()
    assert "vocabulary 258" in out[0] and out[1].startswith("compile a new schema")
    assert [line.split(" ")[0] for line in out[2:]] == ["1", "2"] and all("masks" in line for line in out[2:])
