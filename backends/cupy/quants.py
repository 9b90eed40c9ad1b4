"""GGUF blocks dequantized on the device with array functions only (cupy, or anything with its API).

Each type is written element by element, as the CUDA kernels in cuda_sources.py dequantize: element i of a block
is (integer value at a byte position, shifted and masked) times its group's scale, plus or minus an offset. The
byte positions and shifts are index tables, computed once on the host and uploaded once per module; field offsets
come from the block-layout table (graph/block_layouts.py).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pyggml.graph.block_layouts import BLOCKS, BlockLayout
from pyggml.graph.dtypes import DType, block_layout

F32 = np.float32


class Dequantizer:
    """Dequantizes (n_blocks, type_size) uint8 device arrays into (n_blocks, block_size) float32 ones."""

    def __init__(self, xp: Any):
        self.xp = xp
        self._tables: dict[tuple, Any] = {}

    def table(self, name: str, values: np.ndarray) -> Any:
        """A constant index table on the device, uploaded once."""
        if name not in self._tables:
            self._tables[name] = self.xp.asarray(np.asarray(values, np.int32))
        return self._tables[name]

    def gather(self, blocks: Any, name: str, positions: np.ndarray) -> Any:
        """blocks[:, positions] as int32 (n, len(positions))."""
        return blocks[:, self.table(name, positions)].astype(np.int32)

    def f16(self, blocks: Any, at: int) -> Any:
        """The float16 at byte `at` of every block, as a float32 (n, 1) column."""
        return self.xp.ascontiguousarray(blocks[:, at:at + 2]).view(np.float16).astype(F32)

    def __call__(self, blocks: Any, dtype: DType) -> Any:
        return DEVICE_FORMATS[dtype](self, blocks)


def _nibble_values(dq: Dequantizer, b: Any, qs_at: int, name: str) -> Any:
    """Q4_0/Q4_1/Q5 low bits: element i is the low (i < 16) or high nibble of byte qs_at + i % 16."""
    i = np.arange(32)
    return (dq.gather(b, f"{name}.qs", qs_at + i % 16) >> dq.table("q4.shift", 4 * (i // 16))) & 15


def _fifth_bits(dq: Dequantizer, b: Any, qh_at: int, name: str) -> Any:
    """Q5_0/Q5_1: bit i of the little-endian uint32 qh, as bit 4 of element i."""
    i = np.arange(32)
    return ((dq.gather(b, f"{name}.qh", qh_at + i // 8) >> dq.table("q5.shift", i % 8)) & 1) << 4


def _bytes(b: Any, layout: BlockLayout, name: str) -> Any:
    """The bytes of field name of every block, (n, size)."""
    f = layout.field(name)
    return b[:, f.offset:f.offset + f.size]


Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K = (BLOCKS[t] for t in (
    DType.Q4_0, DType.Q4_1, DType.Q5_0, DType.Q5_1, DType.Q8_0, DType.Q4_K, DType.Q5_K, DType.Q6_K))


def _q4_0(dq: Dequantizer, b: Any) -> Any:
    return (_nibble_values(dq, b, Q4_0.at("qs"), "q4_0") - 8).astype(F32) * dq.f16(b, Q4_0.at("d"))


def _q4_1(dq: Dequantizer, b: Any) -> Any:
    q = _nibble_values(dq, b, Q4_1.at("qs"), "q4_1")
    return q.astype(F32) * dq.f16(b, Q4_1.at("d")) + dq.f16(b, Q4_1.at("m"))


def _q5_0(dq: Dequantizer, b: Any) -> Any:
    q = _nibble_values(dq, b, Q5_0.at("qs"), "q5_0") | _fifth_bits(dq, b, Q5_0.at("qh"), "q5_0")
    return (q - 16).astype(F32) * dq.f16(b, Q5_0.at("d"))


def _q5_1(dq: Dequantizer, b: Any) -> Any:
    q = _nibble_values(dq, b, Q5_1.at("qs"), "q5_1") | _fifth_bits(dq, b, Q5_1.at("qh"), "q5_1")
    return q.astype(F32) * dq.f16(b, Q5_1.at("d")) + dq.f16(b, Q5_1.at("m"))


def _q8_0(dq: Dequantizer, b: Any) -> Any:
    return dq.xp.ascontiguousarray(_bytes(b, Q8_0, "qs")).view(np.int8).astype(F32) * dq.f16(b, Q8_0.at("d"))


def _k_scales_mins(dq: Dequantizer, b: Any) -> tuple[Any, Any]:
    """Q4_K/Q5_K: the 8 six-bit scales and mins of each block (ggml's get_scale_min_k4), as int32 (n, 8)."""
    xp, s = dq.xp, _bytes(b, Q4_K, "scales").astype(np.int32)
    sc = xp.concatenate((s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)), axis=1)
    m = xp.concatenate((s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)), axis=1)
    return sc, m


def _k_groups(dq: Dequantizer, b: Any, q: Any) -> Any:
    """d * scale[g] * q - dmin * min[g] for the group g = i // 32 of each element."""
    sc, m = _k_scales_mins(dq, b)
    g = dq.table("k.group", np.arange(256) // 32)
    d, dmin = dq.f16(b, Q4_K.at("d")), dq.f16(b, Q4_K.at("dmin"))  # Q5_K's first fields are Q4_K's
    return (d * sc[:, g].astype(F32)) * q.astype(F32) - dmin * m[:, g].astype(F32)


def _k_nibbles(dq: Dequantizer, b: Any, qs_at: int, name: str) -> Any:
    """Element i = j*64 + s*32 + l is nibble s of byte qs_at + j*32 + l."""
    i = np.arange(256)
    return (dq.gather(b, name, qs_at + i // 64 * 32 + i % 32) >> dq.table("k.shift", 4 * (i % 64 // 32))) & 15


def _q4_k(dq: Dequantizer, b: Any) -> Any:
    return _k_groups(dq, b, _k_nibbles(dq, b, Q4_K.at("qs"), "q4_k.qs"))


def _q5_k(dq: Dequantizer, b: Any) -> Any:
    i = np.arange(256)
    high = ((dq.gather(b, "q5_k.qh", Q5_K.at("qh") + i % 32) >> dq.table("q5_k.shift", i // 32)) & 1) << 4
    return _k_groups(dq, b, _k_nibbles(dq, b, Q5_K.at("qs"), "q5_k.qs") | high)


def _q6_k(dq: Dequantizer, b: Any) -> Any:
    # element i = j*128 + t*32 + l: nibble t//2 of ql[j*64 + (t%2)*32 + l], bits 2t..2t+1 of qh[j*32 + l]
    i = np.arange(256)
    j, t, l = i // 128, i % 128 // 32, i % 32
    ql, qh = Q6_K.at("ql") + j * 64 + t % 2 * 32 + l, Q6_K.at("qh") + j * 32 + l
    low = (dq.gather(b, "q6_k.ql", ql) >> dq.table("q6_k.lshift", 4 * (t // 2))) & 15
    high = (dq.gather(b, "q6_k.qh", qh) >> dq.table("q6_k.hshift", 2 * t)) & 3
    scales = dq.xp.ascontiguousarray(_bytes(b, Q6_K, "scales")).view(np.int8)[:, dq.table("q6_k.group", i // 16)]
    return dq.f16(b, Q6_K.at("d")) * scales.astype(F32) * ((low | (high << 4)) - 32).astype(F32)


DEVICE_FORMATS: dict[DType, Callable[[Dequantizer, Any], Any]] = {
    DType.Q4_0: _q4_0, DType.Q4_1: _q4_1, DType.Q5_0: _q5_0, DType.Q5_1: _q5_1, DType.Q8_0: _q8_0,
    DType.Q4_K: _q4_k, DType.Q5_K: _q5_k, DType.Q6_K: _q6_k,
}


def dequantize_rows(dq: Dequantizer, raw: Any, dtype: DType, rows: Any | None, row_len: int) -> Any:
    """Float32 (len(rows), row_len) from a (n_rows, bytes per row) device array of blocks (all rows if None)."""
    block_size, type_size = block_layout(dtype)
    picked = raw if rows is None else raw[rows.reshape(-1)]
    blocks = picked.reshape(-1, type_size)
    return dq(blocks, dtype).reshape(-1, row_len)
