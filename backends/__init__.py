"""Backends: the Backend interface, the registry, the NumPy backend, plans and the scheduler."""
from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import numpy as np

from pyggml.graph.graph import Graph
from pyggml.graph.tensor import Tensor

from .base import Backend
from .numpy.backend import NumpyBackend
from .plan import Plan
from .registry import available, create
from .scheduler import Scheduler

# what `compile` and Model(backend=...) accept: one backend, a scheduler, or backends in priority order
BackendSpec = Backend | Scheduler | Sequence[Backend]

_default: Backend | None = None


def default_backend() -> Backend:
    """The process-wide backend used when none is given: numba-q8 (quantized weights read as blocks, activations
    rounded to 8 bits as llama.cpp's CPU backend does), or the NumPy backend, said in one line, where numba does
    not import."""
    global _default
    if _default is None:
        try:
            from .numba.backend import NumbaQ8Backend
            _default = NumbaQ8Backend()
        except ImportError as e:
            print(f"pyggml: numba is not available ({e}); using the NumPy backend (dense F32 weights)",
                  file=sys.stderr)
            _default = NumpyBackend()
    return _default


def compile(outputs: Tensor | Iterable[Tensor], backend: BackendSpec | None = None) -> Plan:  # noqa: A001
    """Build the graph of the outputs and compile it into a reusable plan (scheduled over several backends
    when given a Scheduler or a list of backends)."""
    if isinstance(backend, Sequence):
        backend = Scheduler(backend)
    return Plan(Graph.build(outputs), backend or default_backend())


def compute(*outputs: Tensor, backend: BackendSpec | None = None) -> np.ndarray | list[np.ndarray]:
    """Compute tensors now and return their values (one array, or a list for several)."""
    values = compile(list(outputs), backend).run()
    return values[0] if len(outputs) == 1 else values


__all__ = ["Backend", "BackendSpec", "NumpyBackend", "Plan", "Scheduler", "available", "compile", "compute", "create", "default_backend"]
