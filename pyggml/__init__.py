"""pyggml: a lazy computation-graph runtime modelled on ggml, with GGUF LLM inference.

Ops record nodes; `compute` or `compile(...).run()` executes them on a backend.
"""
from pyggml.backends import Backend, NumpyBackend, Plan, compile, compute, create as create_backend
from pyggml.graph.dtypes import DType
from pyggml.graph.errors import PyggmlError, ShapeError
from pyggml.graph.graph import Graph
from pyggml.graph.tensor import Flag, Tensor, from_numpy, input_tensor, new_tensor
from pyggml.ops import *  # noqa: F401,F403  (the op vocabulary: mul_mat, rms_norm, rope, ...)
from pyggml.ops import OPS

__all__ = ["Backend", "DType", "Flag", "Graph", "NumpyBackend", "Plan", "PyggmlError", "ShapeError", "Tensor",
           "compile", "compute", "create_backend", "from_numpy", "input_tensor", "load", "new_tensor", "OPS",
           *OPS]


def load(path_or_name, **options):
    """Load a GGUF model by path or known name (pulled on first use); see pyggml.model.model.Model."""
    from pyggml.model.model import load as _load
    return _load(path_or_name, **options)
