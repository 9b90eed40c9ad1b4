"""Scheduler over several backends (as ggml_backend_sched): assignment, splits, copies, a memory plan per backend.

Every node gets a backend: pins by name first, then a node reading a weight runs where the weight lives (a
weight lives on the first backend supporting all its readers), then assignments spread to neighbours down
and up the node order (preferred backends first, then the fallback), and what is left goes to the first
backend supporting it. Views and writes run where the storage they use lives. Consecutive nodes on one
backend form a split; a split first copies in the tensors it reads that live on another backend.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from pyggml.graph.errors import PyggmlError
from pyggml.graph.graph import Graph
from pyggml.graph.tensor import Flag, Tensor
from pyggml.ops import is_view, is_write

from .base import Backend
from .memory_plan import storage_owner


def readers(graph: Graph) -> dict[Tensor, list[Tensor]]:
    """Storage owner -> the computing nodes that read it or write into it (through any view)."""
    found: dict[Tensor, list[Tensor]] = defaultdict(list)
    for node in graph.nodes:
        if not is_view(node.op):
            for src in node.srcs:
                found[storage_owner(src)].append(node)
    return found


class Scheduler:
    """Backends in priority order (the last is the CPU fallback) and user pins (tensor name -> backend name)."""

    def __init__(self, backends: Sequence[Backend], pins: Mapping[str, str] | None = None):
        if not backends:
            raise PyggmlError("a scheduler needs at least one backend")
        self.backends = list(backends)
        self.by_name = {b.name: b for b in self.backends}
        if len(self.by_name) != len(self.backends):
            raise PyggmlError(f"backend names must differ: {[b.name for b in self.backends]}")
        self.pins = dict(pins or {})
        unknown = sorted(set(self.pins.values()) - set(self.by_name))
        if unknown:
            raise PyggmlError(f"pins name unknown backends {unknown}; backends: {list(self.by_name)}")

    @property
    def fusions(self) -> list[str]:
        """The graph rewrites any backend here wants, the preferred backends' first."""
        return list(dict.fromkeys(name for b in self.backends for name in b.fusions))

    def keeps(self, fusion: str, fused: Tensor) -> bool:
        """Whether a fused node stays: the first backend that supports it (where it will run) wants the pass, so a
        NumPy fallback behind numba keeps numba's fusions."""
        while is_view(fused.op):  # a pass may return its fused node seen through a view
            fused = fused.srcs[0]
        return fusion in self.first_supporting([fused]).fusions

    @property
    def fallback(self) -> Backend:
        """The last backend: the CPU one that supports every op."""
        return self.backends[-1]

    def first_supporting(self, nodes: Sequence[Tensor]) -> Backend:
        """The first backend supporting every one of the nodes (the fallback if none does)."""
        return next((b for b in self.backends if all(b.supports(n) for n in nodes)), self.fallback)

    def pinned(self, t: Tensor) -> Backend | None:
        """The backend a user pinned t to, by name."""
        return self.by_name[self.pins[t.name]] if t.name in self.pins else None

    def assign(self, graph: Graph) -> dict[Tensor, Backend]:
        """The backend of every tensor: leafs hold their home (inputs: their first reader's), nodes run there."""
        read_by = readers(graph)
        where: dict[Tensor, Backend] = {leaf: self.pinned(leaf) or self.first_supporting(read_by[leaf])
                                        for leaf in graph.leafs if not leaf.flags & Flag.INPUT}
        work = [n for n in graph.nodes if not is_view(n.op)]
        for node in work:
            backend = self.pinned(node) or self._weight_home(node, where)
            if backend is not None:
                where[node] = self._checked(backend, node, graph)
        self._expand(work, where, with_fallback=False)
        self._expand(work, where, with_fallback=True)
        for node in work:
            where.setdefault(node, self.first_supporting([node]))
            if is_write(node.op):  # a write runs where the storage it writes lives
                where[node] = self._checked(where[storage_owner(node)], node, graph)
        for leaf in graph.leafs:
            if leaf.flags & Flag.INPUT:
                where[leaf] = where[read_by[leaf][0]] if read_by[leaf] else self.backends[0]
        for node in graph.nodes:
            if is_view(node.op):
                where[node] = where[storage_owner(node)]
        return where

    @staticmethod
    def _weight_home(node: Tensor, where: dict[Tensor, Backend]) -> Backend | None:
        """Where a weight (or persistent tensor) the node reads lives, if that backend supports the node."""
        for src in node.srcs:
            home = where.get(storage_owner(src))
            if home is not None and storage_owner(src).is_leaf and home.supports(node):
                return home
        return None

    @staticmethod
    def _checked(backend: Backend, node: Tensor, graph: Graph) -> Backend:
        if not backend.supports(node):
            raise PyggmlError(f"{graph.label(node)} ({node.op}) must run on {backend.name}, which does not support it")
        return backend

    def _expand(self, work: list[Tensor], where: dict[Tensor, Backend], with_fallback: bool) -> None:
        """Spread assignments down then up the node order to unassigned neighbours that the backend supports."""
        for order in (work, work[::-1]):
            current = None
            for node in order:
                backend = where.get(node)
                if backend is not None:
                    current = backend if with_fallback or backend is not self.fallback else None
                elif current is not None and current.supports(node):
                    where[node] = current
