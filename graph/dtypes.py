"""Dtypes: gguf's GGMLQuantizationType numbering, with NumPy dtypes and block layouts."""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as DType

from .block_layouts import BLOCKS
from .errors import PyggmlError

F32, F16, BF16, I32, I64 = DType.F32, DType.F16, DType.BF16, DType.I32, DType.I64

# Plain (non-block) types and the NumPy dtype that holds one element; BF16 is held as raw uint16.
NUMPY_DTYPES: dict[DType, np.dtype] = {
    DType.F32: np.dtype(np.float32), DType.F16: np.dtype(np.float16), DType.BF16: np.dtype(np.uint16),
    DType.F64: np.dtype(np.float64), DType.I8: np.dtype(np.int8), DType.I16: np.dtype(np.int16),
    DType.I32: np.dtype(np.int32), DType.I64: np.dtype(np.int64),
}
FLOAT_TYPES = frozenset({DType.F32, DType.F16, DType.BF16})
INDEX_TYPES = frozenset({DType.I32, DType.I64})
# Block types whose rows set_rows writes (quantized as ggml's reference quantizers do) and the attention ops read:
# the quantized KV cache types (llama.cpp's --cache-type-k/-v q8_0, q4_0)
ROW_QUANT_TYPES = frozenset({DType.Q8_0, DType.Q4_0})


def as_dtype(value: DType | int | str | np.dtype | type) -> DType:
    """Coerce a GGML type id, its name ('q4_k') or a NumPy dtype to a DType."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str) and value.upper() in DType.__members__:
        return DType[value.upper()]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        try:
            return DType(int(value))
        except ValueError:
            raise PyggmlError(f"unknown ggml type id {value}") from None
    np_dtype = np.dtype(value)
    for dtype, held in NUMPY_DTYPES.items():
        if held == np_dtype and dtype != DType.BF16:
            return dtype
    raise PyggmlError(f"no ggml type for {value!r}")


def is_quantized(dtype: DType) -> bool:
    """True for block-quantized types (storage is blocks, not elements)."""
    return dtype not in NUMPY_DTYPES


def block_layout(dtype: DType) -> tuple[int, int]:
    """(elements per block, bytes per block) of a type; (1, itemsize) for plain types."""
    if dtype in BLOCKS:
        return BLOCKS[dtype].elements, BLOCKS[dtype].nbytes
    if dtype in NUMPY_DTYPES:
        return 1, NUMPY_DTYPES[dtype].itemsize
    try:  # types pyggml only maps and sizes (no kernels, so no layout row): gguf-py's sizes
        return GGML_QUANT_SIZES[dtype]
    except KeyError:
        raise PyggmlError(f"unknown ggml type {dtype!r}") from None


def nbytes(shape: tuple[int, ...], dtype: DType) -> int:
    """Storage bytes of a contiguous tensor; the innermost dim must fill whole blocks."""
    block, size = block_layout(dtype)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if shape and shape[-1] % block:
        raise PyggmlError(f"{dtype.name}: row of {shape[-1]} elements is not a multiple of the block size {block}")
    return n // block * size


def numpy_dtype(dtype: DType) -> np.dtype:
    """The NumPy dtype that holds one element of a plain type."""
    try:
        return NUMPY_DTYPES[dtype]
    except KeyError:
        raise PyggmlError(f"{dtype.name} is block-quantized: it has no per-element NumPy dtype") from None
