"""Integer K-quant products with Q8_K activations, llama.cpp's numerics for Q2_K..Q6_K: each activation row is
rounded as ggml's quantize_row_q8_K does (per 256 values d = max / -127 with max the value of largest magnitude,
q = nearest_int(x · -127 / max), and the sums of each 16 q), and each 256-value block's product is summed in
int32: the sub-blocks' unsigned weight values times the activation bytes (numba_q8's vpdpbusd and its AVX2 and
plain integer equivalents), times each sub-block's integer scale, less the weight's offset or min times the
activations' block sums; then scaled once per block by the weight's d (and dmin) and the activations' d.

Weights are held repacked as numba_q8's tiles of 16 rows (TILE_LAYOUTS: the float16 header of 16 rows, then
their first words, ...), so one 64-byte load holds a word of 16 rows, one row per int32 lane.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils

from pyggml.graph.block_layouts import QK_K
from pyggml.graph.dtypes import DType

from .q8 import (TILE_LAYOUTS, TILE_ROWS, Q8Tile, block_words, dpbusd, header_scales, masked_store, scalar_splat,
                 tile_intrinsic, tile_rows, tiled_products, vconst, word_of)
from .tiles import F32, I32, VF32, VI32, check_float32_rows, const, fma

NEAREST = np.float32(12582912.0)  # 1.5 · 2^23: adding it rounds a float32 below 2^22 to an integer, as ggml's
# nearest_int (ties to even)


@njit(cache=True)
def quantize_q8_k(x, xq, xd, xs):
    """Rows of x (N, K) float32 as ggml's Q8_K: values xq (N, K) int8, d xd (N, K / 256) float32 and the sums of
    each 16 values xs (N, K / 16) int32 (zero blocks: d, values and sums 0)."""
    for n in range(x.shape[0]):
        for b in range(x.shape[1] // QK_K):
            base, amax, top = b * QK_K, np.float32(0.0), np.float32(0.0)
            for j in range(QK_K):
                if abs(x[n, base + j]) > amax:
                    amax, top = abs(x[n, base + j]), x[n, base + j]
            iscale = np.float32(-127.0) / top if amax > 0 else np.float32(0.0)
            for j in range(QK_K):
                q = int(np.float32(iscale * x[n, base + j]) + NEAREST) - int(NEAREST)
                xq[n, base + j] = min(127, q)
            for s in range(QK_K // 16):
                total = 0
                for j in range(16):
                    total += xq[n, base + 16 * s + j]
                xs[n, 16 * b + s] = total
            xd[n, b] = np.float32(1.0) / iscale if amax > 0 else np.float32(0.0)


def activation_buffers(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Room for x (N, K) as Q8_K: values, d per block and the sums of each 16 values."""
    return (np.empty(x.shape, np.int8), np.empty((len(x), x.shape[1] // QK_K), np.float32),
            np.empty((len(x), x.shape[1] // 16), np.int32))


def quantize_activations_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (N, K) float32 as Q8_K: (values (N, K) int8, d (N, K / 256) float32, sums of 16 (N, K / 16) int32)."""
    buffers = activation_buffers(x)
    quantize_q8_k(x, *buffers)
    return buffers


class Group(NamedTuple):
    """A sub-block of a K-quant block as IR over 16 rows: (unsigned values vector, activation word index) pairs,
    the sub-block's integer scale per lane, the unsigned value that stands for 0, and the indices of the
    activations' sums of 16 that it covers."""
    pairs: list[tuple[ir.Value, int]]
    scale: ir.Value
    zero: int
    sums: tuple[int, ...]


def _bits(builder: ir.IRBuilder, v: ir.Value, shift: int, mask: int) -> ir.Value:
    """(v >> shift) & mask in each lane."""
    return builder.and_(builder.lshr(v, vconst(shift)), vconst(mask))


def _byte(builder: ir.IRBuilder, v: ir.Value, k: int, signed: bool = False) -> ir.Value:
    """Byte k of each lane, zero- or sign-extended."""
    if signed:
        return builder.ashr(builder.shl(v, vconst(24 - 8 * k)), vconst(24))
    return _bits(builder, v, 8 * k, 0xFF)


def _k4_scales(builder: ir.IRBuilder, w: list[ir.Value]) -> tuple[list[ir.Value], list[ir.Value]]:
    """Q4_K/Q5_K: the eight 6-bit scales and mins packed in three words (ggml's utmp shuffle), per lane."""
    high = [builder.shl(_bits(builder, w[i], 6, 0x03030303), vconst(4)) for i in (0, 1)]
    scales = [builder.and_(w[0], vconst(0x3F3F3F3F)), builder.or_(_bits(builder, w[2], 0, 0x0F0F0F0F), high[0])]
    mins = [builder.and_(w[1], vconst(0x3F3F3F3F)), builder.or_(_bits(builder, w[2], 4, 0x0F0F0F0F), high[1])]
    return ([_byte(builder, scales[s // 4], s % 4) for s in range(8)],
            [_byte(builder, mins[s // 4], s % 4) for s in range(8)])


def _k4_groups(builder: ir.IRBuilder, word: Callable, dtype: DType, high_bit: Callable | None) -> tuple[list, list]:
    """Q4_K/Q5_K: eight groups of 32 values, the low (even groups) or high nibbles of 32 bytes of qs, with
    high_bit(s, k) the fifth bits of group s's word k (Q5_K); and (min, sums) per group."""
    at, qs = word_of(dtype, "scales"), word_of(dtype, "qs")
    scales, mins = _k4_scales(builder, [word(at + i) for i in range(3)])
    groups = []
    for s in range(8):
        pairs = []
        for k in range(8):
            v = _bits(builder, word(qs + 8 * (s // 2) + k), 4 * (s % 2), 0x0F0F0F0F)
            pairs.append((v if high_bit is None else builder.or_(v, high_bit(s, k)), 8 * s + k))
        groups.append(Group(pairs, scales[s], 0, ()))
    return groups, [(mins[s], (2 * s, 2 * s + 1)) for s in range(8)]


def _q4_k(builder: ir.IRBuilder, word: Callable) -> tuple[list, list]:
    return _k4_groups(builder, word, DType.Q4_K, None)


def _q5_k(builder: ir.IRBuilder, word: Callable) -> tuple[list, list]:
    """Value l of group s has bit 4 at bit s of qh[l]."""
    qh = word_of(DType.Q5_K, "qh")
    return _k4_groups(builder, word, DType.Q5_K,
                      lambda s, k: builder.shl(_bits(builder, word(qh + k), s, 0x01010101), vconst(4)))


def _sixteens(builder: ir.IRBuilder, value: Callable, scale: Callable, zero: int) -> list[Group]:
    """Groups of 16 values for the types whose 256 values go in two halves n of four quarters j: value(n, j, m)
    the unsigned values 128n + 32j + 4m.. of each lane, scale(s) group s's integer scale."""
    groups = []
    for s in range(16):
        n, j, m0 = s // 8, (s % 8) // 2, 4 * (s % 2)
        pairs = [(value(n, j, m), 32 * n + 8 * j + m) for m in range(m0, m0 + 4)]
        groups.append(Group(pairs, scale(s), zero, (s,)))
    return groups


def _q2_k(builder: ir.IRBuilder, word: Callable) -> tuple[list, list]:
    """2-bit values (shift 2j of the 32 bytes 32n.. of qs), a byte per group of 16 holding the scale (low
    nibble) and the min (high nibble)."""
    at, qs = word_of(DType.Q2_K, "scales"), word_of(DType.Q2_K, "qs")
    scale = lambda s: _bits(builder, word(at + s // 4), 8 * (s % 4), 0x0F)  # noqa: E731
    groups = _sixteens(builder, lambda n, j, m: _bits(builder, word(qs + 8 * n + m), 2 * j, 0x03030303), scale, 0)
    return groups, [(_bits(builder, word(at + s // 4), 8 * (s % 4) + 4, 0x0F), (s,)) for s in range(16)]


def _q3_k_scales(builder: ir.IRBuilder, w: list[ir.Value]) -> list[ir.Value]:
    """Q3_K: the sixteen 6-bit scales, less 32, packed in three words (ggml's aux shuffle), per lane."""
    packed = [builder.or_(_bits(builder, w[i % 2], 4 * (i // 2), 0x0F0F0F0F),
                          builder.shl(_bits(builder, w[2], 2 * i, 0x03030303), vconst(4))) for i in range(4)]
    return [builder.sub(_byte(builder, packed[s // 4], s % 4), vconst(32)) for s in range(16)]


def _q3_k(builder: ir.IRBuilder, word: Callable) -> tuple[list, list]:
    """2-bit values (as Q2_K's) plus 4 where bit 4n + j of hmask[l] is set, less 4."""
    hmask, qs, at = (word_of(DType.Q3_K, f) for f in ("hmask", "qs", "scales"))
    scales = _q3_k_scales(builder, [word(at + i) for i in range(3)])

    def value(n: int, j: int, m: int) -> ir.Value:
        high = builder.shl(_bits(builder, word(hmask + m), 4 * n + j, 0x01010101), vconst(2))
        return builder.or_(_bits(builder, word(qs + 8 * n + m), 2 * j, 0x03030303), high)
    return _sixteens(builder, value, lambda s: scales[s], 4), []


def _q6_k(builder: ir.IRBuilder, word: Callable) -> tuple[list, list]:
    """6-bit values less 32: low nibbles from ql, two high bits from qh, an int8 scale per group of 16."""
    ql, qh, at = (word_of(DType.Q6_K, f) for f in ("ql", "qh", "scales"))

    def value(n: int, j: int, m: int) -> ir.Value:
        low = _bits(builder, word(ql + 16 * n + 8 * (j % 2) + m), 4 * (j // 2), 0x0F0F0F0F)
        return builder.or_(low, builder.shl(_bits(builder, word(qh + 8 * n + m), 2 * j, 0x03030303), vconst(4)))
    return _sixteens(builder, value, lambda s: _byte(builder, word(at + s // 4), s % 4, signed=True), 32), []


class KFormat(NamedTuple):
    """A K-quant in the integer products: `bits`, its unsigned values' width; `groups`, IR turning the words of a
    block of 16 rows into its sub-blocks and (min, activation sums) terms."""
    bits: int
    groups: Callable


K_FORMATS: dict[DType, KFormat] = {
    DType.Q2_K: KFormat(2, _q2_k), DType.Q3_K: KFormat(3, _q3_k), DType.Q4_K: KFormat(4, _q4_k),
    DType.Q5_K: KFormat(5, _q5_k), DType.Q6_K: KFormat(6, _q6_k)}


def _sum_splat(builder: ir.IRBuilder, row: ir.Value, first: ir.Value, indices: tuple[int, ...]) -> ir.Value:
    """The activations' sums of 16 at indices (from byte `first` on) of a row, added, in every lane."""
    total = None
    for i in indices:
        value = scalar_splat(builder, row, builder.add(first, const(first, 4 * i)), I32, VI32)
        total = value if total is None else builder.add(total, value)
    return total


def _slots(builder: ir.IRBuilder, n: int, ty: ir.Type) -> Callable[[ir.Value], ir.Value]:
    """An n-vector stack scratch: slot(i) points at vector i (i an IR index or an int)."""
    scratch = cgutils.alloca_once(builder, ir.ArrayType(ty, n))
    return lambda i: builder.gep(scratch, [ir.Constant(I32, 0), i if isinstance(i, ir.Value) else ir.Constant(I32, i)])


def _tile_loop(builder: ir.IRBuilder, dtype: DType, call: Q8Tile, n_x: ir.Value) -> None:
    """Sum over the blocks the products of weight tile t's rows (one per lane) with activation rows n0..n0 + n_x
    - 1 into out[n0 + j, 16t..]. Each block's unsigned values and scales go to a stack scratch once (in L1), read
    back for each activation row by a loop: one loop body for every row count keeps the code (and its compile
    time) small, and no register file holds a block's 64 vectors of values anyway."""
    xq, xd, xs, out, n0 = call.xq, call.xd, call.xs, call.out, call.n0
    fmt, tile, k = K_FORMATS[dtype], tile_rows(builder, call.w, call.t), xq.cols
    zero, n_vectors = ir.Constant(VI32, None), QK_K // 4
    values, scales, acc = _slots(builder, n_vectors, VI32), _slots(builder, 32, VI32), _slots(builder, TILE_ROWS, VF32)
    with cgutils.for_range(builder, n_x) as row:
        builder.store(ir.Constant(VF32, None), acc(row.index))
    with cgutils.for_range(builder, builder.sdiv(k, const(k, QK_K))) as loop:
        b = loop.index
        header, word = block_words(builder, tile, b, TILE_LAYOUTS[dtype])
        groups, mins = fmt.groups(builder, word)
        for i, v in enumerate(v for g in groups for v, _ in g.pairs):
            builder.store(v, values(i))
        for i, v in enumerate([g.scale for g in groups] + [m for m, _ in mins]):
            builder.store(v, scales(i))
        d_w, m_w = header_scales(builder, header)
        x_at, sums_at = builder.mul(b, const(b, QK_K)), builder.mul(b, const(b, 4 * QK_K // 16))
        with cgutils.for_range(builder, n_x) as row:
            j = row.index
            x_row, d_row, s_row = (builder.gep(a.data, [builder.mul(builder.add(n0, j), a.stride)])
                                   for a in (xq, xd, xs))
            sumi, summin, at = zero, zero, 0
            for g_at, g in enumerate(groups):
                dot = zero
                for _, i in g.pairs:
                    x_i = scalar_splat(builder, x_row, builder.add(x_at, const(x_at, 4 * i)), I32, VI32)
                    dot, at = dpbusd(builder, dot, builder.load(values(at)), x_i, fmt.bits), at + 1
                if g.zero:  # the values' offset times the activations' sums
                    dot = builder.sub(dot, builder.mul(_sum_splat(builder, s_row, sums_at, g.sums), vconst(g.zero)))
                sumi = builder.add(sumi, builder.mul(dot, builder.load(scales(g_at))))
            for m_at, (_, indices) in enumerate(mins, len(groups)):
                summin = builder.add(summin, builder.mul(builder.load(scales(m_at)),
                                                         _sum_splat(builder, s_row, sums_at, indices)))
            d_x = scalar_splat(builder, d_row, builder.mul(b, const(b, 4)), F32, VF32)
            total = fma(builder, builder.sitofp(sumi, VF32), builder.fmul(d_w, d_x), builder.load(acc(j)))
            if m_w is not None:  # less the mins times the activations' sums
                total = fma(builder, builder.sitofp(summin, VF32), builder.fneg(builder.fmul(m_w, d_x)), total)
            builder.store(total, acc(j))
    with cgutils.for_range(builder, n_x) as row:
        masked_store(builder, builder.load(acc(row.index)), builder.gep(out.data, [builder.mul(
            builder.add(n0, row.index), out.stride)]), builder.mul(tile.first, const(tile.first, 4)), tile.mask)


Q8K_TILED = {t: tiled_products(t, quantize_q8_k, tile_intrinsic(t, _tile_loop)) for t in K_FORMATS}


def q8k_product(dtype: DType, w: np.ndarray, x: np.ndarray, out: np.ndarray, n_tasks: int) -> Callable[[], None]:
    """The step out (N, M) = Q8_K(x) (N, K) @ dequantize(w).T for w (M, bytes per row) K-quant blocks repacked by
    numba_q8.repack, in n_tasks parallel tasks (x and out float32 with contiguous rows)."""
    check_float32_rows("q8k_product", x, out)
    return functools.partial(Q8K_TILED[dtype], w, x, *activation_buffers(x), out, n_tasks)
