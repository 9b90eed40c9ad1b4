"""Vectorised NumPy dequantization of GGUF tensors, bit-for-bit equal to gguf.quants.dequantize.

Each block type has a kernel that fills a float32 (n_blocks, block_size) output from the
(n_blocks, type_size) uint8 blocks. Kernels work on chunks of blocks so that temporaries stay in
cache, unpack bits in 64-bit lanes over whole byte runs (long contiguous NumPy loops instead of
the short per-block loops that make naive NumPy slow), and do the float arithmetic in the same
order as gguf so that results are bitwise identical.
"""
from __future__ import annotations

from typing import Callable

import gguf
import numpy as np

from pyggml.graph.dtypes import DType, as_dtype, block_layout, is_quantized, nbytes, numpy_dtype
from pyggml.graph.errors import PyggmlError

# A kernel fills out (n, block_size) float32 from blocks (n, type_size) uint8.
Kernel = Callable[[np.ndarray, np.ndarray], None]

CHUNK_ELEMENTS = 1 << 17  # output elements per chunk: ~512 KiB of float32, about one L2 cache

_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_PAIRS = np.uint64(0x0303030303030303)
_BITS = np.uint64(0x0101010101010101)
_VOID = {width: np.dtype((np.void, width)) for width in (2, 4, 12, 16, 32, 64, 128)}
_SHIFTS = np.arange(8, dtype=np.uint64)[:, None]

# Byte offsets of the float16 fields (d, then dmin or m) inside one block of each type.
F16_FIELDS: dict[DType, tuple[int, ...]] = {
    DType.Q4_0: (0,), DType.Q4_1: (0, 2), DType.Q5_0: (0,), DType.Q5_1: (0, 2), DType.Q8_0: (0,),
    DType.Q2_K: (80, 82), DType.Q3_K: (108,), DType.Q4_K: (0, 2), DType.Q5_K: (0, 2), DType.Q6_K: (208,),
}


def _field(blocks: np.ndarray, start: int, size: int) -> np.ndarray:
    """Bytes [start, start+size) of every block as a contiguous (n, size) uint8 copy."""
    # Copying one void item per block is one long loop; slicing bytes would loop per block.
    items = blocks[:, start:start + size].view(_VOID[size])
    return np.ascontiguousarray(items).view(np.uint8).reshape(len(blocks), size)


def _planes(data: np.ndarray, shifts: slice, mask: np.uint64, width: int) -> np.ndarray:
    """(len(shifts), n, runs) items of `width` bytes: (data >> shift) & mask over each block's bytes."""
    # one long loop per shift over all blocks; callers then interleave the planes with one copy
    lanes = data.reshape(-1).view(np.uint64)
    planes = lanes[None, :] >> _SHIFTS[shifts]
    planes &= mask
    return planes.view(_VOID[width]).reshape(len(planes), len(data), -1)


def _interleave(q: np.ndarray, width: int, groups: tuple[int, ...], items: np.ndarray) -> None:
    """q's rows seen as `groups` of `width`-byte items <- items (already in that order but for the block axis)."""
    q.view(_VOID[width]).reshape(len(q), *groups)[...] = items


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte `start` of every block, as a (n, 1) float32 column."""
    return blocks[:, start:start + 2].view(np.float16).astype(np.float32)


def _small(values: np.ndarray) -> np.ndarray:
    """Per-group integers (n, groups) as float32 in Fortran order, so ops on them run along blocks."""
    return values.astype(np.float32, order="F")


def _scale(out: np.ndarray, scales: np.ndarray, mins: np.ndarray | None = None) -> None:
    """out (n, s*k) <- out * scales (n, s) [- mins (n, s)], each scale covering k elements."""
    grouped = out.reshape(len(out), scales.shape[1], -1)
    np.multiply(grouped, scales[:, :, None], out=grouped)
    if mins is not None:
        np.subtract(grouped, mins[:, :, None], out=grouped)


def _nibbles16(blocks: np.ndarray, start: int) -> np.ndarray:
    """Q4_0/Q4_1/Q5_*: the 16 bytes at `start` as 32 values: low nibbles, then high nibbles."""
    q = np.empty((len(blocks), 32), np.uint8)
    _interleave(q, 16, (2,), _planes(_field(blocks, start, 16), slice(0, 8, 4), _NIBBLES, 16)[:, :, 0].T)
    return q


def _q4_0(blocks: np.ndarray, out: np.ndarray) -> None:
    q = _nibbles16(blocks, 2).view(np.int8)
    q -= np.int8(8)
    np.copyto(out, q)
    out *= _f16(blocks, 0)


def _q4_1(blocks: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, _nibbles16(blocks, 4))
    out *= _f16(blocks, 0)
    out += _f16(blocks, 2)


def _five_bits(blocks: np.ndarray, qh_at: int) -> np.ndarray:
    """The 5-bit values of Q5_0/Q5_1 blocks: low nibbles from qs, bit i of the uint32 qh as bit 4."""
    q = np.unpackbits(_field(blocks, qh_at, 4), axis=1, bitorder="little")
    q <<= np.uint8(4)
    q |= _nibbles16(blocks, qh_at + 4)
    return q


def _q5_0(blocks: np.ndarray, out: np.ndarray) -> None:
    q = _five_bits(blocks, 2).view(np.int8)
    q -= np.int8(16)
    np.copyto(out, q)
    out *= _f16(blocks, 0)


def _q5_1(blocks: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, _five_bits(blocks, 4))
    out *= _f16(blocks, 0)
    out += _f16(blocks, 2)


def _q8_0(blocks: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, _field(blocks, 2, 32).view(np.int8))
    out *= _f16(blocks, 0)


def _two_bits(blocks: np.ndarray, start: int) -> np.ndarray:
    """Q2_K/Q3_K: element j*128 + s*32 + l is bits 2s..2s+1 of byte j*32 + l of the 64 at `start`."""
    q = np.empty((len(blocks), 256), np.uint8)
    _interleave(q, 32, (2, 4), _planes(_field(blocks, start, 64), slice(0, 8, 2), _PAIRS, 32).transpose(1, 2, 0))
    return q


def _bit_planes(blocks: np.ndarray, start: int, shift: int) -> np.ndarray:
    """Q3_K/Q5_K: element g*32 + l is bit g of byte l of the 32 at `start`, moved to bit `shift`."""
    planes = _planes(_field(blocks, start, 32), slice(0, 8), _BITS, 32)
    bits = np.empty((len(blocks), 256), np.uint8)
    _interleave(bits, 32, (8,), planes[:, :, 0].T)
    bits <<= np.uint8(shift)
    return bits


def _q2_k(blocks: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, _two_bits(blocks, 16))
    sc = _field(blocks, 0, 16)
    _scale(out, _f16(blocks, 80) * _small(sc & np.uint8(0x0F)), _f16(blocks, 82) * _small(sc >> np.uint8(4)))


def _q3_k_scales(sc: np.ndarray) -> np.ndarray:
    """The 16 signed 6-bit scales packed in 12 bytes, as float32."""
    low = np.concatenate([sc[:, :8] & np.uint8(0x0F), sc[:, :8] >> np.uint8(4)], axis=1)
    high = np.concatenate([(sc[:, 8:] >> np.uint8(2 * k)) & np.uint8(3) for k in range(4)], axis=1)
    return _small((low | (high << np.uint8(4))).view(np.int8) - np.int8(32))


def _q3_k(blocks: np.ndarray, out: np.ndarray) -> None:
    # 2 low bits as in Q2_K, minus 4 unless bit g of hmask[l] is set for element g*32 + l:
    # low2 | hbit << 2 == low2 + 4*hbit, so subtracting 4 gives low2 - 4*(1 - hbit)
    q = _two_bits(blocks, 32)
    q |= _bit_planes(blocks, 0, 2)
    q = q.view(np.int8)
    q -= np.int8(4)
    np.copyto(out, q)
    _scale(out, _f16(blocks, 108) * _q3_k_scales(_field(blocks, 96, 12)))


def _k_scale_min(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: the 8 6-bit scales and 8 6-bit mins packed in 12 bytes, as float32."""
    # bytes 0-3 and 4-7 hold the low 6 bits of scales 0-3 and mins 0-3 (their top 2 bits are bits 4-5
    # of scales/mins 4-7), bytes 8-11 the low nibbles of scales 4-7 and high nibbles of mins 4-7;
    # each 4-byte run is one uint32 lane, so four bytes are unpacked per operation
    lanes = packed.view(np.uint32)
    d, m, md = lanes[:, 0], lanes[:, 1], lanes[:, 2]
    low6, nib, top2 = np.uint32(0x3F3F3F3F), np.uint32(0x0F0F0F0F), np.uint32(0x30303030)
    scales = np.empty((len(packed), 2), np.uint32)
    mins = np.empty((len(packed), 2), np.uint32)
    np.bitwise_and(d, low6, out=scales[:, 0])
    np.bitwise_or(md & nib, (d >> np.uint32(2)) & top2, out=scales[:, 1])
    np.bitwise_and(m, low6, out=mins[:, 0])
    np.bitwise_or((md >> np.uint32(4)) & nib, (m >> np.uint32(2)) & top2, out=mins[:, 1])
    return _small(scales.view(np.uint8)), _small(mins.view(np.uint8))


def _k_affine(blocks: np.ndarray, out: np.ndarray) -> None:
    """Q4_K/Q5_K: out = d*scale*q - dmin*min per group of 32."""
    scales, mins = _k_scale_min(_field(blocks, 4, 12))
    _scale(out, _f16(blocks, 0) * scales, _f16(blocks, 2) * mins)


def _four_bits(blocks: np.ndarray, start: int) -> np.ndarray:
    """Q4_K/Q5_K: element j*64 + s*32 + l is nibble s of byte j*32 + l of the 128 at `start`."""
    q = np.empty((len(blocks), 256), np.uint8)
    _interleave(q, 32, (4, 2), _planes(_field(blocks, start, 128), slice(0, 8, 4), _NIBBLES, 32).transpose(1, 2, 0))
    return q


def _q4_k(blocks: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, _four_bits(blocks, 16))
    _k_affine(blocks, out)


def _q5_k(blocks: np.ndarray, out: np.ndarray) -> None:
    # as Q4_K, with bit g of qh[l] as bit 4 of element g*32 + l
    q = _four_bits(blocks, 48)
    q |= _bit_planes(blocks, 16, 4)
    np.copyto(out, q)
    _k_affine(blocks, out)


def _q6_k(blocks: np.ndarray, out: np.ndarray) -> None:
    # element j*128 + t*32 + l: nibble t//2 of ql[j*64 + (t%2)*32 + l], bits 2t..2t+1 of qh[j*32 + l]
    n = len(blocks)
    q = np.empty((n, 256), np.uint8)
    low = _planes(_field(blocks, 0, 128), slice(0, 8, 4), _NIBBLES, 32)  # (nibble, n, j*2 + t%2)
    _interleave(q, 32, (2, 2, 2), low.reshape(2, n, 2, 2).transpose(1, 2, 0, 3))
    high = np.empty((n, 256), np.uint8)
    _interleave(high, 32, (2, 4), _planes(_field(blocks, 128, 64), slice(0, 8, 2), _PAIRS, 32).transpose(1, 2, 0))
    high <<= np.uint8(4)
    q |= high
    q = q.view(np.int8)
    q -= np.int8(32)
    np.copyto(out, q)
    _scale(out, _f16(blocks, 208) * _small(_field(blocks, 192, 16).view(np.int8)))


KERNELS: dict[DType, Kernel] = {
    DType.Q4_0: _q4_0, DType.Q4_1: _q4_1, DType.Q5_0: _q5_0, DType.Q5_1: _q5_1, DType.Q8_0: _q8_0,
    DType.Q2_K: _q2_k, DType.Q3_K: _q3_k, DType.Q4_K: _q4_k, DType.Q5_K: _q5_k, DType.Q6_K: _q6_k,
}


def _dequantize_blocks(blocks: np.ndarray, kernel: Kernel, block_size: int) -> np.ndarray:
    """Run a kernel chunk by chunk over (n, type_size) blocks into a new (n, block_size) array."""
    out = np.empty((len(blocks), block_size), np.float32)
    step = max(1, CHUNK_ELEMENTS // block_size)
    with np.errstate(all="ignore"):  # inf/nan scales give inf/nan elements, as in gguf
        for start in range(0, len(blocks), step):
            kernel(blocks[start:start + step], out[start:start + step])
    return out


def _plain(raw: np.ndarray, dtype: DType) -> np.ndarray:
    """Elements of a plain type as float32 (F32 is returned as a view, not a copy)."""
    if dtype == DType.BF16:
        return (raw.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
    return raw.view(numpy_dtype(dtype)).astype(np.float32, copy=False)


def _as_bytes(raw: np.ndarray) -> np.ndarray:
    """A C-contiguous array seen as flat uint8."""
    return np.ascontiguousarray(raw).reshape(-1).view(np.uint8)


def dequantize(raw: np.ndarray, dtype: DType | int, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 array of `shape` from the raw storage (bytes or typed elements) of a tensor."""
    dtype = as_dtype(dtype)
    shape = tuple(int(n) for n in shape)
    data = _as_bytes(raw)
    expected = nbytes(shape, dtype)
    if data.size != expected:
        raise PyggmlError(f"{dtype.name} tensor of shape {shape} needs {expected} bytes, got {data.size}")
    if not is_quantized(dtype):
        return _plain(data, dtype).reshape(shape)
    block_size, type_size = block_layout(dtype)
    kernel = KERNELS.get(dtype)
    if kernel is not None:
        return _dequantize_blocks(data.reshape(-1, type_size), kernel, block_size).reshape(shape)
    row_len = shape[-1] if shape else 1
    try:
        return gguf.quants.dequantize(data.reshape(-1, row_len // block_size * type_size), dtype).reshape(shape)
    except NotImplementedError:
        raise PyggmlError(f"dequantization of {dtype.name} is not supported") from None


def dequantize_rows(raw2d: np.ndarray, dtype: DType | int, rows: np.ndarray, row_len: int) -> np.ndarray:
    """Float32 (len(rows), row_len) of only the given rows of a (n_rows, bytes_per_row) tensor."""
    dtype = as_dtype(dtype)
    rows = np.asarray(rows).reshape(-1)
    if rows.size and not np.issubdtype(rows.dtype, np.integer):
        raise PyggmlError(f"row indices must be integers, got {rows.dtype}")
    if raw2d.ndim != 2:
        raise PyggmlError(f"dequantize_rows needs a 2-D (rows, bytes per row) array, got shape {raw2d.shape}")
    if rows.size and (rows.min() < -len(raw2d) or rows.max() >= len(raw2d)):
        raise PyggmlError(f"row index out of range for {len(raw2d)} rows: {rows.min()}..{rows.max()}")
    return dequantize(raw2d[rows.astype(np.intp, copy=False)], dtype, (rows.size, int(row_len)))
