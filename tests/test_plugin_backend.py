"""The example plugin installed into the running environment and found through the `pyggml.backends` entry point;
`pyggml backends` lists it, and says why unavailable backends are not."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyggml as pg
from pyggml.backends import NumpyBackend, registry
from pyggml.cli import main

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


def test_cli_lists_backends_and_reasons(plugin, capsys):
    assert main(["backends"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "available" in lines["numpy"].split()[1] and plugin in lines
    assert lines["testdevice"].split()[1] == "available"
    reason = registry.probe()["cupy"]
    assert ("unavailable" in lines["cupy"]) == (reason is not None)
