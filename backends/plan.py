"""Plan: a graph compiled for a backend into a list of ready closures over preallocated arrays."""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from pyggml.graph.dtypes import numpy_dtype
from pyggml.graph.errors import PyggmlError
from pyggml.graph.graph import Graph
from pyggml.graph.tensor import Flag, Tensor
from pyggml.ops import VIEW_OPS

from .base import Backend, Step
from .memory_plan import Slot, owns_storage, plan_memory, storage_owner


def needs_dense(graph: Graph) -> set[Tensor]:
    """Leafs read by some op other than get_rows: a backend must hold them dequantized."""
    return {src for node in graph.nodes for slot, src in enumerate(node.srcs)
            if src.is_leaf and not (node.op == "get_rows" and slot == 0)}


def view_array(backend: Backend, base: Any, node: Tensor) -> Any:
    """The array of a view (or write) node over its storage owner's array `base`."""
    offset, strides = node.view_offset, node.strides
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


class Plan:
    """A compiled graph: run it many times with new input values; outputs come back as host arrays."""

    def __init__(self, graph: Graph, backend: Backend):
        self.graph, self.backend = graph, backend
        keep = {storage_owner(t) for t in graph.outputs}
        self.slots, self.arena_bytes = plan_memory(graph.nodes, keep, graph.label)
        self.arena = Arena(backend, self.arena_bytes)
        self.arrays: dict[Tensor, Any] = {}
        self.inputs: dict[Tensor, Any] = {}
        dense = needs_dense(graph)
        for leaf in graph.leafs:
            if leaf.flags & Flag.INPUT:
                self.arrays[leaf] = self.inputs[leaf] = backend.empty(leaf.shape, numpy_dtype(leaf.dtype))
            else:
                self.arrays[leaf] = backend.place(leaf, leaf in dense)
        self.steps: list[tuple[Tensor, Step]] = []
        for node in graph.nodes:
            self.arrays[node] = self._array_for(node)
            if node.op not in VIEW_OPS:
                self.steps.append((node, backend.compile_node(node, self.arrays[node],
                                                              [self.arrays[s] for s in node.srcs])))
        self._calls = [step for _, step in self.steps]  # the bare closures: the run loop does nothing else
        self._by_name = {graph.label(t): t for t in self.inputs}
        self.last_profile: list[tuple[Tensor, float]] = []

    def _array_for(self, node: Tensor) -> Any:
        if owns_storage(node):
            return self.arena.view(self.slots[node].offset, node)
        return view_array(self.backend, self.arrays[storage_owner(node)], node)

    def set_inputs(self, values: Mapping[Tensor | str, Any]) -> None:
        """Copy input values into the plan's input buffers."""
        for key, value in values.items():
            tensor = self._by_name.get(key) if isinstance(key, str) else key
            if tensor not in self.inputs:
                raise PyggmlError(f"plan has no input {key!r}; inputs: {sorted(self._by_name)}")
            value = np.asarray(value)
            if value.size != tensor.nelements:
                raise PyggmlError(f"input {self.graph.label(tensor)}: got shape {value.shape}, "
                                  f"expected {list(tensor.shape)}")
            self.backend.upload(self.inputs[tensor], value)

    def run(self, inputs: Mapping[Tensor | str, Any] | None = None, profile: bool = False) -> list[np.ndarray]:
        """Set inputs, run every step, return host copies of the outputs."""
        if inputs:
            self.set_inputs(inputs)
        if profile:
            self._run_profiled()
        else:
            for step in self._calls:
                step()
        return [self.backend.download(self.arrays[t]) for t in self.graph.outputs]

    def _run_profiled(self) -> None:
        sync, clock = self.backend.synchronize, time.perf_counter
        timings = []
        for node, step in self.steps:
            t0 = clock()
            step()
            sync()
            timings.append((node, clock() - t0))
        self.last_profile = timings

    def array(self, tensor: Tensor) -> Any:
        """The backend array holding a tensor in this plan (valid until the next run)."""
        return self.arrays[tensor]

    def memory(self) -> list[tuple[str, Slot]]:
        """The memory plan: each intermediate's arena slot with its first and last use."""
        return [(self.graph.label(t), slot) for t, slot in self.slots.items()]

    def describe(self) -> str:
        """A readable summary: backend, arena size, and per node its op, shape and slot."""
        lines = [f"plan on {self.backend.name}: {len(self.graph.nodes)} nodes, {len(self.steps)} steps, "
                 f"arena {self.arena_bytes / 2**20:.2f} MiB"]
        for i, node in enumerate(self.graph.nodes):
            slot = self.slots.get(node)
            where = f"@{slot.offset}+{slot.size}" + (f" (in place of {slot.inplace_of})" if slot.inplace_of else "") \
                if slot else f"view of {self.graph.label(storage_owner(node))}"
            lines.append(f"  {i:4d} {self.graph.label(node):24s} {node.op:14s} {str(list(node.shape)):20s} {where}")
        return "\n".join(lines)
