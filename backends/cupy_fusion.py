"""Fusion of the CuPy backend: RMSNorm with its weight (the model's rms_norm_w) as one step.

While a plan compiles, the backend notes each F32 rms_norm's input and, for a mul of such a norm by a 1-D weight,
prepares the fused step reading the norm's input. When the plan is sequenced, a norm read only by that mul and
run just before it (so that its input is still there) loses its step, and the mul's step becomes the fused one.
"""
from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from pyggml.graph.graph import Graph
from pyggml.graph.tensor import Tensor

from .base import Step
from .memory_plan import storage_owner
from .numpy_kernels import F32
from .scheduler import readers


class NormWeightFusion:
    """The norms' inputs and the fused steps prepared for one backend's plans."""

    def __init__(self) -> None:
        self.inputs: WeakKeyDictionary[Tensor, Any] = WeakKeyDictionary()
        self.fused: WeakKeyDictionary[Tensor, Step] = WeakKeyDictionary()

    def saw_norm(self, node: Tensor, x: Any, out: Any) -> None:
        """Note an rms_norm's input array (F32 only)."""
        if x.dtype == F32 and out.dtype == F32:
            self.inputs[node] = x

    def candidate(self, node: Tensor, weight: Any) -> tuple[Tensor, Any] | None:
        """(the norm, its input) if node is mul(F32 rms_norm, 1-D F32 weight), else None."""
        norm = node.srcs[0]
        if node.op != "mul" or norm not in self.inputs or weight.ndim != 1 or weight.dtype != F32:
            return None
        return norm, self.inputs[norm]

    def apply(self, graph: Graph, steps: list[tuple[Tensor, Step]]) -> list[tuple[Tensor, Step]]:
        """The steps with each fusable (norm, mul) pair replaced by the mul's fused step."""
        read_by, outputs = readers(graph), {storage_owner(t) for t in graph.outputs}
        result: list[tuple[Tensor, Step]] = []
        for node, step in steps:
            norm = node.srcs[0] if node in self.fused else None
            if norm is not None and result and result[-1][0] is norm and read_by[norm] == [node] \
                    and norm not in outputs:
                result[-1] = (node, self.fused[node])
            else:
                result.append((node, step))
        return result
