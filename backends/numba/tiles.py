"""Register-tiled block products for one to a few activation rows, written in LLVM IR through numba intrinsics.

A tile takes two weight rows and up to TILE_ROWS activation rows: it decodes each 32-value unit of a block into
two 16-lane float vectors once, multiplies them into 2 x rows vector accumulators held in registers across the
whole row, and stores the sums. Plain numba code cannot hold such accumulators: LLVM vectorizes only innermost
loops and reduces their accumulators on every exit, so numba_quants.py's kernels keep per-lane sums in memory
(the old one-row mat-vec) or write decoded rows to a scratch and read them back (dequantize once), a pass as
long as a whole one-row product; here the decoding overlaps the multiply-adds. Each value is d·q + offset
multiplied as numba_quants.py's dequantize-once path does, lane l summing values l, l + 16, ... in order: the two
paths agree to rounding (for the 32-value types, exactly). Field offsets come from the block-layout table
(graph/block_layouts.py); each type's decoder is one function.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import prange, types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic

from pyggml.graph.block_layouts import BLOCKS
from pyggml.graph.dtypes import DType

from .quants import kernel_unit, prefetch_line, share, specialize

LANES = 16
Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = (BLOCKS[t] for t in (DType.Q8_0, DType.Q2_K, DType.Q3_K, DType.Q4_K, DType.Q5_K,
                                                           DType.Q6_K))
I8, I16, I32, F16, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.HalfType(), ir.FloatType()
VF32, VI32, VI8, VF16 = (ir.VectorType(t, LANES) for t in (F32, I32, I8, F16))
TILE_ROWS = 8  # activation rows per tile: 2 x 8 accumulators and the decoded vectors fit in AVX-512's 32 registers
# (AVX2's 16 spill some, and still beat tiles of 4: SmolLM2's products at 8 rows compiled for Haswell, 17.4 against
# 20.7 ms)
TILED_MAX_ROWS = 16  # activation rows up to which the tiles beat dequantizing once (each tile of rows decodes the
# blocks again). SmolLM2's 211 products at 16 rows: 29 against 36 ms, at 32 58 against 65, at 64 121 against 116;
# Gemma 3's 127: 67 against 87 ms at 16, 308 against 264 at 64; 2048 x 1024 K-quants and Q5_0 tie at 16


def splat(builder: ir.IRBuilder, value: ir.Value, vec: ir.VectorType) -> ir.Value:
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(I32, 0))
    zeros = ir.Constant(ir.VectorType(I32, LANES), [0] * LANES)
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), zeros)


def _load(builder: ir.IRBuilder, p: ir.Value, offset: int, ty: ir.Type) -> ir.Value:
    """The value of type ty at byte offset of i8* p (unaligned)."""
    return builder.load(builder.bitcast(builder.gep(p, [ir.Constant(I32, offset)]), ty.as_pointer()), align=1)


def _half(builder: ir.IRBuilder, p: ir.Value, offset: int) -> ir.Value:
    """The float16 at byte offset of p, as a float32."""
    return builder.fpext(builder.bitcast(_load(builder, p, offset, I16), F16), F32)


def fma(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(VF32, [VF32] * 3), "llvm.fma.v16f32")
    return builder.call(fn, [a, b, c])


def _nibbles(builder: ir.IRBuilder, p: ir.Value, offset: int) -> tuple[ir.Value, ir.Value]:
    """The low and high nibbles of the 16 bytes at offset of p, as float vectors."""
    q = builder.zext(_load(builder, p, offset, VI8), VI32)
    lo = builder.and_(q, ir.Constant(VI32, [15] * LANES))
    hi = builder.lshr(q, ir.Constant(VI32, [4] * LANES))
    return builder.uitofp(lo, VF32), builder.uitofp(hi, VF32)


def _affine(builder: ir.IRBuilder, d: ir.Value, offset: ir.Value, values: tuple[ir.Value, ...]) -> tuple:
    """d · v + offset for each vector v."""
    dv, ov = splat(builder, d, VF32), splat(builder, offset, VF32)
    return tuple(fma(builder, dv, v, ov) for v in values)


def _d_zero(builder: ir.IRBuilder, p: ir.Value, dtype: DType, zero: float,
            values: Callable) -> tuple[ir.Value, ir.Value]:
    """ggml's _0 types: d·(v - zero), v = values(builder, p, dtype)."""
    d = _half(builder, p, BLOCKS[dtype].at("d"))
    return _affine(builder, d, builder.fmul(d, ir.Constant(F32, -zero)), values(builder, p, dtype))


def _d_min(builder: ir.IRBuilder, p: ir.Value, dtype: DType, values: Callable) -> tuple[ir.Value, ir.Value]:
    """ggml's _1 types: d·v + m, v = values(builder, p, dtype)."""
    layout = BLOCKS[dtype]
    return _affine(builder, _half(builder, p, layout.at("d")), _half(builder, p, layout.at("m")),
                   values(builder, p, dtype))


def _qs_nibbles(builder: ir.IRBuilder, p: ir.Value, dtype: DType) -> tuple[ir.Value, ir.Value]:
    """The 32 values of a Q4_0/Q4_1 block's qs nibbles."""
    return _nibbles(builder, p, BLOCKS[dtype].at("qs"))


def _q4_0(builder: ir.IRBuilder, p: ir.Value, unit: int) -> tuple[ir.Value, ir.Value]:
    return _d_zero(builder, p, DType.Q4_0, 8.0, _qs_nibbles)


def _q4_1(builder: ir.IRBuilder, p: ir.Value, unit: int) -> tuple[ir.Value, ir.Value]:
    return _d_min(builder, p, DType.Q4_1, _qs_nibbles)


def _fives(builder: ir.IRBuilder, p: ir.Value, dtype: DType) -> tuple[ir.Value, ir.Value]:
    """Q5 values of the uint32 qh and the 16 bytes of qs: value i's bit 4 is bit i of qh."""
    qh = splat(builder, _load(builder, p, BLOCKS[dtype].at("qh"), I32), VI32)
    lo, hi = _nibbles(builder, p, BLOCKS[dtype].at("qs"))
    out = []
    for nibble, first in ((lo, 0), (hi, LANES)):
        bit = builder.and_(builder.lshr(qh, ir.Constant(VI32, list(range(first, first + LANES)))),
                           ir.Constant(VI32, [1] * LANES))
        out.append(_with_bit4(builder, nibble, bit))
    return tuple(out)


def _with_bit4(builder: ir.IRBuilder, nibble: ir.Value, bit: ir.Value) -> ir.Value:
    """nibble + 16·bit: a 5-bit value from its float nibble and its int top bit (vectors)."""
    return builder.fadd(nibble, builder.uitofp(builder.shl(bit, ir.Constant(VI32, [4] * LANES)), VF32))


def _q5_0(builder: ir.IRBuilder, p: ir.Value, unit: int) -> tuple[ir.Value, ir.Value]:
    return _d_zero(builder, p, DType.Q5_0, 16.0, _fives)


def _q5_1(builder: ir.IRBuilder, p: ir.Value, unit: int) -> tuple[ir.Value, ir.Value]:
    return _d_min(builder, p, DType.Q5_1, _fives)


def _q8_0(builder: ir.IRBuilder, p: ir.Value, unit: int) -> tuple[ir.Value, ir.Value]:
    d, qs = splat(builder, _half(builder, p, Q8_0.at("d")), VF32), Q8_0.at("qs")
    return tuple(builder.fmul(d, builder.sitofp(_load(builder, p, qs + 16 * h, VI8), VF32)) for h in range(2))


def _f16(builder: ir.IRBuilder, p: ir.Value, unit: int) -> tuple[ir.Value, ir.Value]:
    return tuple(builder.fpext(_load(builder, p, 32 * h, VF16), VF32) for h in range(2))


def _byte(builder: ir.IRBuilder, p: ir.Value, offset: int) -> ir.Value:
    """The byte at offset of p, as an int32."""
    return builder.zext(_load(builder, p, offset, I8), I32)


def _bits(builder: ir.IRBuilder, value: ir.Value, shift: int, mask: int) -> ir.Value:
    """(value >> shift) & mask."""
    return builder.and_(builder.lshr(value, ir.Constant(value.type, shift)), ir.Constant(value.type, mask))


def _k4_scale_min(builder: ir.IRBuilder, p: ir.Value, j: int) -> tuple[ir.Value, ir.Value]:
    """Q4_K/Q5_K: sub-block j's 6-bit scale and min from the 12 packed scale bytes, as float32."""
    s = Q4_K.at("scales")
    if j < 4:
        sc, m = _bits(builder, _byte(builder, p, s + j), 0, 63), _bits(builder, _byte(builder, p, s + 4 + j), 0, 63)
    else:
        low, high_sc, high_m = _byte(builder, p, s + 4 + j), _byte(builder, p, s + j - 4), _byte(builder, p, s + j)
        sc = builder.or_(_bits(builder, low, 0, 15), builder.shl(_bits(builder, high_sc, 6, 3), ir.Constant(I32, 4)))
        m = builder.or_(_bits(builder, low, 4, 15), builder.shl(_bits(builder, high_m, 6, 3), ir.Constant(I32, 4)))
    return builder.uitofp(sc, F32), builder.uitofp(m, F32)


def _nibble_halves(builder: ir.IRBuilder, p: ir.Value, offset: int, high: bool) -> tuple[ir.Value, ir.Value]:
    """The low (or high) nibbles of the 32 bytes at offset of p, as two float vectors."""
    return tuple(_nibbles(builder, p, offset + 16 * h)[high] for h in range(2))


def _byte_bits(builder: ir.IRBuilder, p: ir.Value, offset: int, shift: int, mask: int) -> ir.Value:
    """(byte >> shift) & mask of the 16 bytes at offset of p, as an int vector."""
    return _vbits(builder, builder.zext(_load(builder, p, offset, VI8), VI32), shift, mask)


def _k_affine(builder: ir.IRBuilder, p: ir.Value, unit: int, values: tuple[ir.Value, ...]) -> tuple:
    """Q4_K/Q5_K: d·scale·v - dmin·min with sub-block `unit`'s scale and min."""
    sc, m = _k4_scale_min(builder, p, unit)
    d, dmin = _half(builder, p, Q4_K.at("d")), _half(builder, p, Q4_K.at("dmin"))
    return _affine(builder, builder.fmul(d, sc), builder.fneg(builder.fmul(dmin, m)), values)


def _q2_k(builder: ir.IRBuilder, p: ir.Value, unit: int) -> tuple[ir.Value, ir.Value]:
    """32 values: 2-bit fields (shift 2j of 32 bytes of 128-value half n), each 16 with a byte holding a 4-bit
    scale and a 4-bit min: d·scale·q - dmin·min."""
    n, j = divmod(unit, 4)
    d, dmin, values = _half(builder, p, Q2_K.at("d")), _half(builder, p, Q2_K.at("dmin")), []
    for h in range(2):
        sc = _byte(builder, p, Q2_K.at("scales") + 8 * n + 2 * j + h)
        q = builder.uitofp(_byte_bits(builder, p, Q2_K.at("qs") + 32 * n + 16 * h, 2 * j, 3), VF32)
        scale, low = (builder.uitofp(_bits(builder, sc, shift, 15), F32) for shift in (0, 4))
        values += _affine(builder, builder.fmul(d, scale), builder.fneg(builder.fmul(dmin, low)), (q,))
    return tuple(values)


def _q3_k_scale(builder: ir.IRBuilder, p: ir.Value, s: int) -> ir.Value:
    """Scale s of 16, 6 bits from the 12 scale bytes (a low nibble from bytes 0-7, two high bits from
    bytes 8-11), minus 32, as float32."""
    low = _bits(builder, _byte(builder, p, Q3_K.at("scales") + s % 8), 4 * (s // 8), 15)
    high = _bits(builder, _byte(builder, p, Q3_K.at("scales") + 8 + s % 4), 2 * (s // 4), 3)
    return builder.sitofp(builder.sub(builder.or_(low, builder.shl(high, ir.Constant(I32, 4))), ir.Constant(I32, 32)),
                          F32)


def _q3_k(builder: ir.IRBuilder, p: ir.Value, unit: int) -> tuple[ir.Value, ir.Value]:
    """32 values: 2-bit fields (as Q2_K, bytes at 32) less 4 where bit `unit` of the hmask byte is clear, each
    16 scaled by d·scale."""
    n, j = divmod(unit, 4)
    d, values = _half(builder, p, Q3_K.at("d")), []
    for h in range(2):
        q = _byte_bits(builder, p, Q3_K.at("qs") + 32 * n + 16 * h, 2 * j, 3)
        hbit = _byte_bits(builder, p, Q3_K.at("hmask") + 16 * h, unit, 1)
        q = builder.add(q, builder.shl(hbit, ir.Constant(VI32, [2] * LANES)))
        q = builder.sub(q, ir.Constant(VI32, [4] * LANES))
        values += _affine(builder, builder.fmul(d, _q3_k_scale(builder, p, 8 * n + 2 * j + h)), ir.Constant(F32, 0.0),
                          (builder.sitofp(q, VF32),))
    return tuple(values)


def _q4_k(builder: ir.IRBuilder, p: ir.Value, unit: int) -> tuple[ir.Value, ir.Value]:
    """Sub-block `unit` of eight: d·scale·nibble - dmin·min, the nibbles low (even units) or high of 32 bytes."""
    return _k_affine(builder, p, unit, _nibble_halves(builder, p, Q4_K.at("qs") + 32 * (unit // 2), unit % 2 == 1))


def _q5_k(builder: ir.IRBuilder, p: ir.Value, unit: int) -> tuple[ir.Value, ir.Value]:
    """As Q4_K with Q5_K's qs nibbles, value l's bit 4 being bit `unit` of qh[l]."""
    nibbles = _nibble_halves(builder, p, Q5_K.at("qs") + 32 * (unit // 2), unit % 2 == 1)
    high = (_byte_bits(builder, p, Q5_K.at("qh") + 16 * h, unit, 1) for h in range(2))
    return _k_affine(builder, p, unit, tuple(_with_bit4(builder, nibble, bit) for nibble, bit in zip(nibbles, high)))


def _q6_k(builder: ir.IRBuilder, p: ir.Value, unit: int) -> tuple[ir.Value, ir.Value]:
    """32 values of a 128-value half n: d·scale·(q - 32), q's low 4 bits a nibble of ql, its high 2 of qh; each
    16 values have their own int8 scale."""
    n, k = divmod(unit, 4)
    d, values = _half(builder, p, Q6_K.at("d")), []
    for h in range(2):
        nibble = _byte_bits(builder, p, Q6_K.at("ql") + 64 * n + 32 * (k % 2) + 16 * h, 4 * (k // 2), 15)
        high = _byte_bits(builder, p, Q6_K.at("qh") + 32 * n + 16 * h, 2 * k, 3)
        q = builder.uitofp(builder.or_(nibble, builder.shl(high, ir.Constant(VI32, [4] * LANES))), VF32)
        c = builder.fmul(d, builder.sitofp(_load(builder, p, Q6_K.at("scales") + 8 * n + 2 * k + h, I8), F32))
        values.append(_affine(builder, c, builder.fmul(c, ir.Constant(F32, -32.0)), (q,))[0])
    return tuple(values)


def _vbits(builder: ir.IRBuilder, value: ir.Value, shift: int, mask: int) -> ir.Value:
    """(value >> shift) & mask for each lane."""
    return builder.and_(builder.lshr(value, ir.Constant(VI32, [shift] * LANES)), ir.Constant(VI32, [mask] * LANES))


class TileFormat(NamedTuple):
    """A block type in the tiles: values and bytes per block, and the IR decoding unit u of a block (its values
    32u..32u+31) into two 16-value halves."""
    block: int
    type_size: int
    decode: Callable


TILE_FORMATS: dict[DType, TileFormat] = {t: TileFormat(*kernel_unit(t), decode) for t, decode in (
    (DType.Q4_0, _q4_0), (DType.Q4_1, _q4_1), (DType.Q5_0, _q5_0), (DType.Q5_1, _q5_1), (DType.Q8_0, _q8_0),
    (DType.F16, _f16), (DType.Q2_K, _q2_k), (DType.Q3_K, _q3_k), (DType.Q4_K, _q4_k), (DType.Q5_K, _q5_k),
    (DType.Q6_K, _q6_k))}


class Array(NamedTuple):
    """IR values of a 2-D array with contiguous rows: an i8* to its data, its row stride in bytes, its number of
    rows and its row length."""
    data: ir.Value
    stride: ir.Value
    rows: ir.Value
    cols: ir.Value


def array_of(context, builder, ary_type, value) -> Array:
    """The IR values of a 2-D array argument of an intrinsic."""
    ary = context.make_array(ary_type)(context, builder, value)
    shape = cgutils.unpack_tuple(builder, ary.shape, 2)
    return Array(builder.bitcast(ary.data, I8.as_pointer()), builder.extract_value(ary.strides, 0), shape[0], shape[1])


def const(value: ir.Value, n: int) -> ir.Constant:
    return ir.Constant(value.type, n)


def make_tile(dtype: DType, n_w: int):
    """The tile intrinsic of block type dtype for n_w weight rows: tile(w, g, n_groups, x, n0, n_x, out) makes
    out[n0 + j, g + i·n_groups] for j < n_x <= TILE_ROWS and the weight rows that exist (a loop compiled for each
    n_x, chosen by a switch)."""
    def codegen(context, builder, signature, args):
        w_ty, _, _, x_ty, _, _, out_ty = signature.args
        w, g, n_groups = array_of(context, builder, w_ty, args[0]), args[1], args[2]
        x, out = array_of(context, builder, x_ty, args[3]), array_of(context, builder, out_ty, args[6])
        group = _weight_group(builder, w, g, n_groups, n_w)
        following = builder.add(g, const(g, 1))  # the next group's rows are fetched while these are multiplied
        ahead = _weight_group(builder, w, builder.select(
            builder.icmp_signed("<", following, n_groups), following, g), n_groups, n_w).starts
        tile = TileOperands(group=group, ahead=ahead, x=x, out=out, n0=args[4])
        row_count_switch(builder, args[5], TILE_ROWS, lambda n: _tile_loop(builder, dtype, tile, n))
        return context.get_dummy_value()

    @intrinsic
    def tile(typingctx, w, g, n_groups, x, n0, n_x, out):
        return nbtypes.void(w, g, n_groups, x, n0, n_x, out), codegen
    return tile


def row_count_switch(builder: ir.IRBuilder, n_x: ir.Value, most: int, emit: Callable[[int], None]) -> None:
    """IR: a switch on the run-time row count n_x with a case for each n in 1..most, emit(n) writing its code (a
    loop compiled for each count keeps its accumulators in registers)."""
    end = builder.append_basic_block("tile.end")
    switch = builder.switch(n_x, end)
    for n in range(1, most + 1):
        case = builder.append_basic_block(f"tile.{n}")
        switch.add_case(const(n_x, n), case)
        builder.position_at_end(case)
        emit(n)
        builder.branch(end)
    builder.position_at_end(end)


class WeightGroup(NamedTuple):
    """IR values of group g's weight rows g + i·n_groups: their indices, pointers to them (row g's for rows past
    the end), and whether each exists."""
    rows: list[ir.Value]
    starts: list[ir.Value]
    exists: list[ir.Value]


class TileOperands(NamedTuple):
    """What a tile's loop reads and writes: its weight group, the pointers to the rows prefetched on the way (the
    next group's), the activations x from row n0 on, and out."""
    group: WeightGroup
    ahead: list[ir.Value]
    x: Array
    out: Array
    n0: ir.Value


def _weight_group(builder: ir.IRBuilder, w: Array, g: ir.Value, n_groups: ir.Value, n_w: int) -> WeightGroup:
    """Group g's n_w weight rows in w."""
    rows = [builder.add(g, builder.mul(n_groups, const(g, i))) for i in range(n_w)]
    exists = [builder.icmp_signed("<", r, w.rows) for r in rows]
    starts = [builder.gep(w.data, [builder.mul(builder.select(e, r, g), w.stride)]) for r, e in zip(rows, exists)]
    return WeightGroup(rows, starts, exists)


def _tile_loop(builder: ir.IRBuilder, dtype: DType, tile: TileOperands, n_x: int) -> None:
    """The products of the tile's weight rows with activation rows n0..n0 + n_x - 1, summed into out[n, row] for
    the rows that exist; each block of the rows at `ahead` is prefetched on the way."""
    block, type_size, decode = TILE_FORMATS[dtype]
    x, out, n0 = tile.x, tile.out, tile.n0
    x0 = builder.gep(x.data, [builder.mul(n0, x.stride)])
    acc = [[cgutils.alloca_once_value(builder, ir.Constant(VF32, None)) for _ in range(n_x)]
           for _ in tile.group.starts]
    with cgutils.for_range(builder, builder.sdiv(x.cols, const(x.cols, block))) as loop:
        blocks = [builder.gep(p, [builder.mul(loop.index, const(loop.index, type_size))]) for p in tile.group.starts]
        for p in tile.ahead:
            prefetch_line(builder, builder.gep(p, [builder.mul(loop.index, const(loop.index, type_size))]))
        x_block = builder.gep(x0, [builder.mul(loop.index, const(loop.index, block * 4))])
        for unit in range(block // 32):
            _products(builder, [decode(builder, b, unit) for b in blocks], x_block, 128 * unit, x.stride, acc)
    for i, (row, row_exists) in enumerate(zip(tile.group.rows, tile.group.exists)):
        with builder.if_then(row_exists):
            _store_sums(builder, [builder.load(a) for a in acc[i]], out.data, out.stride, n0, row)


def _products(builder: ir.IRBuilder, halves: list[tuple[ir.Value, ir.Value]], x_block: ir.Value, offset: int,
              x_stride: ir.Value, acc: list[list[ir.Value]]) -> None:
    """acc[i][j] += halves[i] · the 32 activations of row j at byte offset of x_block, lane by lane."""
    for j in range(len(acc[0])):
        xp = builder.gep(x_block, [builder.mul(x_stride, const(x_stride, j))])
        xs = [_load(builder, xp, offset + 64 * h, VF32) for h in range(2)]
        for i, (lo, hi) in enumerate(halves):
            builder.store(fma(builder, hi, xs[1], fma(builder, lo, xs[0], builder.load(acc[i][j]))), acc[i][j])


def _store_sums(builder: ir.IRBuilder, accs: list[ir.Value], out: ir.Value, stride: ir.Value, n0: ir.Value,
                col: ir.Value) -> None:
    """out[n0 + j, col] = the sum of accs[j]'s lanes."""
    reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(F32, [F32, VF32]),
                                            "llvm.vector.reduce.fadd.v16f32")
    for j, a in enumerate(accs):
        total = builder.call(reduce, [ir.Constant(F32, -0.0), a], fastmath=("reassoc",))
        offset = builder.add(builder.mul(builder.add(n0, const(n0, j)), stride), builder.mul(col, const(col, 4)))
        builder.store(total, builder.bitcast(builder.gep(out, [offset]), F32.as_pointer()))


def _tiled(w, x, out, n_tasks):
    """out[n, m] = w[m] · x[n]: weight rows g and g + n_groups (two memory streams) against TILE_ROWS activation
    rows at a time, each task going over its share of the weight once per tile of activation rows (which stay in
    L1 meanwhile: 256 rows of SmolLM2, 536 -> 437 ms against the other order); TILE is the block type's, bound by
    specialize."""
    n_groups = (w.shape[0] + 1) // 2
    n_tasks = min(n_tasks, n_groups)
    for task in prange(n_tasks):
        start, stop = share(task, n_tasks, n_groups)
        for n0 in range(0, x.shape[0], TILE_ROWS):
            for g in range(start, stop):
                TILE(w, g, n_groups, x, n0, min(TILE_ROWS, x.shape[0] - n0), out)  # noqa: F821


TILED = {t: specialize(_tiled, t, True, TILE=make_tile(t, 2)) for t in TILE_FORMATS}


def tiled_product(dtype: DType, w: np.ndarray, x: np.ndarray, out: np.ndarray, n_tasks: int):
    """The step out (N, M) = x (N, K) @ dequantize(w).T through the register tiles, in n_tasks parallel tasks (x
    and out float32 with contiguous rows: the tiles read and write them as such)."""
    check_float32_rows("tiled_product", x, out)
    return functools.partial(TILED[dtype], w, x, out, n_tasks)


def check_float32_rows(product: str, x: np.ndarray, out: np.ndarray) -> None:
    """Refuse, naming the product, an x or out that is not 2-D float32 with contiguous rows (as the tiles read and
    write them)."""
    if not all(a.dtype == np.float32 and a.ndim == 2 and a.strides[1] == 4 for a in (x, out)):
        raise ValueError(f"{product} needs float32 rows with contiguous elements, got x {x.dtype} "
                         f"strides {x.strides} and out {out.dtype} strides {out.strides}")
