"""Vectorised NumPy dequantization of GGUF tensors, bit-for-bit equal to gguf.quants.dequantize.

Every block type dequantizes as `values * scale (+ or -) offset` per group of elements, where the
values are small integers packed in the block. A table maps each type to two functions: one that
unpacks the integer values of a chunk of blocks, one that computes the float32 scales and offsets
of all blocks at once. Unpacking works in 64-bit lanes over whole byte runs (long contiguous NumPy
loops rather than the short per-block loops that make naive NumPy slow), chunks keep temporaries
in cache, and the float arithmetic is gguf's, in gguf's order, so results are bitwise identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gguf
import numpy as np

from pyggml.graph.block_layouts import BLOCKS, BlockLayout
from pyggml.graph.dtypes import DType, as_dtype, block_layout, is_quantized, nbytes, numpy_dtype
from pyggml.graph.errors import PyggmlError

CHUNK_ELEMENTS = 1 << 18  # output elements per chunk: 1 MiB of float32; temporaries stay in L2/L3

_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_PAIRS = np.uint64(0x0303030303030303)
_BITS = np.uint64(0x0101010101010101)
_VOID = {width: np.dtype((np.void, width)) for width in (4, 12, 16, 32, 64, 128)}
_SHIFTS = np.arange(8, dtype=np.uint64)[:, None]

Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = (BLOCKS[t] for t in (DType.Q2_K, DType.Q3_K, DType.Q4_K, DType.Q5_K, DType.Q6_K))


def _field(blocks: np.ndarray, start: int, size: int) -> np.ndarray:
    """Bytes [start, start+size) of every block as a contiguous (n, size) uint8 copy."""
    # Copying one void item per block is one long loop; slicing bytes would loop per block.
    items = blocks[:, start:start + size].view(_VOID[size])
    return np.ascontiguousarray(items).view(np.uint8).reshape(len(blocks), size)


def _planes(data: np.ndarray, shifts: slice, mask: np.uint64, width: int, move_to: int = 0) -> np.ndarray:
    """(len(shifts), n, runs) items of `width` bytes: ((data >> shift) & mask) << move_to, per block's bytes."""
    # one long loop per shift over all blocks, in 64-bit lanes (NumPy's uint8 left shift is not
    # vectorised); callers then interleave the planes with one copy per plane
    lanes = data.reshape(-1).view(np.uint64)
    planes = lanes[None, :] >> _SHIFTS[shifts]
    planes &= mask
    if move_to:
        planes <<= np.uint64(move_to)
    return planes.view(_VOID[width]).reshape(len(planes), len(data), -1)


def _interleave(n: int, width: int, groups: tuple[int, ...], planes: np.ndarray) -> np.ndarray:
    """(n, block) uint8 whose rows are `groups` of `width`-byte items; the last group axis picks the plane."""
    # one copy per plane keeps each copy a single long loop over the blocks
    q = np.empty((n, int(np.prod(groups)) * width), np.uint8)
    target = q.view(_VOID[width]).reshape(n, *groups)
    for index, plane in enumerate(planes):
        target[..., index] = plane.reshape(target.shape[:-1])
    return q


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte `start` of every block, as a (n, 1) float32 column."""
    return blocks[:, start:start + 2].view(np.float16).astype(np.float32)


def _signed(values: np.ndarray, zero: int) -> np.ndarray:
    """Unsigned values stored with an offset, as int8 (in place)."""
    values = values.view(np.int8)
    values -= np.int8(zero)
    return values


# ---- integer values of a chunk of blocks: (n, block_size) uint8 or int8

def _nibbles16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The 16 bytes at `start` as 32 values: low nibbles, then high nibbles."""
    return _interleave(len(blocks), 16, (2,), _planes(_field(blocks, start, 16), slice(0, 8, 4), _NIBBLES, 16))


def _five_bits(blocks: np.ndarray, layout: BlockLayout) -> np.ndarray:
    """Q5_0/Q5_1: low nibbles from the 16 bytes of qs, bit i of the uint32 qh as bit 4 of value i."""
    high = np.unpackbits(_field(blocks, layout.at("qh"), 4).reshape(-1), bitorder="little")
    lanes = high.view(np.uint64)
    lanes <<= np.uint64(4)
    q = _nibbles16(blocks, layout.at("qs"))
    q |= high.reshape(q.shape)
    return q


def _two_bits(blocks: np.ndarray, start: int) -> np.ndarray:
    """Q2_K/Q3_K: value j*128 + s*32 + l is bits 2s..2s+1 of byte j*32 + l of the 64 at `start`."""
    return _interleave(len(blocks), 32, (2, 4), _planes(_field(blocks, start, 64), slice(0, 8, 2), _PAIRS, 32))


def _four_bits(blocks: np.ndarray, start: int) -> np.ndarray:
    """Q4_K/Q5_K: value j*64 + s*32 + l is nibble s of byte j*32 + l of the 128 at `start`."""
    return _interleave(len(blocks), 32, (4, 2), _planes(_field(blocks, start, 128), slice(0, 8, 4), _NIBBLES, 32))


def _bit_planes(blocks: np.ndarray, start: int, shift: int) -> np.ndarray:
    """Q3_K/Q5_K: value g*32 + l is bit g of byte l of the 32 at `start`, moved to bit `shift`."""
    return _interleave(len(blocks), 32, (8,), _planes(_field(blocks, start, 32), slice(0, 8), _BITS, 32, shift))


def _q3_k_values(blocks: np.ndarray) -> np.ndarray:
    # 2 low bits, minus 4 unless bit g of hmask[l] is set for value g*32 + l:
    # low2 | hbit << 2 == low2 + 4*hbit, so subtracting 4 gives low2 - 4*(1 - hbit)
    q = _two_bits(blocks, Q3_K.at("qs"))
    q |= _bit_planes(blocks, Q3_K.at("hmask"), 2)
    return _signed(q, 4)


def _q5_k_values(blocks: np.ndarray) -> np.ndarray:
    q = _four_bits(blocks, Q5_K.at("qs"))
    q |= _bit_planes(blocks, Q5_K.at("qh"), 4)
    return q


def _q6_k_values(blocks: np.ndarray) -> np.ndarray:
    # value j*128 + t*32 + l: nibble t//2 of ql[j*64 + (t%2)*32 + l], bits 2t..2t+1 of qh[j*32 + l];
    # the low nibbles go in runs of 64 bytes: run j*2 + t//2 is nibble t//2 of ql[j*64 : j*64 + 64]
    n, ql, qh = len(blocks), Q6_K.field("ql"), Q6_K.field("qh")
    q = _interleave(n, 64, (2, 2), _planes(_field(blocks, ql.offset, ql.size), slice(0, 8, 4), _NIBBLES, 64))
    q |= _interleave(n, 32, (2, 4), _planes(_field(blocks, qh.offset, qh.size), slice(0, 8, 2), _PAIRS, 32, 4))
    return _signed(q, 32)


# ---- scales and offsets of all blocks: (n, groups) float32 each

Scales = tuple[np.ndarray, np.ndarray | None]


def _d_m(layout: BlockLayout) -> Callable[[np.ndarray], Scales]:
    """ggml's 32-value types: the scale d, and the min m where the type has one."""
    fields = layout.scalars()
    return lambda blocks: (_f16(blocks, fields[0]), _f16(blocks, fields[1]) if len(fields) > 1 else None)


def _times_d(blocks: np.ndarray, d_at: int, ints: np.ndarray) -> np.ndarray:
    """d * ints as float32 (n, groups), given ints as (groups, n): the work runs along the blocks."""
    # (n, groups) arrays with few groups would make every NumPy loop a short per-block one
    scaled = ints.astype(np.float32, order="C")
    scaled *= _f16(blocks, d_at).reshape(1, -1)
    return scaled.T


def _q2_k_scales(blocks: np.ndarray) -> Scales:
    sc = _field(blocks, Q2_K.at("scales"), Q2_K.field("scales").size)
    return (_times_d(blocks, Q2_K.at("d"), (sc & np.uint8(0x0F)).T),
            _times_d(blocks, Q2_K.at("dmin"), (sc >> np.uint8(4)).T))


def _q3_k_scales(blocks: np.ndarray) -> Scales:
    # 16 signed 6-bit scales: low nibbles in bytes 0-7 (scales 0-7 then 8-15), top 2 bits in bytes 8-11
    sc = np.ascontiguousarray(_field(blocks, Q3_K.at("scales"), Q3_K.field("scales").size).T)
    low = np.concatenate([sc[:8] & np.uint8(0x0F), sc[:8] >> np.uint8(4)])
    high = np.concatenate([(sc[8:] >> np.uint8(2 * k)) & np.uint8(3) for k in range(4)])
    high *= np.uint8(16)  # << 4, which NumPy does not vectorise for uint8
    low |= high
    return _times_d(blocks, Q3_K.at("d"), _signed(low, 32)), None


def _k_scale_min(blocks: np.ndarray) -> Scales:
    """Q4_K/Q5_K: d * 6-bit scale and dmin * 6-bit min of each group of 32."""
    # bytes 0-3 and 4-7 hold the low 6 bits of scales 0-3 and mins 0-3 (their top 2 bits are bits 4-5
    # of scales/mins 4-7), bytes 8-11 the low nibbles of scales 4-7 and high nibbles of mins 4-7;
    # each 4-byte run is one uint32 lane, so four bytes are unpacked per operation
    lanes = _field(blocks, Q4_K.at("scales"), Q4_K.field("scales").size).view(np.uint32)
    d, m, md = lanes[:, 0], lanes[:, 1], lanes[:, 2]
    low6, nib, top2 = np.uint32(0x3F3F3F3F), np.uint32(0x0F0F0F0F), np.uint32(0x30303030)
    scales = np.stack([d & low6, (md & nib) | ((d >> np.uint32(2)) & top2)])
    mins = np.stack([m & low6, ((md >> np.uint32(4)) & nib) | ((m >> np.uint32(2)) & top2)])

    def groups(packed: np.ndarray) -> np.ndarray:  # (2, n) lanes of 4 bytes -> (8, n) bytes
        return packed.view(np.uint8).reshape(2, -1, 4).transpose(0, 2, 1).reshape(8, -1)

    return _times_d(blocks, Q4_K.at("d"), groups(scales)), _times_d(blocks, Q4_K.at("dmin"), groups(mins))


def _q6_k_scales(blocks: np.ndarray) -> Scales:
    sc = Q6_K.field("scales")
    return _times_d(blocks, Q6_K.at("d"), _field(blocks, sc.offset, sc.size).view(np.int8).T), None


@dataclass(frozen=True)
class BlockFormat:
    """How one block type dequantizes: values (per chunk), scales and offsets (for all blocks), and
    whether the offset is added (value*d + m) or subtracted (value*d - dmin*min)."""

    values: Callable[[np.ndarray], np.ndarray]
    scales: Callable[[np.ndarray], Scales]
    offset: Callable[..., np.ndarray] = np.add


Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = (BLOCKS[t] for t in (DType.Q4_0, DType.Q4_1, DType.Q5_0, DType.Q5_1, DType.Q8_0))
FORMATS: dict[DType, BlockFormat] = {
    DType.Q4_0: BlockFormat(lambda b: _signed(_nibbles16(b, Q4_0.at("qs")), 8), _d_m(Q4_0)),
    DType.Q4_1: BlockFormat(lambda b: _nibbles16(b, Q4_1.at("qs")), _d_m(Q4_1)),
    DType.Q5_0: BlockFormat(lambda b: _signed(_five_bits(b, Q5_0), 16), _d_m(Q5_0)),
    DType.Q5_1: BlockFormat(lambda b: _five_bits(b, Q5_1), _d_m(Q5_1)),
    DType.Q8_0: BlockFormat(lambda b: _field(b, Q8_0.at("qs"), 32).view(np.int8), _d_m(Q8_0)),
    DType.Q2_K: BlockFormat(lambda b: _two_bits(b, Q2_K.at("qs")), _q2_k_scales, np.subtract),
    DType.Q3_K: BlockFormat(_q3_k_values, _q3_k_scales),
    DType.Q4_K: BlockFormat(lambda b: _four_bits(b, Q4_K.at("qs")), _k_scale_min, np.subtract),
    DType.Q5_K: BlockFormat(_q5_k_values, _k_scale_min, np.subtract),
    DType.Q6_K: BlockFormat(_q6_k_values, _q6_k_scales),
}


def _dequantize_blocks(blocks: np.ndarray, fmt: BlockFormat, block_size: int) -> np.ndarray:
    """(n, block_size) float32 from (n, type_size) blocks, chunk by chunk."""
    out = np.empty((len(blocks), block_size), np.float32)
    step = max(1, CHUNK_ELEMENTS // block_size)
    with np.errstate(all="ignore"):  # inf/nan scales give inf/nan elements, as in gguf
        scales, offsets = fmt.scales(blocks)
        for start in range(0, len(blocks), step):
            chunk = out[start:start + step]
            np.copyto(chunk, fmt.values(blocks[start:start + step]))
            grouped = chunk.reshape(len(chunk), scales.shape[1], -1)
            np.multiply(grouped, scales[start:start + step, :, None], out=grouped)
            if offsets is not None:
                fmt.offset(grouped, offsets[start:start + step, :, None], out=grouped)
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
    fmt = FORMATS.get(dtype)
    if fmt is not None:
        return _dequantize_blocks(data.reshape(-1, type_size), fmt, block_size).reshape(shape)
    row_len = shape[-1] if shape else 1
    try:
        return gguf.quants.dequantize(data.reshape(-1, row_len // block_size * type_size), dtype).reshape(shape)
    except NotImplementedError:
        raise PyggmlError(f"dequantization of {dtype.name} is not supported") from None


def quantize_rows(values: np.ndarray, dtype: DType) -> np.ndarray:
    """(N, bytes per row) blocks of float rows (N, C), as ggml's reference quantizers make them (gguf-py's)."""
    return gguf.quants.quantize(np.ascontiguousarray(values, np.float32), dtype)


def dequantize_rows(raw2d: np.ndarray, dtype: DType | int, rows: np.ndarray, row_len: int) -> np.ndarray:
    """Float32 (len(rows), row_len) of only the given rows of a (n_rows, bytes_per_row) tensor."""
    return dequantize(gather_block_rows(raw2d, rows), as_dtype(dtype), (np.size(rows), int(row_len)))


def gather_block_rows(raw2d: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The given rows of a (n_rows, bytes per row) tensor, the indices checked."""
    if raw2d.ndim != 2:
        raise PyggmlError(f"dequantize_rows needs a 2-D (rows, bytes per row) array, got shape {raw2d.shape}")
    return raw2d[checked_rows(rows, len(raw2d))]


def checked_rows(rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Row indices into n_rows rows as a flat intp array, negative ones counted from the end (an index that is
    not an integer or is out of range raises PyggmlError)."""
    rows = np.asarray(rows).reshape(-1)
    if rows.size and not np.issubdtype(rows.dtype, np.integer):
        raise PyggmlError(f"row indices must be integers, got {rows.dtype}")
    if rows.size and (rows.min() < -n_rows or rows.max() >= n_rows):
        raise PyggmlError(f"row index out of range for {n_rows} rows: {rows.min()}..{rows.max()}")
    rows = rows.astype(np.intp, copy=False)
    return np.where(rows < 0, rows + n_rows, rows)
