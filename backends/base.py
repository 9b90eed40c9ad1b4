"""The Backend interface: what a device must offer the scheduler (see docs/backends.md)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np

from pyggml.graph.dtypes import is_quantized
from pyggml.graph.graph import Graph
from pyggml.graph.tensor import Tensor
from pyggml.ops import is_view, spec

# A kernel factory builds, once per plan, the closure that computes `node` into `out` from its sources' arrays.
Step = Callable[[], None]
KernelFactory = Callable[..., Step]


class Backend(ABC):
    """A device: it places persistent tensors, allocates buffers, copies to and from the host, runs kernels."""

    name: str = "?"
    kernels: dict[str, KernelFactory] = {}
    fusions: tuple[str, ...] = ()  # graph rewrites (backends/fusion.py) applied when this backend runs a graph

    def __init__(self) -> None:
        # dense or raw form -> leaf -> its device array; weak keys: a leaf no graph holds any more is forgotten,
        # and no other leaf can ever be handed its array (as an id() key would once the id is reused)
        self._placed: dict[bool, WeakKeyDictionary[Tensor, Any]] = {True: WeakKeyDictionary(),
                                                                    False: WeakKeyDictionary()}

    def supports(self, node: Tensor) -> bool:
        """True if this backend can compute the node (views are always supported)."""
        return node.op in self.kernels or is_view(node.op)

    def reads_blocks(self, node: Tensor, slot: int) -> bool:
        """True if node's kernel reads its source `slot` as raw quantized blocks (no dense copy is needed)."""
        return slot in spec(node.op).block_srcs

    def place(self, leaf: Tensor, dense: bool) -> Any:
        """The device array of a weight, constant or persistent buffer, made once per form and kept while the
        leaf lives (dense: a quantized leaf dequantized; otherwise its raw blocks as (rows, bytes per row))."""
        held = self._placed[dense or not is_quantized(leaf.dtype)]
        if leaf not in held:
            held[leaf] = self.make_placed(leaf, dense)
        return held[leaf]

    @abstractmethod
    def make_placed(self, leaf: Tensor, dense: bool) -> Any:
        """A new device array holding the leaf's values (zeros for a leaf without data)."""

    @abstractmethod
    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        """A new uninitialised device array."""

    @abstractmethod
    def arena_view(self, arena: Any, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        """A contiguous array of `shape` inside a byte arena at `offset`."""

    @abstractmethod
    def strided_view(self, base: Any, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
        """An array sharing base's storage at byte offset with byte strides."""

    @abstractmethod
    def upload(self, dst: Any, host: np.ndarray) -> None:
        """Copy host values into an existing device array."""

    @abstractmethod
    def download(self, src: Any) -> np.ndarray:
        """A host copy of a device array."""

    def synchronize(self) -> None:
        """Wait for queued work (a no-op on synchronous backends)."""

    def compile_node(self, node: Tensor, out: Any, srcs: list[Any]) -> Step:
        """The closure computing node into out from srcs."""
        return self.kernels[node.op](node, out, *srcs)

    def sequence(self, graph: Graph, steps: list[tuple[Tensor, Step]]) -> list[Step]:
        """The calls that run a plan whose every (node, step) is on this backend, in order (a GPU backend may
        capture them as one graph)."""
        return [step for _, step in steps]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
