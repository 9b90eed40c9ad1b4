"""Fusions of the CuPy backend: chains of nodes computed by one step.

- RMSNorm with its weight (the model's rms_norm_w): mul(rms_norm(x), w), w a 1-D F32 weight -> one RMSNorm launch
  reading the weight (raw kernel) or one array-level step.
- Decode attention: mul_mat(V^T, soft_max_ext(mul_mat(K, q), mask, scale)) with one query row per head -> one
  attention launch reading K/V from the cache, a GQA group sharing its K/V (raw kernels only).

While a plan compiles, the backend shows every node to `saw`, which notes what a chain's last node needs and
prepares its fused step. When the plan is sequenced, a chain whose nodes ran just before its last one, each read
only by the next, none an output, loses their steps, and the last node's step becomes the fused one.
"""
from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from pyggml.graph.graph import Graph
from pyggml.graph.tensor import Tensor

from .base import Step
from .cupy_kernels import norm_rows_step
from .cupy_raw import elems
from .memory_plan import storage_owner
from .numpy_kernels import F32
from .scheduler import readers


class Fusions:
    """What the chains seen so far need, and the fused steps of their last nodes."""

    def __init__(self, backend: Any):
        self.backend = backend
        self.seen: WeakKeyDictionary[Tensor, tuple] = WeakKeyDictionary()  # a chain's node -> what it keeps
        self.fused: WeakKeyDictionary[Tensor, tuple[list[Tensor], Step]] = WeakKeyDictionary()

    def saw(self, node: Tensor, out: Any, srcs: list[Any]) -> None:
        """Note a compiled node; prepare a fused step if it ends a chain."""
        if node.op == "rms_norm" and srcs[0].dtype == F32 and out.dtype == F32:
            self.seen[node] = (srcs[0],)
        elif node.op == "mul" and node.srcs[0] in self.seen and node.srcs[0].op == "rms_norm":
            self._norm_weight(node, out, srcs[1])
        elif node.op == "mul_mat" and srcs[1].ndim == 3 and srcs[1].shape[1] == 1:
            if node.srcs[1] in self.seen and node.srcs[1].op == "soft_max_ext":
                self._attention(node, out, srcs[0])
            else:
                self.seen[node] = (srcs[0], srcs[1])
        elif node.op == "soft_max_ext" and node.srcs[0] in self.seen and len(srcs) == 2 \
                and node.params["max_bias"] == 0:
            self.seen[node] = (srcs[1],)

    def _norm_weight(self, node: Tensor, out: Any, weight: Any) -> None:
        norm = node.srcs[0]
        if weight.ndim == 1 and weight.dtype == F32 and out.dtype == F32:
            step = norm_rows_step(self.backend, self.seen[norm][0], out, norm.params["eps"], weight)
            self.fused[node] = ([norm], step)

    def _attention(self, node: Tensor, out: Any, values_t: Any) -> None:
        softmax = node.srcs[1]
        kq = softmax.srcs[0]
        if self.backend.raw is None or kq not in self.seen or out.dtype != F32:
            return
        (keys, q), (mask,) = self.seen[kq], self.seen[softmax]
        step = self.backend.raw.attention(q, keys, values_t.swapaxes(1, 2), mask, out, elems(out, 0),
                                          softmax.params["scale"])
        if step is not None:
            self.fused[node] = ([kq, softmax], step)

    def apply(self, graph: Graph, steps: list[tuple[Tensor, Step]]) -> list[tuple[Tensor, Step]]:
        """The steps with each fusable chain replaced by its last node's fused step."""
        read_by, outputs = readers(graph), {storage_owner(t) for t in graph.outputs}
        result: list[tuple[Tensor, Step]] = []
        for node, step in steps:
            chain, fused = self.fused.get(node, ([], None))
            ran = [n for n, _ in result[len(result) - len(chain):]] if chain else []
            if chain and ran == chain and all(read_by[n] == [after] and n not in outputs
                                              for n, after in zip(chain, chain[1:] + [node])):
                del result[len(result) - len(chain):]
                result.append((node, fused))
            else:
                result.append((node, step))
        return result
