"""Every block type's layout, written once, as ggml-common.h does: its fields in order (name, offset, size, kind)
and its (elements, bytes).

A field's kind is how its bytes are read: "f16" / "f32" scalars, "i8" / "u8" / "i16" arrays, or "bits" for packed
integer values whose unpacking is the type's kernels' business. Every backend's kernels (NumPy, numba, the LLVM IR
tiles, numba-q8, CuPy and the CUDA sources) take their offsets from here; tests/test_block_layouts.py checks each
consumer against it and every size against gguf-py's.
"""
from __future__ import annotations

from typing import NamedTuple

from gguf import GGMLQuantizationType as DType

QK_K = 256  # values per block of the K-quants (ggml's QK_K)


class Field(NamedTuple):
    """One field of a block: its name, byte offset, size in bytes and kind."""
    name: str
    offset: int
    size: int
    kind: str


class BlockLayout(NamedTuple):
    """A block type: values per block, bytes per block and its fields in storage order."""
    dtype: DType
    elements: int
    nbytes: int
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field:
        """The field called name (KeyError naming the type if there is none)."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.dtype.name} has no field {name!r}")

    def at(self, name: str) -> int:
        """The byte offset of field name."""
        return self.field(name).offset

    def scalars(self, kind: str = "f16") -> tuple[int, ...]:
        """Offsets of the scalar fields of a kind (the float16 d, dmin or m), in storage order."""
        return tuple(f.offset for f in self.fields if f.kind == kind and f.size == _SCALAR_BYTES[kind])


_SCALAR_BYTES = {"f16": 2, "f32": 4}


def _layout(dtype: DType, elements: int, *fields: tuple[str, str, int]) -> BlockLayout:
    """A row: fields given as (name, kind, bytes) in order, packed as ggml's structs are (no padding)."""
    placed, offset = [], 0
    for name, kind, size in fields:
        placed.append(Field(name, offset, size, kind))
        offset += size
    return BlockLayout(dtype, elements, offset, tuple(placed))


# ggml-common.h's block_* structs, field for field
BLOCKS: dict[DType, BlockLayout] = {row.dtype: row for row in (
    _layout(DType.Q4_0, 32, ("d", "f16", 2), ("qs", "bits", 16)),
    _layout(DType.Q4_1, 32, ("d", "f16", 2), ("m", "f16", 2), ("qs", "bits", 16)),
    _layout(DType.Q5_0, 32, ("d", "f16", 2), ("qh", "bits", 4), ("qs", "bits", 16)),
    _layout(DType.Q5_1, 32, ("d", "f16", 2), ("m", "f16", 2), ("qh", "bits", 4), ("qs", "bits", 16)),
    _layout(DType.Q8_0, 32, ("d", "f16", 2), ("qs", "i8", 32)),
    _layout(DType.Q2_K, QK_K, ("scales", "bits", 16), ("qs", "bits", 64), ("d", "f16", 2), ("dmin", "f16", 2)),
    _layout(DType.Q3_K, QK_K, ("hmask", "bits", 32), ("qs", "bits", 64), ("scales", "bits", 12), ("d", "f16", 2)),
    _layout(DType.Q4_K, QK_K, ("d", "f16", 2), ("dmin", "f16", 2), ("scales", "bits", 12), ("qs", "bits", 128)),
    _layout(DType.Q5_K, QK_K, ("d", "f16", 2), ("dmin", "f16", 2), ("scales", "bits", 12), ("qh", "bits", 32),
            ("qs", "bits", 128)),
    _layout(DType.Q6_K, QK_K, ("ql", "bits", 128), ("qh", "bits", 64), ("scales", "i8", 16), ("d", "f16", 2)),
    _layout(DType.Q8_K, QK_K, ("d", "f32", 4), ("qs", "i8", QK_K), ("bsums", "i16", 32)),
    _layout(DType.IQ4_NL, 32, ("d", "f16", 2), ("qs", "bits", 16)),
    _layout(DType.IQ4_XS, QK_K, ("d", "f16", 2), ("scales_h", "bits", 2), ("scales_l", "bits", 4),
            ("qs", "bits", 128)),
)}
