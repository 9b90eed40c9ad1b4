"""The example plugin installed into the running environment and found through the `pyggml.backends` entry point;
`pyggml backends` lists it, and says why unavailable backends are not."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyggml as pg
from conftest import F32_CACHE
from pyggml.backends import NumpyBackend, registry
from pyggml.cli import main
from pyggml.model.model import Model
from synthetic_llama import TinyLlama, make_weights, write_gguf

PLUGIN = Path(__file__).resolve().parent.parent / "examples" / "plugin_backend"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


@pytest.fixture(scope="session")
def plugin():
    """The example plugin, installed offline (no dependencies, no build isolation), uninstalled at the end."""
    done = subprocess.run([*PIP, "install", "--no-deps", "--no-build-isolation", "--no-index", str(PLUGIN)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    yield "mybackend"
    subprocess.run([*PIP, "uninstall", "-y", "pyggml-example-backend"], capture_output=True)


def test_registry_finds_and_creates_the_plugin(plugin):
    assert registry.available()[plugin] == "pyggml_example_backend:ExampleBackend"
    dev = registry.create(plugin)
    x = pg.from_numpy(np.arange(4, dtype=np.float32))
    np.testing.assert_allclose(pg.compute(pg.exp(pg.neg(x)), backend=dev), np.exp(-np.arange(4)), rtol=1e-6)
    assert dev.counts == {"neg": 1, "exp": 1}


def test_plugin_in_a_schedule_leaves_skipped_ops_to_the_fallback(plugin):
    dev = registry.create(plugin, skip=("exp",))
    plan = pg.backends.compile(pg.exp(pg.neg(pg.from_numpy(np.ones(4, np.float32)))), [dev, NumpyBackend()])
    plan.run()
    assert dev.counts == {"neg": 1} and [s.backend.name for s in plan.splits] == ["mybackend", "numpy"]


def test_plugin_kernels_run_a_model_with_the_numpy_fallback(plugin, tmp_path):
    cfg = TinyLlama()
    path = write_gguf(tmp_path / "tiny.gguf", cfg, make_weights(cfg))
    tokens = list(range(1, 9))
    dev = registry.create(plugin)
    got = Model(path, n_ctx=32, backend=[dev, NumpyBackend()], **F32_CACHE).eval(tokens, all_logits=True)
    want = Model(path, n_ctx=32, backend=NumpyBackend(), **F32_CACHE).eval(tokens, all_logits=True)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert {"mul_mat", "rms_norm", "mul", "add"} <= set(dev.counts) and "rope" not in dev.counts


def test_cli_lists_backends_and_reasons(plugin, capsys):
    assert main(["backends"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "available" in lines["numpy"].split()[1] and plugin in lines
    assert "testdevice" not in lines  # a test fixture, not a user-visible backend
    reason = registry.probe()["cupy"]
    assert ("unavailable" in lines["cupy"]) == (reason is not None)
