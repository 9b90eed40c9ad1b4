"""The block-layout table against gguf-py's sizes, and every backend's kernel tables against the layout table."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from pyggml.backends import quants
from pyggml.backends.cupy import cuda_sources, quants as cupy_quants
from pyggml.backends.numba import q8 as numba_q8, quants as numba_quants, tiles as numba_tiles
from pyggml.graph.block_layouts import BLOCKS
from pyggml.graph.dtypes import DType, block_layout

ROWS = sorted(BLOCKS.values(), key=lambda row: row.dtype.value)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.dtype.name)
def test_sizes_match_gguf_py_and_fields_tile_the_block(row):
    assert (row.elements, row.nbytes) == gguf.GGML_QUANT_SIZES[row.dtype]
    assert block_layout(row.dtype) == gguf.GGML_QUANT_SIZES[row.dtype]
    ends = [0] + [f.offset + f.size for f in row.fields]
    assert [f.offset for f in row.fields] == ends[:-1] and ends[-1] == row.nbytes
    assert len({f.name for f in row.fields}) == len(row.fields)


def test_plain_types_are_one_element_units():
    assert block_layout(DType.F16) == (1, 2) and block_layout(DType.F32) == (1, 4)


@pytest.mark.parametrize("dtype", sorted(quants.FORMATS, key=lambda t: t.value), ids=lambda t: t.name)
def test_scale_fields_are_the_ones_gguf_py_reads(dtype):
    """Zeroing the bytes of the table's float16 scale fields zeroes gguf-py's dequantized block, and nothing
    else does so for every block."""
    rng = np.random.default_rng(dtype.value)
    blocks = rng.integers(0, 256, (64, BLOCKS[dtype].nbytes), dtype=np.uint8)
    for offset in BLOCKS[dtype].scalars():
        blocks[:, offset:offset + 2] = rng.uniform(0.5, 2, (64, 1)).astype(np.float16).view(np.uint8)
    zeroed = blocks.copy()
    for offset in BLOCKS[dtype].scalars():
        zeroed[:, offset:offset + 2] = 0
    assert np.all(gguf.quants.dequantize(zeroed, dtype) == 0)
    assert np.count_nonzero(gguf.quants.dequantize(blocks, dtype)) > 0


def test_kernel_tables_derive_from_the_layout_table():
    for dtype, kernels in numba_quants.BLOCK_TYPES.items():
        assert (kernels.block, kernels.type_size) == numba_quants.kernel_unit(dtype)
        assert numba_tiles.TILE_FORMATS[dtype][:2] == (kernels.block, kernels.type_size)
    assert numba_quants.kernel_unit(DType.F16) == (numba_quants.F16_UNIT, 2 * numba_quants.F16_UNIT)
    for dtype, tiled in numba_q8.TILE_LAYOUTS.items():  # a one-row tile: the float16 scalars, then every field
        plain = np.random.default_rng(1).integers(0, 256, (1, BLOCKS[dtype].nbytes), dtype=np.uint8)
        packed = numba_q8.repack(dtype, plain)[0]
        first = BLOCKS[dtype].scalars()[0]
        assert (packed[:tiled.header_bytes] == plain[0, first:first + tiled.header_bytes]).all()
        for field in BLOCKS[dtype].fields:
            at = tiled.header_bytes + 4 * numba_q8.word_of(dtype, field.name)
            stored = plain[0, field.offset:field.offset + field.size]
            assert field.kind == "f16" or (packed[at:at + field.size] == stored).all()
    assert set(numba_q8.Q8_FORMATS) <= set(numba_q8.TILE_LAYOUTS)
    for name, size in cuda_sources.BLOCK_TYPES.items():
        assert size == block_layout(DType[name.upper()])
    assert set(cupy_quants.DEVICE_FORMATS) <= set(BLOCKS)


def test_cuda_defines_name_every_field_offset():
    defines = dict(line.split()[1:] for line in cuda_sources.layout_defines().splitlines())
    for dtype in cuda_sources.DEVICE_TYPES:
        for field in BLOCKS.get(dtype, ()) and BLOCKS[dtype].fields:
            assert int(defines[f"{dtype.name}_{field.name.upper()}"]) == field.offset
    assert "#define Q6_K_D 208" in cuda_sources.source()
