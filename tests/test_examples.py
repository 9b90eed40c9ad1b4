"""The foundation examples run and print what they promise."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

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
