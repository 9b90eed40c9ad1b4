"""Dequantization against gguf.quants.dequantize, bit for bit: random blocks and the reference models."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from op_cases import random_blocks
from pyggml.backends.quants import FORMATS, dequantize, dequantize_rows
from pyggml.graph.dtypes import DType
from pyggml.graph.errors import PyggmlError
from pyggml.model.gguf_file import GGUFFile

BLOCK_TYPES = sorted(FORMATS, key=lambda t: t.value)
QUANTIZABLE = [DType.Q4_0, DType.Q4_1, DType.Q5_0, DType.Q5_1, DType.Q8_0]  # gguf can quantize these
GEMMA_EMBEDDING_ROWS = 1 << 15  # compare gemma's 262144-row embedding in slices to bound memory


def bits(a: np.ndarray) -> np.ndarray:
    """float32 values as their bit patterns, so that -0.0 != 0.0 and NaN payloads count."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_bitwise_equal(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.dtype == np.float32
    assert ours.shape == reference.shape
    np.testing.assert_array_equal(bits(ours), bits(reference))


def reference(raw: np.ndarray, dtype: DType) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf.quants.dequantize(raw, dtype)


@pytest.mark.parametrize("dtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_random_blocks_match_gguf(dtype: DType) -> None:
    rng = np.random.default_rng(dtype.value)
    block_size, _ = gguf.GGML_QUANT_SIZES[dtype]
    # enough blocks to span several chunks, with a ragged last chunk
    rows, per_row = 37, max(1, 300_000 // block_size // 37 + 1)
    raw = random_blocks(dtype, rows, per_row, rng)
    assert_bitwise_equal(dequantize(raw, dtype, (rows, per_row * block_size)), reference(raw, dtype))


@pytest.mark.parametrize("dtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_arbitrary_bytes_match_gguf_including_nan_and_inf(dtype: DType) -> None:
    rng = np.random.default_rng(100 + dtype.value)
    block_size, type_size = gguf.GGML_QUANT_SIZES[dtype]
    raw = rng.integers(0, 256, (5, 3 * type_size), dtype=np.uint8)
    assert_bitwise_equal(dequantize(raw, dtype, (5, 3 * block_size)), reference(raw, dtype))


@pytest.mark.parametrize("dtype", QUANTIZABLE, ids=lambda t: t.name)
def test_quantized_real_values_match_gguf(dtype: DType) -> None:
    values = np.random.default_rng(7).standard_normal((4, 3, 256)).astype(np.float32)
    raw = gguf.quants.quantize(values, dtype)
    assert_bitwise_equal(dequantize(raw, dtype, values.shape), reference(raw, dtype))


def test_plain_types_match_gguf() -> None:
    values = np.random.default_rng(3).standard_normal((6, 64)).astype(np.float32)
    assert_bitwise_equal(dequantize(values, DType.F32, values.shape), values)
    half = values.astype(np.float16)
    assert_bitwise_equal(dequantize(half, DType.F16, values.shape), reference(half, DType.F16))
    brain = (values.view(np.uint32) >> 16).astype(np.uint16)
    assert_bitwise_equal(dequantize(brain.view(np.uint8), DType.BF16, values.shape), reference(brain.view(np.uint8), DType.BF16))


def test_integer_type_converts_to_float() -> None:
    ints = np.arange(-5, 7, dtype=np.int32).reshape(3, 4)
    np.testing.assert_array_equal(dequantize(ints, DType.I32, (3, 4)), ints.astype(np.float32))


@pytest.mark.parametrize("dtype", [DType.IQ4_NL, DType.TQ2_0], ids=lambda t: t.name)
def test_other_types_fall_back_to_gguf(dtype: DType) -> None:
    block_size, type_size = gguf.GGML_QUANT_SIZES[dtype]
    raw = np.random.default_rng(5).integers(0, 256, (3, 2 * type_size), dtype=np.uint8)
    assert_bitwise_equal(dequantize(raw, dtype, (3, 2 * block_size)), reference(raw, dtype))


def test_unknown_type_id_is_named() -> None:
    with pytest.raises(PyggmlError, match="99"):
        dequantize(np.zeros(64, np.uint8), 99, (32,))


def test_type_without_dequantizer_is_an_error() -> None:
    block_size, type_size = gguf.GGML_QUANT_SIZES[DType.Q8_K]
    with pytest.raises(PyggmlError, match="Q8_K"):
        dequantize(np.zeros(type_size, np.uint8), DType.Q8_K, (block_size,))


def test_wrong_byte_count_is_an_error() -> None:
    with pytest.raises(PyggmlError, match="bytes"):
        dequantize(np.zeros(35, np.uint8), DType.Q8_0, (32,))


def test_row_not_multiple_of_block_is_an_error() -> None:
    with pytest.raises(PyggmlError, match="block"):
        dequantize(np.zeros(34, np.uint8), DType.Q8_0, (16, 2))


@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_K, DType.Q6_K, DType.F16], ids=lambda t: t.name)
def test_dequantize_rows_equals_full_dequantize_indexed(dtype: DType) -> None:
    rng = np.random.default_rng(11)
    n_rows, row_len = 50, 512
    if dtype == DType.F16:
        raw = rng.standard_normal((n_rows, row_len)).astype(np.float16)
    else:
        raw = random_blocks(dtype, n_rows, row_len // gguf.GGML_QUANT_SIZES[dtype][0], rng)
    rows = np.array([3, 0, 49, 3, -1, 17], dtype=np.int32)
    full = reference(raw, dtype).reshape(n_rows, row_len)
    assert_bitwise_equal(dequantize_rows(raw, dtype, rows, row_len), full[rows])
    assert dequantize_rows(raw, dtype, np.array([], np.int64), row_len).shape == (0, row_len)


def test_dequantize_rows_rejects_bad_indices() -> None:
    raw = np.zeros((4, 34), np.uint8)
    with pytest.raises(PyggmlError, match="out of range"):
        dequantize_rows(raw, DType.Q8_0, np.array([4]), 32)
    with pytest.raises(PyggmlError, match="integers"):
        dequantize_rows(raw, DType.Q8_0, np.array([1.0]), 32)
    with pytest.raises(PyggmlError, match="2-D"):
        dequantize_rows(raw.reshape(-1), DType.Q8_0, np.array([1]), 32)


@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_every_tensor_of_the_reference_models_matches_gguf(model: str, request: pytest.FixtureRequest) -> None:
    gguf_file = GGUFFile(request.getfixturevalue(model))
    for name, info in gguf_file.tensors.items():
        raw = gguf_file.tensor_data(name)
        for start in range(0, max(1, info.shape[0]), GEMMA_EMBEDDING_ROWS):
            part = raw[start:start + GEMMA_EMBEDDING_ROWS] if len(info.shape) > 1 else raw
            shape = part.shape[:-1] + info.shape[-1:]
            assert_bitwise_equal(dequantize(part, info.dtype, shape), reference(part, info.dtype).reshape(shape))
