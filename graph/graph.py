"""Graph: the tensors reachable from some outputs, leafs apart from nodes, in topological order."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from .tensor import Flag, Tensor


def _sources(t: Tensor) -> tuple[Tensor, ...]:
    """What must be computed before t: its op sources, and for a view the tensor owning its storage."""
    if t.view_src is not None and t.view_src not in t.srcs:
        return t.srcs + (t.view_src,)
    return t.srcs


class Graph:
    """Leafs (tensors with no op) and nodes (op results) in depth-first topological order."""

    def __init__(self, nodes: list[Tensor], leafs: list[Tensor], outputs: list[Tensor]):
        self.nodes, self.leafs, self.outputs = nodes, leafs, outputs
        self._labels = {id(t): t.name or f"leaf_{i}" for i, t in enumerate(leafs)}
        self._labels.update({id(t): t.name or f"node_{i}" for i, t in enumerate(nodes)})

    @classmethod
    def build(cls, outputs: Tensor | Iterable[Tensor]) -> Graph:
        """Walk sources depth-first from the outputs (ggml_build_forward_expand), without recursion."""
        outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
        nodes: list[Tensor] = []
        leafs: list[Tensor] = []
        seen: set[int] = set()
        for out in outputs:
            stack: list[tuple[Tensor, Iterator[Tensor]]] = []
            if id(out) not in seen:
                seen.add(id(out))
                stack.append((out, iter(_sources(out))))
            while stack:
                t, pending = stack[-1]
                src = next((s for s in pending if id(s) not in seen), None)
                if src is not None:
                    seen.add(id(src))
                    stack.append((src, iter(_sources(src))))
                    continue
                stack.pop()
                (leafs if t.is_leaf else nodes).append(t)
        return cls(nodes, leafs, outputs)

    def label(self, t: Tensor) -> str:
        """The tensor's name, or its automatic name (node_N / leaf_N) in this graph."""
        return self._labels.get(id(t), t.name or f"#{t.id}")

    def find(self, name: str) -> Tensor:
        """The tensor with this label; KeyError if none."""
        for t in self.leafs + self.nodes:
            if self.label(t) == name:
                return t
        raise KeyError(name)

    @property
    def inputs(self) -> list[Tensor]:
        return [t for t in self.leafs if t.flags & Flag.INPUT]

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return f"Graph({len(self.nodes)} nodes, {len(self.leafs)} leafs)"

    def to_text(self) -> str:
        from .dump import to_text
        return to_text(self)

    def to_dot(self) -> str:
        from .dump import to_dot
        return to_dot(self)

    def to_json(self) -> str:
        from .dump import to_json
        return to_json(self)

    @classmethod
    def from_json(cls, text: str) -> Graph:
        from .dump import from_json
        return from_json(text)

    def render(self, path: str) -> str:
        """Write the graph as SVG/PNG/PDF (by the path's suffix) through Graphviz `dot`."""
        from .dump import render
        return render(self, path)
