"""Per-node profiles of a model's forward steps: time, bytes moved and work of every node, grouped per op,
with exports to a Chrome trace and to the step's graph annotated with its memory plan."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np

from pyggml.backends import Plan
from pyggml.graph.errors import PyggmlError
from pyggml.graph.tensor import Flag, Tensor
from pyggml.ops import spec

from ..runtime.sequence import SequenceContext

if TYPE_CHECKING:
    from ..model import Model



def step_plan(context: SequenceContext, tokens: Sequence[int]) -> Plan:
    """Evaluate tokens (at most n_batch) as one step and return the plan that ran it."""
    context.eval(tokens)
    return context.last_plan


def placed_weights(plan: Plan) -> dict[Tensor, Any]:
    """The weights the plan's mul_mats read, each once, as the backend holds them (blocks or dense)."""
    return {node.srcs[0]: plan.array(node.srcs[0]) for node in plan.graph.nodes
            if node.op == "mul_mat" and node.srcs[0].is_leaf and node.srcs[0].flags & Flag.WEIGHT}


def _stored(plan: Plan, t: Tensor) -> int:
    return int(plan.array(t).nbytes)


def _rows_fraction(table: Tensor, idx: Tensor) -> float:
    """The share of a table's rows that idx addresses."""
    return idx.nelements / (table.nelements // table.shape[-1])


def _gather_bytes(plan: Plan, node: Tensor) -> tuple[list[int], int]:
    table, idx = node.srcs
    return [round(_stored(plan, table) * _rows_fraction(table, idx)), _stored(plan, idx)], _stored(plan, node)


def _scatter_bytes(plan: Plan, node: Tensor) -> tuple[list[int], int]:
    dst, values, idx = node.srcs
    return [0, _stored(plan, values), _stored(plan, idx)], round(_stored(plan, dst) * _rows_fraction(dst, idx))


def _copy_bytes(plan: Plan, node: Tensor) -> tuple[list[int], int]:
    return [_stored(plan, node.srcs[0]), 0], _stored(plan, node)


def _dense_bytes(plan: Plan, node: Tensor) -> tuple[list[int], int]:
    return [_stored(plan, s) for s in node.srcs], _stored(plan, node)


# op -> (bytes read per source, bytes written) where an op touches less than all of its arrays
NODE_BYTES: dict[str, Callable[[Plan, Tensor], tuple[list[int], int]]] = {
    "get_rows": _gather_bytes, "set_rows": _scatter_bytes, "cpy": _copy_bytes}


def node_flops(node: Tensor) -> int:
    """Arithmetic of a node: 2*M*N*K for mul_mat, none for data movement, one per result element otherwise."""
    if node.op == "mul_mat":
        return 2 * node.nelements * node.srcs[0].shape[-1]
    return node.nelements if spec(node.op).arithmetic else 0


@dataclass
class NodeStat:
    """One node's share of a profiled step."""
    name: str
    op: str
    backend: str
    start: float  # seconds from the step's start (node times laid end to end)
    seconds: float
    reads: list[tuple[str, int]]  # (source, bytes read from it)
    bytes_written: int
    flops: int

    @property
    def bytes_read(self) -> int:
        return sum(n for _, n in self.reads)

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "backend": self.backend, "start_ms": self.start * 1e3,
                "ms": self.seconds * 1e3, "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                "flops": self.flops, "srcs": [{"name": n, "bytes": b} for n, b in self.reads]}


@dataclass
class OpStat:
    """The nodes of one op (or one node) added up, relative to their step."""
    name: str
    op: str
    backend: str
    count: int
    seconds: float
    bytes_read: int
    bytes_written: int
    flops: int
    step_seconds: float

    def to_dict(self) -> dict:
        s = max(self.seconds, 1e-12)
        return {"name": self.name, "op": self.op, "backend": self.backend, "count": self.count,
                "ms": self.seconds * 1e3, "share": self.seconds / max(self.step_seconds, 1e-12),
                "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                "gb_per_s": (self.bytes_read + self.bytes_written) / s / 1e9, "gflop_per_s": self.flops / s / 1e9}


@dataclass
class CopyStat:
    """One copy of a tensor between backends in a profiled step."""
    name: str
    src: str
    dst: str
    nbytes: int
    start: float
    seconds: float

    def to_dict(self) -> dict:
        return {"name": self.name, "src": self.src, "dst": self.dst, "bytes": self.nbytes,
                "start_ms": self.start * 1e3, "ms": self.seconds * 1e3}


@dataclass
class StepProfile:
    """One profiled step: its nodes and copies between backends in run order, and the wall time of the run."""
    step: str
    n_tokens: int
    n_past: int
    wall_seconds: float
    nodes: list[NodeStat]
    copies: list[CopyStat] = field(default_factory=list)
    plan: Plan | None = field(default=None, repr=False)

    @property
    def node_seconds(self) -> float:
        return sum(n.seconds for n in self.nodes)

    @property
    def copy_seconds(self) -> float:
        return sum(c.seconds for c in self.copies)

    def _total(self, name: str, op: str, backend: str, nodes: list[NodeStat]) -> OpStat:
        return OpStat(name, op, backend, len(nodes), sum(n.seconds for n in nodes), sum(n.bytes_read for n in nodes),
                      sum(n.bytes_written for n in nodes), sum(n.flops for n in nodes),
                      self.node_seconds + self.copy_seconds)

    def by_op(self) -> list[OpStat]:
        """Per (op, backend) totals, slowest first."""
        groups: dict[tuple[str, str], list[NodeStat]] = {}
        for n in self.nodes:
            groups.setdefault((n.op, n.backend), []).append(n)
        totals = [self._total(op, op, backend, nodes) for (op, backend), nodes in groups.items()]
        return sorted(totals, key=lambda t: -t.seconds)

    def slowest(self, n: int) -> list[OpStat]:
        """The n slowest nodes, each as its own total."""
        return [self._total(s.name, s.op, s.backend, [s]) for s in sorted(self.nodes, key=lambda s: -s.seconds)[:n]]

    def to_dict(self, top: int = 10) -> dict:
        return {"step": self.step, "n_tokens": self.n_tokens, "n_past": self.n_past,
                "wall_ms": self.wall_seconds * 1e3, "nodes_ms": self.node_seconds * 1e3,
                "copies_ms": self.copy_seconds * 1e3, "n_nodes": len(self.nodes),
                "backends": sorted({n.backend for n in self.nodes}), "copies": [c.to_dict() for c in self.copies],
                "ops": [o.to_dict() for o in self.by_op()], "slowest": [o.to_dict() for o in self.slowest(top)],
                "nodes": [n.to_dict() for n in self.nodes]}


def node_stat(plan: Plan, node: Tensor, backend: str, start: float, seconds: float) -> NodeStat:
    """A node's time with the bytes it moved and its arithmetic."""
    reads, written = NODE_BYTES.get(node.op, _dense_bytes)(plan, node)
    label = plan.graph.label
    return NodeStat(label(node), node.op, backend, start, seconds, [(label(s), b) for s, b in zip(node.srcs, reads)],
                    written, node_flops(node))


def profile_plan(plan: Plan, step: str, n_tokens: int, n_past: int) -> StepProfile:
    """Replay the plan's last run (same inputs, so the same cache writes) once to warm up, then with per-node
    timing; each split's copies ran just before its nodes."""
    plan.run()
    t0 = time.perf_counter()
    plan.run(profile=True)
    wall = time.perf_counter() - t0
    node_times, copy_times, start = iter(plan.last_profile), iter(plan.last_copy_profile), 0.0
    nodes: list[NodeStat] = []
    copies: list[CopyStat] = []
    for split in plan.splits:
        for copy, seconds in islice(copy_times, len(split.copies)):
            copies.append(CopyStat(copy.label, copy.src, copy.dst, copy.nbytes, start, seconds))
            start += seconds
        for node, seconds in islice(node_times, len(split.nodes)):
            nodes.append(node_stat(plan, node, split.backend.name, start, seconds))
            start += seconds
    return StepProfile(step, n_tokens, n_past, wall, nodes, copies, plan)


def profile_model(model: Model, n_prompt: int = 64, seed: int = 0) -> list[StepProfile]:
    """Profiles of one prefill of n_prompt random tokens and of the decode step after it."""
    if not 0 < n_prompt <= model.context.n_batch:
        raise PyggmlError(f"the profiled prefill must have 1 to n_batch={model.context.n_batch} tokens, "
                          f"not {n_prompt}")
    ids = np.random.default_rng(seed).integers(0, model.tokenizer.n_vocab, n_prompt + 1).tolist()
    model.reset()
    profiles = []
    for step, tokens in (("prefill", ids[:n_prompt]), ("decode", ids[n_prompt:])):
        n_past = model.context.n_past
        profiles.append(profile_plan(step_plan(model.context, tokens), step, len(tokens), n_past))
    return profiles


def chrome_trace(profiles: Sequence[StepProfile]) -> dict:
    """Chrome trace events (Perfetto opens them): one process per step, one track per backend."""
    events: list[dict] = []
    for pid, prof in enumerate(profiles, 1):
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                       "args": {"name": f"{prof.step} ({prof.n_tokens} tokens after {prof.n_past})"}})
        tracks = {b: i for i, b in enumerate(dict.fromkeys([n.backend for n in prof.nodes] +
                                                           [c.dst for c in prof.copies]), 1)}
        events += [{"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": b}}
                   for b, tid in tracks.items()]
        events += [{"name": n.name, "cat": n.op, "ph": "X", "ts": n.start * 1e6, "dur": n.seconds * 1e6,
                    "pid": pid, "tid": tracks[n.backend],
                    "args": {"bytes_read": n.bytes_read, "bytes_written": n.bytes_written, "flops": n.flops}}
                   for n in prof.nodes]
        events += [{"name": f"copy {c.name}", "cat": "copy", "ph": "X", "ts": c.start * 1e6, "dur": c.seconds * 1e6,
                    "pid": pid, "tid": tracks[c.dst], "args": {"src": c.src, "dst": c.dst, "bytes": c.nbytes}}
                   for c in prof.copies]
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def memory_plan(plan: Plan) -> dict:
    """The plan's arenas (one per backend) and, for every intermediate, its arena, offset, size and first and
    last use (indices of the nodes on that backend)."""
    slots = [{"id": t.id, "name": plan.graph.label(t), "buffer": f"{plan.where[t].name}:arena", "offset": s.offset,
              "size": s.size, "first": s.first, "last": s.last, "inplace_of": s.inplace_of or None}
             for t, s in plan.slots.items()]
    return {"buffers": [{"name": f"{b.name}:arena", "backend": b.name, "bytes": a.nbytes}
                        for b, a in plan.arenas.items()], "slots": slots}


def graph_json(plan: Plan) -> str:
    """The plan's graph as pyggml-graph JSON with its memory plan under "memory"."""
    doc = json.loads(plan.graph.to_json())
    doc["memory"] = memory_plan(plan)
    return json.dumps(doc, indent=1)


def graph_dot(plan: Plan) -> str:
    """The plan's graph as DOT, each intermediate labelled with its arena slot and lifetime."""
    lines = plan.graph.to_dot().rstrip().removesuffix("}").splitlines()
    arenas = ", ".join(f"{b.name} arena {a.nbytes} bytes" for b, a in plan.arenas.items())
    lines.append(f'  label = "{arenas}"; labelloc = t;')
    lines += [f'  "t{t.id}" [xlabel = "{plan.where[t].name} @{s.offset}+{s.size} [{s.first}..{s.last}]"];'
              for t, s in plan.slots.items()]
    return "\n".join(lines + ["}"]) + "\n"
