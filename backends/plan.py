"""Plan: a graph compiled over one or several backends into ready closures over preallocated arrays:
splits per backend, the copies between them, one memory-planned arena per backend."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from pyggml.graph.dtypes import is_quantized, nbytes, numpy_dtype
from pyggml.graph.errors import PyggmlError
from pyggml.graph.graph import Graph
from pyggml.graph.tensor import Flag, Tensor
from pyggml.ops import is_view, is_write

from .base import Backend, Step
from .fusion import fuse
from .memory_plan import Slot, owns_storage, plan_memory, storage_owner
from .scheduler import Scheduler, readers


def needs_dense(graph: Graph, where: Mapping[Tensor, Backend]) -> set[tuple[Backend, Tensor]]:
    """(backend, leaf) pairs where a node on that backend reads the leaf other than as raw blocks: the backend
    must hold it dequantized."""
    return {(where[node], src) for node in graph.nodes for slot, src in enumerate(node.srcs)
            if src.is_leaf and not where[node].reads_blocks(node, slot)}


def view_array(backend: Backend, base: Any, node: Tensor) -> Any:
    """The array of a view (or write) node over its storage owner's array `base`; a view of blocks is a uint8
    array whose last dim is the bytes of each row of whole blocks."""
    offset, strides = node.view_offset, node.strides
    if is_quantized(storage_owner(node).dtype):
        shape = node.shape[:-1] + (nbytes(node.shape[-1:], node.dtype),)
        return backend.strided_view(base, offset, shape, strides[:-1] + (1,))
    held, declared = np.dtype(base.dtype).itemsize, numpy_dtype(storage_owner(node).dtype).itemsize
    if held != declared:  # a leaf placed in another dtype (an F16 weight held as F32): rescale byte steps
        offset, strides = offset // declared * held, tuple(s // declared * held for s in strides)
    return backend.strided_view(base, offset, node.shape, strides)


class Arena:
    """One backend's arena buffer and the array views of the intermediates planned into it."""

    def __init__(self, backend: Backend, nbytes: int):
        self.backend, self.nbytes = backend, nbytes
        self.buffer = backend.empty((nbytes,), np.dtype(np.uint8))
        self._views: dict[tuple[int, tuple[int, ...], np.dtype], Any] = {}

    def view(self, offset: int, node: Tensor) -> Any:
        """The array of node at offset; one object per (offset, shape, dtype): a node run in place gets its
        source's very object, and NumPy skips its overlap analysis when a ufunc's input and output are one array."""
        key = (offset, node.shape, numpy_dtype(node.dtype))
        if key not in self._views:
            self._views[key] = self.backend.arena_view(self.buffer, offset, node.shape, key[2])
        return self._views[key]


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


class Plan:
    """A graph compiled over several backends: splits, copies between them, one arena per backend."""

    def __init__(self, graph: Graph, scheduler: Scheduler | Backend):
        if isinstance(scheduler, Backend):
            scheduler = Scheduler([scheduler])
        self.graph, self.scheduler = fuse(graph, scheduler.fusions, scheduler.keeps), scheduler
        self.backend = scheduler.backends[0]
        self.where = scheduler.assign(self.graph)
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
        calls = [step for _, step, _ in self._timed]
        self._calls = self.splits[0].backend.sequence(self.graph, self.steps) \
            if len(self.splits) == 1 and not self.copies else calls
        self._by_name = {self.graph.label(t): t for t in self.inputs}
        # inputs a fusion made unnecessary (a one-row gather's indices) are still accepted, and ignored
        self._fused_away = {graph.label(t): t for t in graph.inputs if t not in self.inputs}
        self.last_profile: list[tuple[Tensor, float]] = []
        self.last_copy_profile: list[tuple[Copy, float]] = []

    @property
    def copies(self) -> list[Copy]:
        """Every copy made per run: (tensor label, from, to, bytes)."""
        return [c for split in self.splits for c in split.copies]

    def _split(self) -> list[Split]:
        splits: list[Split] = []
        for node in self.graph.nodes:
            if is_view(node.op):
                continue
            if not splits or splits[-1].backend is not self.where[node]:
                splits.append(Split(self.where[node]))
            splits[-1].nodes.append(node)
        return splits

    def _place_leafs(self) -> None:
        """Constants on every backend reading them; written leafs (a KV cache) at home; inputs per reader backend."""
        dense, read_by = needs_dense(self.graph, self.where), readers(self.graph)
        written = {storage_owner(n) for n in self.graph.nodes if is_write(n.op)}
        for leaf in self.graph.leafs:
            homes = {self.where[leaf]} if leaf in written else \
                {self.where[leaf]} | {self.where[r] for r in read_by[leaf]}
            for backend in homes:
                if leaf.flags & Flag.INPUT:
                    array = backend.empty(leaf.shape, numpy_dtype(leaf.dtype))
                    self.inputs[leaf].append((backend, array))
                else:
                    array = backend.place(leaf, (backend, leaf) in dense)
                self._arrays[backend, leaf] = array

    def _plan_memory(self) -> None:
        """One memory plan per backend; tensors read on another backend stay alive until the end of the run."""
        crossing = {storage_owner(s) for node in self.graph.nodes if not is_view(node.op) for s in node.srcs
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
            if key in self._fused_away or tensor in self._fused_away.values():
                continue
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
        lines = [f"plan on {[b.name for b in self.scheduler.backends]}: {len(self.graph.nodes)} nodes, "
                 f"{len(self.splits)} splits, {len(self.copies)} copies ({per_run} bytes per run); arenas: {arenas}"]
        for i, split in enumerate(self.splits):
            lines.append(f"  split {i} on {split.backend.name}: {len(split.nodes)} nodes, "
                         f"{label(split.nodes[0])} .. {label(split.nodes[-1])}")
            lines += [f"    copy {c.label}: {c.src} -> {c.dst}, {c.nbytes} bytes" for c in split.copies]
        for i, node in enumerate(self.graph.nodes):
            slot = self.slots.get(node)
            where = f"view of {label(storage_owner(node))}" if slot is None else f"@{slot.offset}+{slot.size}" + (
                f" (in place of {slot.inplace_of})" if slot.inplace_of else "")
            lines.append(f"  {i:4d} {label(node):24s} {node.op:14s} {str(list(node.shape)):20s} "
                         f"{self.where[node].name:10s} {where}")
        return "\n".join(lines)
