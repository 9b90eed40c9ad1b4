"""Scheduler over several backends (as ggml_backend_sched): assignment, splits, copies, a memory plan per backend.

Every node gets a backend: pins by name first, then a node reading a weight runs where the weight lives (a
weight lives on the first backend supporting all its readers), then assignments spread to neighbours down
and up the node order (preferred backends first, then the fallback), and what is left goes to the first
backend supporting it. Views and writes run where the storage they use lives. Consecutive nodes on one
backend form a split; a split first copies in the tensors it reads that live on another backend.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from pyggml.graph.dtypes import numpy_dtype
from pyggml.graph.errors import PyggmlError
from pyggml.graph.graph import Graph
from pyggml.graph.tensor import Flag, Tensor
from pyggml.ops import VIEW_OPS, WRITE_OPS

from .base import Backend, Step
from .memory_plan import Slot, owns_storage, plan_memory, storage_owner
from .plan import Arena, needs_dense, view_array


class Copy(NamedTuple):
    """A tensor copied between backends on every run, before the split that reads it."""
    label: str
    src: str
    dst: str
    nbytes: int


@dataclass
class Split:
    """Consecutive nodes computed on one backend, and the copies made before them."""
    backend: Backend
    nodes: list[Tensor] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)


def readers(graph: Graph) -> dict[Tensor, list[Tensor]]:
    """Storage owner -> the computing nodes that read it or write into it (through any view)."""
    found: dict[Tensor, list[Tensor]] = defaultdict(list)
    for node in graph.nodes:
        if node.op not in VIEW_OPS:
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
    def fallback(self) -> Backend:
        """The last backend: the CPU one that supports every op."""
        return self.backends[-1]

    def compile(self, graph: Graph) -> ScheduledPlan:
        """Assign, split and plan the graph into a reusable plan."""
        return ScheduledPlan(graph, self)

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
        work = [n for n in graph.nodes if n.op not in VIEW_OPS]
        for node in work:
            backend = self.pinned(node) or self._weight_home(node, where)
            if backend is not None:
                where[node] = self._checked(backend, node, graph)
        self._expand(work, where, with_fallback=False)
        self._expand(work, where, with_fallback=True)
        for node in work:
            where.setdefault(node, self.first_supporting([node]))
            if node.op in WRITE_OPS:  # a write runs where the storage it writes lives
                where[node] = self._checked(where[storage_owner(node)], node, graph)
        for leaf in graph.leafs:
            if leaf.flags & Flag.INPUT:
                where[leaf] = where[read_by[leaf][0]] if read_by[leaf] else self.backends[0]
        for node in graph.nodes:
            if node.op in VIEW_OPS:
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


class ScheduledPlan:
    """A graph compiled over several backends: splits, copies between them, one arena per backend."""

    def __init__(self, graph: Graph, scheduler: Scheduler):
        self.graph, self.scheduler = graph, scheduler
        self.backend = scheduler.backends[0]
        self.where = scheduler.assign(graph)
        self.splits = self._split()
        self._arrays: dict[tuple[Backend, Tensor], Any] = {}
        self._copy_buffers: dict[tuple[Backend, Tensor], Any] = {}
        self._copied: set[Tensor] = set()  # owners with live copies on other backends
        self.inputs: dict[Tensor, list[tuple[Backend, Any]]] = defaultdict(list)
        self._place_leafs()
        self._plan_memory()
        self.steps: list[tuple[Tensor, Step]] = []
        self._timed: list[tuple[Tensor | Copy, Step, Backend]] = []
        for split in self.splits:
            self._compile_split(split)
        self._calls = [step for _, step, _ in self._timed]
        self._by_name = {graph.label(t): t for t in self.inputs}
        self.last_profile: list[tuple[Tensor, float]] = []
        self.last_copy_profile: list[tuple[Copy, float]] = []

    @property
    def copies(self) -> list[Copy]:
        """Every copy made per run: (tensor label, from, to, bytes)."""
        return [c for split in self.splits for c in split.copies]

    def _split(self) -> list[Split]:
        splits: list[Split] = []
        for node in self.graph.nodes:
            if node.op in VIEW_OPS:
                continue
            if not splits or splits[-1].backend is not self.where[node]:
                splits.append(Split(self.where[node]))
            splits[-1].nodes.append(node)
        return splits

    def _place_leafs(self) -> None:
        """Constants on every backend reading them; written leafs (a KV cache) at home; inputs per reader backend."""
        dense, read_by = needs_dense(self.graph), readers(self.graph)
        written = {storage_owner(n) for n in self.graph.nodes if n.op in WRITE_OPS}
        for leaf in self.graph.leafs:
            homes = {self.where[leaf]} if leaf in written else \
                {self.where[leaf]} | {self.where[r] for r in read_by[leaf]}
            for backend in homes:
                if leaf.flags & Flag.INPUT:
                    array = backend.empty(leaf.shape, numpy_dtype(leaf.dtype))
                    self.inputs[leaf].append((backend, array))
                else:
                    array = backend.place(leaf, leaf in dense)
                self._arrays[backend, leaf] = array

    def _plan_memory(self) -> None:
        """One memory plan per backend; tensors read on another backend stay alive until the end of the run."""
        crossing = {storage_owner(s) for node in self.graph.nodes if node.op not in VIEW_OPS for s in node.srcs
                    if self.where[storage_owner(s)] is not self.where[node]}
        keep = {storage_owner(t) for t in self.graph.outputs} | crossing
        self.slots: dict[Tensor, Slot] = {}
        self.arenas: dict[Backend, Arena] = {}
        for backend in self.scheduler.backends:
            nodes = [n for n in self.graph.nodes if self.where[n] is backend]
            slots, nbytes = plan_memory(nodes, keep, self.graph.label)
            self.slots.update(slots)
            if nodes:
                self.arenas[backend] = Arena(backend, nbytes)

    @property
    def arena_bytes(self) -> int:
        """Bytes of all the arenas together."""
        return sum(a.nbytes for a in self.arenas.values())

    def array_on(self, t: Tensor, backend: Backend) -> Any:
        """t's array on a backend: its own, an arena view, a copy, or a view over its owner's array there."""
        key = (backend, t)
        if key not in self._arrays:
            if owns_storage(t) and not t.is_leaf:
                self._arrays[key] = self.arenas[backend].view(self.slots[t].offset, t)
            else:
                self._arrays[key] = view_array(backend, self.array_on(storage_owner(t), backend), t)
        return self._arrays[key]

    def _compile_split(self, split: Split) -> None:
        """The split's copies in, then its steps; copies of what it rewrites are stale for later readers."""
        backend = split.backend
        for owner in dict.fromkeys(storage_owner(s) for node in split.nodes for s in node.srcs):
            if self.where[owner] is not backend and (backend, owner) not in self._arrays:
                self._add_copy(split, owner)
        for node in split.nodes:
            out, srcs = self.array_on(node, backend), [self.array_on(s, backend) for s in node.srcs]
            step = backend.compile_node(node, out, srcs)
            self.steps.append((node, step))
            self._timed.append((node, step, backend))
        for owner in self._copied & {storage_owner(node) for node in split.nodes}:
            self._copied.discard(owner)
            for key in [k for k in self._arrays if storage_owner(k[1]) is owner and k[0] is not self.where[owner]]:
                del self._arrays[key]

    def _add_copy(self, split: Split, owner: Tensor) -> None:
        """A buffer on the split's backend for owner's values, filled from its home before the split runs."""
        home, dst = self.where[owner], split.backend
        src = self.array_on(owner, home)
        if (dst, owner) not in self._copy_buffers:
            self._copy_buffers[dst, owner] = dst.empty(tuple(src.shape), np.dtype(src.dtype))
        buffer = self._arrays[dst, owner] = self._copy_buffers[dst, owner]
        self._copied.add(owner)
        nbytes = int(np.prod(src.shape)) * np.dtype(src.dtype).itemsize
        copy = Copy(self.graph.label(owner), home.name, dst.name, nbytes)
        split.copies.append(copy)
        self._timed.append((copy, lambda: dst.upload(buffer, home.download(src)), dst))

    def set_inputs(self, values: Mapping[Tensor | str, Any]) -> None:
        """Copy input values into every backend buffer of each input."""
        for key, value in values.items():
            tensor = self._by_name.get(key) if isinstance(key, str) else key
            if tensor not in self.inputs:
                raise PyggmlError(f"plan has no input {key!r}; inputs: {sorted(self._by_name)}")
            value = np.asarray(value)
            if value.size != tensor.nelements:
                raise PyggmlError(f"input {self.graph.label(tensor)}: got shape {value.shape}, "
                                  f"expected {list(tensor.shape)}")
            for backend, array in self.inputs[tensor]:
                backend.upload(array, value)

    def run(self, inputs: Mapping[Tensor | str, Any] | None = None, profile: bool = False) -> list[np.ndarray]:
        """Set inputs, run every copy and step in order, return host copies of the outputs."""
        if inputs:
            self.set_inputs(inputs)
        if profile:
            self._run_profiled()
        else:
            for step in self._calls:
                step()
        return [self.where[t].download(self.array_on(t, self.where[t])) for t in self.graph.outputs]

    def _run_profiled(self) -> None:
        clock, nodes, copies = time.perf_counter, [], []
        for key, step, backend in self._timed:
            t0 = clock()
            step()
            backend.synchronize()
            (copies if isinstance(key, Copy) else nodes).append((key, clock() - t0))
        self.last_profile, self.last_copy_profile = nodes, copies

    def array(self, tensor: Tensor) -> Any:
        """The array holding a tensor on the backend it was assigned to."""
        return self.array_on(tensor, self.where[tensor])

    def memory(self) -> list[tuple[str, Slot]]:
        """The memory plans of all backends: each intermediate's arena slot with its first and last use."""
        return [(self.graph.label(t), slot) for t, slot in self.slots.items()]

    def describe(self) -> str:
        """Every split with its copies and bytes, then every node with its backend and slot."""
        label = self.graph.label
        per_run = sum(c.nbytes for c in self.copies)
        arenas = ", ".join(f"{b.name} {a.nbytes / 2**20:.2f} MiB" for b, a in self.arenas.items())
        lines = [f"scheduled plan on {[b.name for b in self.scheduler.backends]}: {len(self.graph.nodes)} nodes, "
                 f"{len(self.splits)} splits, {len(self.copies)} copies ({per_run} bytes per run); arenas: {arenas}"]
        for i, split in enumerate(self.splits):
            lines.append(f"  split {i} on {split.backend.name}: {len(split.nodes)} nodes, "
                         f"{label(split.nodes[0])} .. {label(split.nodes[-1])}")
            lines += [f"    copy {c.label}: {c.src} -> {c.dst}, {c.nbytes} bytes" for c in split.copies]
        for i, node in enumerate(self.graph.nodes):
            slot = self.slots.get(node)
            where = f"@{slot.offset}+{slot.size}" if slot else f"view of {label(storage_owner(node))}"
            lines.append(f"  {i:4d} {label(node):24s} {node.op:14s} {str(list(node.shape)):20s} "
                         f"{self.where[node].name:10s} {where}")
        return "\n".join(lines)
