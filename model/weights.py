"""A GGUF file's tensors as graph leafs carrying their memory-mapped blocks, named by gguf's constants."""
from __future__ import annotations

from gguf import MODEL_TENSOR, TENSOR_NAMES

from pyggml.graph.errors import PyggmlError
from pyggml.graph.tensor import Flag, Tensor

from .gguf_file import GGUFFile


class Weights:
    """Leaf tensors for a file's weights, made once each (so every graph shares them and backends place
    them once)."""

    def __init__(self, gguf: GGUFFile):
        self.gguf = gguf
        self._leafs: dict[str, Tensor] = {}

    def name(self, kind: MODEL_TENSOR, il: int | None = None, suffix: str = "weight") -> str:
        """The GGUF name of a tensor kind, e.g. blk.3.attn_q.weight."""
        base = TENSOR_NAMES[kind].format(bid=il) if il is not None else TENSOR_NAMES[kind]
        return f"{base}.{suffix}"

    def has(self, kind: MODEL_TENSOR, il: int | None = None, suffix: str = "weight") -> bool:
        return self.name(kind, il, suffix) in self.gguf.tensors

    def get(self, kind: MODEL_TENSOR, il: int | None = None, suffix: str = "weight") -> Tensor:
        """The leaf of a tensor; a missing one is an error naming the file and tensor."""
        name = self.name(kind, il, suffix)
        if name not in self._leafs:
            info = self.gguf.tensors.get(name)
            if info is None:
                raise PyggmlError(f"{self.gguf.path}: tensor {name} is missing")
            self._leafs[name] = Tensor(info.shape, info.dtype, name=name, flags=Flag.WEIGHT,
                                       data=self.gguf.tensor_data(name))
        return self._leafs[name]

    def get_optional(self, kind: MODEL_TENSOR, il: int | None = None, suffix: str = "weight") -> Tensor | None:
        """The leaf of a tensor, or None when the file has none."""
        return self.get(kind, il, suffix) if self.has(kind, il, suffix) else None
