"""An example pyggml backend plugin: NumPy kernels, with a count of the ops run (see docs/backends.md)."""
from __future__ import annotations

from collections import Counter
from typing import Any

from pyggml.backends.base import Step
from pyggml.backends.numpy_backend import NumpyBackend
from pyggml.graph.tensor import Tensor


class ExampleBackend(NumpyBackend):
    """The NumPy backend, counting how many times each op runs; `skip` names ops it leaves to the fallback."""

    name = "mybackend"

    def __init__(self, skip: tuple[str, ...] = (), **options):
        super().__init__(**options)
        self.skip = frozenset(skip)
        self.counts: Counter[str] = Counter()

    def supports(self, node: Tensor) -> bool:
        return node.op not in self.skip and super().supports(node)

    def compile_node(self, node: Tensor, out: Any, srcs: list[Any]) -> Step:
        step, counts, op = super().compile_node(node, out, srcs), self.counts, node.op

        def counted() -> None:
            counts[op] += 1
            step()
        return counted
