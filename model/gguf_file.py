"""A fast, defensive GGUF v2/v3 reader: metadata as Python values, tensors as views on a memory map."""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUFValueType, Keys

from pyggml.graph.dtypes import DType, block_layout, is_quantized, numpy_dtype
from pyggml.graph.errors import PyggmlError

SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS

# Fixed-size metadata value types -> the little-endian NumPy dtype of one value.
SCALAR_DTYPES: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"), GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"), GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"), GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.UINT64: np.dtype("<u8"), GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT32: np.dtype("<f4"), GGUFValueType.FLOAT64: np.dtype("<f8"),
    GGUFValueType.BOOL: np.dtype("<u1"),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# the smallest encodings, used to bound counts by the bytes left before allocating anything
_MIN_KV_BYTES = 8 + 4 + 1          # empty key, type, one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims = 0, type, offset


class GGUFError(PyggmlError):
    """A GGUF file is malformed, truncated or uses something this reader does not support."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: shape in NumPy order, dtype, absolute file offset and size in bytes."""

    name: str
    shape: tuple[int, ...]
    dtype: DType
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        """Number of elements (the product of the shape)."""
        n = 1
        for dim in self.shape:
            n *= dim
        return n


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every overrun is a GGUFError."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.path, self.pos, self.end = buf, path, 0, len(buf)

    def fail(self, problem: str) -> GGUFError:
        """An error naming the file and the problem."""
        return GGUFError(f"{self.path}: {problem}")

    def need(self, size: int, what: str) -> int:
        """Reserve `size` bytes for `what` and return where they start."""
        start = self.pos
        if size < 0 or start + size > self.end:
            raise self.fail(f"truncated: {what} needs {size} bytes at offset {start}, file has {self.end}")
        self.pos = start + size
        return start

    def u32(self, what: str) -> int:
        """One uint32."""
        return _U32.unpack_from(self.buf, self.need(4, what))[0]

    def u64(self, what: str) -> int:
        """One uint64."""
        return _U64.unpack_from(self.buf, self.need(8, what))[0]

    def string(self, what: str) -> str:
        """One length-prefixed UTF-8 string (undecodable bytes kept as surrogate escapes)."""
        size = self.u64(f"length of {what}")
        start = self.need(size, what)
        return self.buf[start:start + size].decode("utf-8", "surrogateescape")

    def count(self, what: str, min_item_bytes: int) -> int:
        """A uint64 count, rejected when that many items cannot fit in the rest of the file."""
        n = self.u64(what)
        if n * min_item_bytes > self.end - self.pos:
            raise self.fail(f"absurd {what} {n}: only {self.end - self.pos} bytes left")
        return n

    def value_type(self, what: str) -> GGUFValueType:
        """A metadata value type id."""
        type_id = self.u32(f"type of {what}")
        try:
            return GGUFValueType(type_id)
        except ValueError:
            raise self.fail(f"unknown value type {type_id} for {what}") from None

    def value(self, vtype: GGUFValueType, what: str) -> Any:
        """One metadata value of the given type as a Python scalar, str, list or NumPy array."""
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY:
            return self.array(what)
        dtype = SCALAR_DTYPES[vtype]
        raw = np.frombuffer(self.buf, dtype, 1, self.need(dtype.itemsize, what))[0]
        return bool(raw) if vtype == GGUFValueType.BOOL else raw.item()

    def array(self, what: str) -> Any:
        """An array value: list[str] for strings, a NumPy array for numbers, a list for nested arrays."""
        etype = self.value_type(f"elements of {what}")
        if etype == GGUFValueType.STRING:
            return self.strings(self.count(f"string count of {what}", 8), what)
        if etype == GGUFValueType.ARRAY:
            return [self.array(f"{what}[{i}]") for i in range(self.count(f"array count of {what}", 12))]
        dtype = SCALAR_DTYPES[etype]
        n = self.count(f"element count of {what}", dtype.itemsize)
        data = np.frombuffer(self.buf, dtype, n, self.need(n * dtype.itemsize, what))
        return data.astype(bool) if etype == GGUFValueType.BOOL else data.astype(dtype.newbyteorder("="))

    def strings(self, n: int, what: str) -> list[str]:
        """n length-prefixed strings: one tight loop over the region (vocabularies have 10^5 of them)."""
        buf, pos, end, unpack = self.buf, self.pos, self.end, _U64.unpack_from
        out: list[str] = [""] * n
        for i in range(n):
            if pos + 8 > end:
                raise self.fail(f"truncated: length of {what}[{i}] at offset {pos}")
            size = unpack(buf, pos)[0]
            pos += 8
            if size > end - pos:
                raise self.fail(f"absurd string length {size} in {what}[{i}] at offset {pos - 8}")
            # slicing the mmap copies straight into a bytes object, faster than a memoryview slice
            out[i] = buf[pos:pos + size].decode("utf-8", "surrogateescape")
            pos += size
        self.pos = pos
        return out


class GGUFFile:
    """A GGUF file opened by memory map: `.metadata`, `.tensors` and zero-copy `.tensor_data(name)`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._mmap = _map(self.path)
        cursor = _Cursor(self._mmap, self.path)
        self.version = _read_header(cursor)
        n_tensors = cursor.count("tensor count", _MIN_TENSOR_INFO_BYTES)
        self.metadata: dict[str, Any] = _read_metadata(cursor, cursor.count("metadata count", _MIN_KV_BYTES))
        self.alignment = _alignment(cursor, self.metadata)
        raw_infos = [_read_tensor_info(cursor) for _ in range(n_tensors)]
        data_start = -(-cursor.pos // self.alignment) * self.alignment
        self.tensors: dict[str, TensorInfo] = _place_tensors(cursor, raw_infos, data_start, self.alignment)

    @property
    def architecture(self) -> str:
        """general.architecture (e.g. 'llama', 'gemma3')."""
        arch = self.metadata.get(Keys.General.ARCHITECTURE)
        if not isinstance(arch, str):
            raise GGUFError(f"{self.path}: no {Keys.General.ARCHITECTURE} string in the metadata")
        return arch

    def tensor_data(self, name: str) -> np.ndarray:
        """Read-only view of a tensor's storage: typed elements of `shape`, or (rows..., bytes per row) uint8."""
        try:
            info = self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor named {name!r}") from None
        if is_quantized(info.dtype):
            block_size, type_size = block_layout(info.dtype)
            row_bytes = info.shape[-1] // block_size * type_size if info.shape else info.nbytes
            return np.frombuffer(self._mmap, np.uint8, info.nbytes, info.offset).reshape(info.shape[:-1] + (row_bytes,))
        dtype = numpy_dtype(info.dtype)
        return np.frombuffer(self._mmap, dtype, info.n_elements, info.offset).reshape(info.shape)

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.metadata)} keys, {len(self.tensors)} tensors)"


def _map(path: Path) -> mmap.mmap:
    """Memory-map a file read-only."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise GGUFError(f"{path}: empty file, not a GGUF model")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise GGUFError(f"{path}: cannot open: {e.strerror or e}") from None


def _read_header(cursor: _Cursor) -> int:
    """Check the magic and version; return the version."""
    magic = cursor.u32("magic")
    if magic != GGUF_MAGIC:
        raise cursor.fail(f"not a GGUF file (magic {magic:#010x}, expected {GGUF_MAGIC:#010x} 'GGUF')")
    version = cursor.u32("version")
    if version not in SUPPORTED_VERSIONS:
        if int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
            raise cursor.fail("big-endian GGUF files are not supported")
        raise cursor.fail(f"unsupported GGUF version {version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    return version


def _read_metadata(cursor: _Cursor, n: int) -> dict[str, Any]:
    """n key/value pairs; a repeated key is an error."""
    metadata: dict[str, Any] = {}
    for i in range(n):
        key = cursor.string(f"key of metadata entry {i}")
        if key in metadata:
            raise cursor.fail(f"duplicate metadata key {key!r}")
        metadata[key] = cursor.value(cursor.value_type(key), key)
    return metadata


def _alignment(cursor: _Cursor, metadata: dict[str, Any]) -> int:
    """general.alignment (default 32); it must be a power of two."""
    alignment = metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment & (alignment - 1):
        raise cursor.fail(f"{Keys.General.ALIGNMENT} must be a power of two, got {alignment!r}")
    return alignment


def _read_tensor_info(cursor: _Cursor) -> tuple[str, tuple[int, ...], DType, int]:
    """One tensor info: (name, shape in NumPy order, dtype, offset relative to the data section)."""
    name = cursor.string("tensor name")
    n_dims = cursor.u32(f"n_dims of tensor {name!r}")
    if n_dims > MAX_DIMS:
        raise cursor.fail(f"tensor {name!r} has {n_dims} dimensions, at most {MAX_DIMS} are supported")
    ne = [cursor.u64(f"dimension {i} of tensor {name!r}") for i in range(n_dims)]
    type_id = cursor.u32(f"type of tensor {name!r}")
    try:
        dtype = DType(type_id)
        block_size, _ = block_layout(dtype)
    except (ValueError, PyggmlError):
        raise cursor.fail(f"tensor {name!r} has unknown type id {type_id}") from None
    if ne and ne[0] % block_size:
        raise cursor.fail(f"tensor {name!r}: row of {ne[0]} elements is not a multiple of the {dtype.name} block size {block_size}")
    offset = cursor.u64(f"offset of tensor {name!r}")
    return name, tuple(reversed(ne)), dtype, offset  # GGUF stores ggml ne order: innermost first


def _place_tensors(cursor: _Cursor, infos: list[tuple[str, tuple[int, ...], DType, int]],
                   data_start: int, alignment: int) -> dict[str, TensorInfo]:
    """TensorInfos with absolute offsets, checked to be aligned, inside the file and not overlapping."""
    tensors: dict[str, TensorInfo] = {}
    for name, shape, dtype, offset in infos:
        if name in tensors:
            raise cursor.fail(f"duplicate tensor name {name!r}")
        if offset % alignment:
            raise cursor.fail(f"tensor {name!r} offset {offset} is not a multiple of the alignment {alignment}")
        block_size, type_size = block_layout(dtype)
        n_elements = 1
        for dim in shape:
            n_elements *= dim
        size = n_elements // block_size * type_size
        start = data_start + offset
        if start + size > cursor.end:
            raise cursor.fail(f"tensor {name!r} ({dtype.name} {shape}, {size} bytes at offset {start}) "
                              f"extends past the end of the file ({cursor.end} bytes)")
        tensors[name] = TensorInfo(name, shape, dtype, start, size)
    ordered = sorted(tensors.values(), key=lambda t: t.offset)
    for before, after in zip(ordered, ordered[1:]):
        if before.offset + before.nbytes > after.offset:
            raise cursor.fail(f"tensors {before.name!r} and {after.name!r} overlap")
    return tensors
