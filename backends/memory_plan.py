"""Memory planning (as ggml-alloc): one arena per backend, each intermediate released after its last reader."""
from __future__ import annotations

from dataclasses import dataclass

from pyggml.graph.tensor import Tensor
from pyggml.ops import is_view, is_write, spec

ALIGNMENT = 64


def storage_owner(t: Tensor) -> Tensor:
    """The tensor whose storage t uses."""
    return t.view_src if t.view_src is not None else t


def owns_storage(node: Tensor) -> bool:
    """True for nodes that need storage of their own (not views, not writes into another tensor)."""
    return not is_view(node.op) and not is_write(node.op)


@dataclass
class Slot:
    """Where an intermediate lives in the arena, and the node indices of its first and last use."""
    offset: int
    size: int
    first: int
    last: int
    inplace_of: str = ""


class ArenaAllocator:
    """First-fit allocation with coalescing free blocks; the arena grows to the peak in use."""

    def __init__(self):
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted by offset
        self.size = 0

    def alloc(self, size: int) -> int:
        size = -(-size // ALIGNMENT) * ALIGNMENT
        for i, (off, avail) in enumerate(self.free):
            if avail >= size:
                self.free[i:i + 1] = [(off + size, avail - size)] if avail > size else []
                return off
        if self.free and self.free[-1][0] + self.free[-1][1] == self.size:  # grow the trailing free block
            off = self.free.pop()[0]
        else:
            off = self.size
        self.size = off + size
        return off

    def release(self, offset: int, size: int) -> None:
        size = -(-size // ALIGNMENT) * ALIGNMENT
        self.free.append((offset, size))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for off, n in self.free:
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((off, n))
        self.free = merged


def last_uses(nodes: list[Tensor]) -> dict[Tensor, int]:
    """Index of the last node that reads each storage owner (directly or through a view)."""
    last: dict[Tensor, int] = {}
    for i, node in enumerate(nodes):
        last.setdefault(storage_owner(node), i)
        for src in node.srcs:
            last[storage_owner(src)] = i
    return last


def plan_memory(nodes: list[Tensor], keep: set[Tensor], labels=str) -> tuple[dict[Tensor, Slot], int]:
    """Arena slots for the nodes that own storage; `keep` (outputs) are never released or overwritten."""
    last = last_uses(nodes)
    arena = ArenaAllocator()
    slots: dict[Tensor, Slot] = {}
    live: set[Tensor] = set()  # owners whose slot is still theirs (not released, not handed on in place)
    for i, node in enumerate(nodes):
        if owns_storage(node):
            src = storage_owner(node.srcs[0]) if node.srcs else None
            if spec(node.op).inplace and src in live and src not in keep and last[src] == i \
                    and slots[src].size == node.nbytes and src.shape == node.shape and node.srcs[0].is_contiguous:
                live.remove(src)
                slots[node] = Slot(slots[src].offset, node.nbytes, i, last[node], labels(src))
            else:
                slots[node] = Slot(arena.alloc(node.nbytes), node.nbytes, i, last[node])
            live.add(node)
        for owner in {storage_owner(s) for s in node.srcs} | {node}:
            if owner in live and owner not in keep and last[owner] == i:
                live.remove(owner)
                arena.release(slots[owner].offset, slots[owner].size)
    return slots, arena.size
