"""Random GGUF blocks for the tests: arbitrary packed values with finite, moderate float16 scales."""
from __future__ import annotations

import gguf
import numpy as np

from pyggml.backends.quants import F16_FIELDS
from pyggml.graph.dtypes import DType


def random_blocks(dtype: DType, rows: int, blocks_per_row: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, bytes per row) of random blocks whose float16 scale fields are finite and moderate."""
    _, type_size = gguf.GGML_QUANT_SIZES[dtype]
    blocks = rng.integers(0, 256, (rows * blocks_per_row, type_size), dtype=np.uint8)
    for offset in F16_FIELDS[dtype]:
        scales = rng.uniform(-2.0, 2.0, len(blocks)).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)
