"""Integer block products with 8-bit activations, llama.cpp's numerics: each activation row is quantized to ggml's
Q8_0 (per 32 values d = amax / 127 held as float16, q = roundf(x / d)) and each block's dot product is summed in
int32, then scaled by the two blocks' d (plus the weight's min times the activations' sum for the _1 types).

Weights of a type in Q8_FORMATS are repacked once (`repack`, as many bytes): the rows of a tile of 16 hold, block
after block, the 16 rows' scales, then the 16 rows' first four bytes of values, then their next four, ... So one
64-byte load holds four values of a block of each of 16 rows, and vpdpbusd (AVX512-VNNI; a portable sequence
elsewhere) adds their products with four activation bytes broadcast into 16 int32 lanes, one lane per weight row.
A block of 16 rows costs eight of them per activation row plus three float operations, against 32 float
multiply-adds in numba_tiles.py, and the 16 sums come out side by side, as outputs. A tile goes over its blocks
once per TILE_ROWS activation rows. `tiled_rows` gives rows back in ggml's layout, for get_rows.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from llvmlite import binding as llvm, ir
from numba import njit, prange, types as nbtypes
from numba.core import cgutils, config
from numba.extending import intrinsic

from pyggml.graph.block_layouts import BLOCKS
from pyggml.graph.dtypes import DType

from .quants import prefetch_line, share, specialize
from .tiles import (F16, F32, I8, I16, I32, VF32, VI32, Array, array_of, check_float32_rows, const, fma,
                    row_count_switch, splat)

LANES = 16  # weight rows per tile: one int32 lane each
TILE_ROWS = 8  # activation rows per tile: their 8 int32 and 8 float accumulators beside the 8 weight vectors
PREFETCH_AHEAD = 4096  # bytes ahead of a tile's blocks (read in order) fetched on the way: SmolLM2's products at 8
# rows 9.7 -> 7.4-8.4 ms with 2-4 KiB; 8 rows against 1, alternated in one session: 1.48-1.59x at 4 KiB, 1.53-1.84x
# at 2 KiB, 1.58-1.84x at 8 KiB (the hardware's prefetcher alone runs out of lead); into L2 only (locality 1,
# prefetcht2), which leaves L1's fill buffers to the loads: 1 row 4.0-5.4 against 4.5-6.0 ms into L1, alternated
REPACK_BYTES = 32 << 20  # weight bytes repacked at a time: the mapped rows behind them can be let go as it goes
VI16, VF16 = ir.VectorType(I16, LANES), ir.VectorType(F16, LANES)


def vconst(value: int) -> ir.Constant:
    return ir.Constant(VI32, [value - (1 << 32) if value >= 1 << 31 else value] * LANES)


def _nibble_vectors(builder: ir.IRBuilder, dwords: list[ir.Value]) -> list[ir.Value]:
    """The eight value vectors of four dwords of nibbles: values 4k..4k+3 are the low nibbles of dword k (k < 4),
    values 16 + 4k.. its high ones."""
    low = [builder.and_(d, vconst(0x0F0F0F0F)) for d in dwords]
    return low + [builder.and_(builder.lshr(d, vconst(4)), vconst(0x0F0F0F0F)) for d in dwords]


def _with_high_bits(builder: ir.IRBuilder, qh: ir.Value, vectors: list[ir.Value]) -> list[ir.Value]:
    """Q5: value i's bit 4 is bit i of qh; for vector k, bits 4k..4k+3 go to bit 4 of its four bytes (a multiply
    puts bit e at 8e + 4 with no carries: the copies land on distinct bits)."""
    out = []
    for k, v in enumerate(vectors):
        bits = builder.and_(builder.lshr(qh, vconst(4 * k)), vconst(15))
        out.append(builder.or_(v, builder.and_(builder.mul(bits, vconst(0x02040810)), vconst(0x10101010))))
    return out


def _q4(builder: ir.IRBuilder, dwords: list[ir.Value]) -> list[ir.Value]:
    return _nibble_vectors(builder, dwords)


def _q5(builder: ir.IRBuilder, dwords: list[ir.Value]) -> list[ir.Value]:
    return _with_high_bits(builder, dwords[0], _nibble_vectors(builder, dwords[1:]))


def _q8(builder: ir.IRBuilder, dwords: list[ir.Value]) -> list[ir.Value]:
    """int8 values made unsigned (+128, the zero taken off through the activations' sums)."""
    return [builder.xor(d, vconst(0x80808080)) for d in dwords]


class Q8Format(NamedTuple):
    """A 32-value block type in the integer products (its layout in TILE_LAYOUTS): `zero`, the unsigned value that
    stands for 0, and `bits`, the values' width; `unpack`, IR turning the words of 16 rows' blocks into the eight
    vectors of unsigned values 4k..4k+3 of each row's block."""
    zero: int
    bits: int
    unpack: Callable


Q8_FORMATS: dict[DType, Q8Format] = {
    DType.Q4_0: Q8Format(8, 4, _q4), DType.Q4_1: Q8Format(0, 4, _q4), DType.Q5_0: Q8Format(16, 5, _q5),
    DType.Q5_1: Q8Format(0, 5, _q5), DType.Q8_0: Q8Format(128, 8, _q8)}


class TileLayout(NamedTuple):
    """Where a block's float16 scalars (d, or d and its min: `header_bytes`) lie in ggml's layout, and how many
    4-byte words of values and sub-block scales the rest of the block holds, in order."""
    header_at: int
    header_bytes: int
    words: int

    @property
    def type_size(self) -> int:
        return self.header_bytes + 4 * self.words


def _tile_layout(dtype: DType) -> TileLayout:
    """A row of TILE_LAYOUTS from the block-layout table: the float16 scalars (adjacent in every repacked type)
    make the header, the other fields the words."""
    layout = BLOCKS[dtype]
    scalars = layout.scalars()
    assert list(scalars) == list(range(scalars[0], scalars[0] + 2 * len(scalars), 2)), dtype
    header_bytes = 2 * len(scalars)
    return TileLayout(scalars[0], header_bytes, (layout.nbytes - header_bytes) // 4)


def word_of(dtype: DType, field: str) -> int:
    """The index, among a tiled block's words, of the word where a field of the block-layout table starts."""
    offset, layout = BLOCKS[dtype].at(field), TILE_LAYOUTS[dtype]
    return (offset - (layout.header_bytes if offset > layout.header_at else 0)) // 4


TILE_LAYOUTS: dict[DType, TileLayout] = {t: _tile_layout(t) for t in (
    DType.Q4_0, DType.Q4_1, DType.Q5_0, DType.Q5_1, DType.Q8_0, DType.Q2_K, DType.Q3_K, DType.Q4_K, DType.Q5_K,
    DType.Q6_K)}


@njit(cache=True)
def _move_rows(src, dst, rows, n_rows, header_at, header_bytes, words, to_tiles):
    """Rows between ggml's layout and the tiled one of an (n_rows, bytes per row) weight, where the R rows of tile
    t (rows 16t..) hold, block after block, their scales, then their first words, ...: to_tiles, plain row i of
    src goes to row rows[i] of the tiled dst; else tiled row rows[i] of src goes to plain row i of dst."""
    type_size = header_bytes + 4 * words
    row_bytes = src.shape[1]
    flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
    for i in range(len(rows)):
        t, lane = divmod(rows[i], LANES)
        tile_rows = min(LANES, n_rows - t * LANES)
        for b in range(row_bytes // type_size):
            plain = i * row_bytes + b * type_size
            tiled = t * LANES * row_bytes + b * tile_rows * type_size
            for j in range(header_bytes):
                _move(flat_src, flat_dst, plain + header_at + j, tiled + lane * header_bytes + j, to_tiles)
            for k in range(words):
                at = plain + 4 * k + (header_bytes if 4 * k >= header_at else 0)
                for j in range(4):
                    _move(flat_src, flat_dst, at + j, tiled + tile_rows * header_bytes + 4 * (k * tile_rows + lane) + j,
                          to_tiles)


@njit(inline="always")
def _move(src, dst, plain, tiled, to_tiles):
    if to_tiles:
        dst[tiled] = src[plain]
    else:
        dst[plain] = src[tiled]


def repack(dtype: DType, blocks: np.ndarray, done: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """(rows, bytes per row) blocks of dtype in ggml's layout -> the tiled layout the integer products read (as
    many bytes, in the same shape), REPACK_BYTES of rows at a time, done(those rows) called after each."""
    out, n_rows = np.empty_like(blocks), len(blocks)
    step = max(LANES, REPACK_BYTES // max(1, blocks.shape[1]) // LANES * LANES)
    for start in range(0, n_rows, step):
        chunk = np.ascontiguousarray(blocks[start:start + step])
        _move_rows(chunk, out, np.arange(start, start + len(chunk)), n_rows, *TILE_LAYOUTS[dtype], True)
        if done is not None:
            done(blocks[start:start + step])
    return out


def tiled_rows(dtype: DType, tiled: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of a repacked weight back in ggml's layout, (len(rows), bytes per row)."""
    out = np.empty((len(rows), tiled.shape[1]), np.uint8)
    _move_rows(np.ascontiguousarray(tiled), out, rows, len(tiled), *TILE_LAYOUTS[dtype], False)
    return out


def _call(builder: ir.IRBuilder, name: str, ret: ir.Type, *args: ir.Value) -> ir.Value:
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


@intrinsic
def _quantize_row(typingctx, x, xq, xd, xs, n, zero):
    """Row n of x (N, K) -> row n of xq (N, K) int8, ggml's Q8_0 values (d = amax / 127 rounded to float16,
    q = roundf(x / d) rounded half away from zero), of xd (N, 2 x blocks) float32: the blocks' d, then their
    d·Σq, and of xs (N, blocks) int32: the blocks' -zero·Σq."""
    def codegen(context, builder, signature, args):
        x, xq, xd, xs = (array_of(context, builder, t, a) for t, a in zip(signature.args[:4], args[:4]))
        n, zero = args[4], builder.trunc(args[5], I32)
        x_row, q_row, d_row, s_row = (builder.gep(a.data, [builder.mul(n, a.stride)]) for a in (x, xq, xd, xs))
        v32, i32x32 = ir.VectorType(F32, 32), ir.VectorType(I32, 32)
        n_blocks = builder.sdiv(x.cols, const(x.cols, 32))
        with cgutils.for_range(builder, n_blocks) as loop:
            b = loop.index
            v = _plain_load(builder, x_row, builder.mul(b, const(b, 128)), v32)
            amax = _call(builder, "llvm.vector.reduce.fmax.v32f32", F32, _call(builder, "llvm.fabs.v32f32", v32, v))
            d = builder.fdiv(amax, ir.Constant(F32, 127.0))
            positive = builder.fcmp_ordered(">", d, ir.Constant(F32, 0.0))
            inv = builder.select(positive, builder.fdiv(ir.Constant(F32, 1.0), d), ir.Constant(F32, 0.0))
            scales = builder.shuffle_vector(builder.insert_element(ir.Constant(v32, ir.Undefined), inv,
                                                                   ir.Constant(I32, 0)),
                                            ir.Constant(v32, ir.Undefined), ir.Constant(i32x32, [0] * 32))
            q = builder.fptosi(_call(builder, "llvm.round.v32f32", v32, builder.fmul(v, scales)), i32x32)
            at = builder.mul(b, const(b, 32))
            builder.store(builder.trunc(q, ir.VectorType(I8, 32)),
                          builder.bitcast(builder.gep(q_row, [at]), ir.VectorType(I8, 32).as_pointer()),
                          align=1)
            total = _call(builder, "llvm.vector.reduce.add.v32i32", I32, q)
            dh = builder.fpext(builder.fptrunc(d, F16), F32)  # as stored in a Q8_0 block
            fields = ((d_row, b, dh), (d_row, builder.add(b, n_blocks), builder.fmul(dh, builder.sitofp(total, F32))),
                      (s_row, b, builder.mul(builder.neg(zero), total)))
            for row, at, value in fields:
                builder.store(value, builder.bitcast(builder.gep(row, [builder.mul(at, const(b, 4))]),
                                                     value.type.as_pointer()))
        return context.get_dummy_value()
    return nbtypes.void(x, xq, xd, xs, n, zero), codegen


@njit(cache=True)
def _quantize_rows(x, xq, xd, xs, zero):
    """Every row of x into xq, xd and xs (see _quantize_row)."""
    for n in range(x.shape[0]):
        _quantize_row(x, xq, xd, xs, n, zero)


def _activation_buffers(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Room for x (N, K) as Q8_0: values (N, K) int8, per-block float scales (N, 2 x blocks) and integer sums
    (N, blocks)."""
    blocks = x.shape[1] // 32
    return np.empty(x.shape, np.int8), np.empty((len(x), 2 * blocks), np.float32), np.empty((len(x), blocks), np.int32)


def quantize_activations(x: np.ndarray, zero: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (N, K) float32 as Q8_0, zero being the weight type's: (values (N, K) int8, per block d then d·Σq
    (N, 2 x blocks) float32, per block -zero·Σq (N, blocks) int32)."""
    buffers = _activation_buffers(x)
    _quantize_rows(x, *buffers, zero)
    return buffers


def _target_has(feature: str) -> bool:
    """Whether the code numba emits may use an x86 feature: this host's, or NUMBA_CPU_FEATURES' where
    NUMBA_CPU_NAME names another CPU."""
    if not config.CPU_NAME:
        return bool(llvm.get_host_cpu_features().get(feature))
    return f"+{feature}" in (config.CPU_FEATURES or "").split(",")


def dpbusd(builder: ir.IRBuilder, acc: ir.Value, unsigned: ir.Value, signed: ir.Value, bits: int) -> ir.Value:
    """acc + the sums of four products of unsigned bytes (below 2^bits) and signed bytes, lane by lane: vpdpbusd
    with AVX512-VNNI, ggml's AVX2 pair sums (vpmaddubsw, vpmaddwd) on halves, else plain integer IR. All three
    give the same integers."""
    if _target_has("avx512vnni"):
        return _call(builder, "llvm.x86.avx512.vpdpbusd.512", VI32, acc, unsigned, signed)
    if _target_has("avx2"):
        if bits > 7:  # vpmaddubsw saturates pairs of 8-bit products: four bits at a time
            low, high = (dpbusd(builder, ir.Constant(VI32, None), part, signed, 4)
                         for part in _nibble_vectors(builder, [unsigned]))
            return builder.add(acc, builder.add(low, builder.shl(high, vconst(4))))
        return builder.add(acc, _pair_sums(builder, unsigned, signed))
    # byte e of every lane by shifts on the 16 int32 lanes: 64-lane vectors and their shuffles took LLVM minutes
    # to compile where it must split them into SSE registers
    for e in range(4):
        u = builder.and_(builder.lshr(unsigned, vconst(8 * e)), vconst(0xFF))
        s = builder.ashr(builder.shl(signed, vconst(24 - 8 * e)), vconst(24))
        acc = builder.add(acc, builder.mul(u, s))
    return acc


def _pair_sums(builder: ir.IRBuilder, unsigned: ir.Value, signed: ir.Value) -> ir.Value:
    """The four-byte product sums of each lane through AVX2's 32-byte vpmaddubsw and vpmaddwd, half by half."""
    b32, i16x16, i32x8 = ir.VectorType(I8, 32), ir.VectorType(I16, 16), ir.VectorType(I32, 8)
    halves = [[builder.shuffle_vector(v, ir.Constant(VI32, ir.Undefined), ir.Constant(i32x8, list(range(h, h + 8))))
               for v in (unsigned, signed)] for h in (0, 8)]
    ones = ir.Constant(i16x16, [1] * 16)
    sums = [_call(builder, "llvm.x86.avx2.pmadd.wd", i32x8,
                  _call(builder, "llvm.x86.avx2.pmadd.ub.sw", i16x16, builder.bitcast(u, b32), builder.bitcast(x, b32)),
                  ones) for u, x in halves]
    return builder.shuffle_vector(sums[0], sums[1], ir.Constant(VI32, list(range(16))))


def _masked_load(builder: ir.IRBuilder, p: ir.Value, offset: ir.Value, vec: ir.VectorType,
                 mask: ir.Value) -> ir.Value:
    """The vector at byte offset of p, zero in the lanes mask leaves out (none of their bytes is read)."""
    ptr = builder.bitcast(builder.gep(p, [offset]), vec.as_pointer())
    return _call(builder, f"llvm.masked.load.v{LANES}i{vec.element.width}.p0", vec, ptr, ir.Constant(I32, 1), mask,
                 ir.Constant(vec, None))


def _plain_load(builder: ir.IRBuilder, p: ir.Value, offset: ir.Value, vec: ir.VectorType) -> ir.Value:
    return builder.load(builder.bitcast(builder.gep(p, [offset]), vec.as_pointer()), align=1)


def _halves(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """The float16 in each lane's low 16 bits, as float32."""
    return builder.fpext(builder.bitcast(builder.trunc(v, VI16) if v.type == VI32 else v, VF16), VF32)


def masked_store(builder: ir.IRBuilder, value: ir.Value, p: ir.Value, offset: ir.Value, mask: ir.Value) -> None:
    """Store the float vector's lanes that mask keeps at byte offset of p."""
    ptr = builder.bitcast(builder.gep(p, [offset]), value.type.as_pointer())
    _call(builder, f"llvm.masked.store.v{LANES}f32.p0", ir.VoidType(), value, ptr, ir.Constant(I32, 4), mask)


def scalar_splat(builder: ir.IRBuilder, p: ir.Value, offset: ir.Value, ty: ir.Type, vec: ir.VectorType) -> ir.Value:
    """The ty at byte offset of p in every lane of vec."""
    return splat(builder, builder.load(builder.bitcast(builder.gep(p, [offset]), ty.as_pointer()), align=1), vec)


class Q8Tile(NamedTuple):
    """IR values of a tile call: the tiled weight w and the tile t, the quantized activations (values xq, float
    scales xd, integer sums xs) read from row n0 on, and out."""
    w: Array
    t: ir.Value
    xq: Array
    xd: Array
    xs: Array
    n0: ir.Value
    out: Array


def tile_intrinsic(dtype: DType, emit: Callable[[ir.IRBuilder, DType, Q8Tile, ir.Value], None]):
    """The tile intrinsic of dtype, tile(w, t, xq, xd, xs, n0, n_x, out), that makes out[n0 + j, 16t + l] for
    j < n_x <= TILE_ROWS and the rows l of tiled weight tile t, from quantized activation rows n0 + j:
    emit(builder, dtype, call, n_x) writes its IR."""
    def codegen(context, builder, signature, args):
        w, xq, xd, xs, out = (array_of(context, builder, signature.args[i], args[i]) for i in (0, 2, 3, 4, 7))
        emit(builder, dtype, Q8Tile(w=w, t=args[1], xq=xq, xd=xd, xs=xs, n0=args[5], out=out), args[6])
        return context.get_dummy_value()

    @intrinsic
    def tile(typingctx, w, t, xq, xd, xs, n0, n_x, out):
        return nbtypes.void(w, t, xq, xd, xs, n0, n_x, out), codegen
    return tile


def _tile_loops(builder: ir.IRBuilder, dtype: DType, call: Q8Tile, n_x: ir.Value) -> None:
    """A _tile_loop per row count, chosen by a switch on n_x."""
    row_count_switch(builder, n_x, TILE_ROWS, lambda n: _tile_loop(builder, dtype, call, n))


class TileRows(NamedTuple):
    """IR values of a weight tile: its first row, how many rows it has (up to LANES), the lanes they fill, and a
    pointer to its bytes."""
    first: ir.Value
    rows: ir.Value
    mask: ir.Value
    data: ir.Value


def tile_rows(builder: ir.IRBuilder, w: Array, t: ir.Value) -> TileRows:
    """Tile t of the tiled weight w."""
    first = builder.mul(t, const(t, LANES))
    rows = builder.sub(w.rows, first)
    rows = builder.select(builder.icmp_signed("<", rows, const(rows, LANES)), rows, const(rows, LANES))
    mask = builder.icmp_signed("<", ir.Constant(VI32, list(range(LANES))), splat(builder, builder.trunc(rows, I32),
                                                                                  VI32))
    return TileRows(first, rows, mask, builder.gep(w.data, [builder.mul(first, w.stride)]))


def block_words(builder: ir.IRBuilder, tile: TileRows, b: ir.Value, layout: TileLayout) -> tuple[ir.Value, Callable]:
    """Block b of a tile: (its rows' scale header, one per lane (int16 d, or int32 d | min << 16), and word(i),
    the vector of their i-th words, loaded once); the block PREFETCH_AHEAD bytes on is fetched on the way."""
    start = builder.mul(b, builder.mul(tile.rows, const(tile.rows, layout.type_size)))
    for line in range(-(-LANES * layout.type_size // 64)):
        prefetch_line(builder, builder.gep(tile.data, [builder.add(start, const(start, PREFETCH_AHEAD + 64 * line))]),
                      locality=1)
    header = _masked_load(builder, tile.data, start, VI16 if layout.header_bytes == 2 else VI32, tile.mask)
    words_at = builder.add(start, builder.mul(tile.rows, const(tile.rows, layout.header_bytes)))
    loaded: dict[int, ir.Value] = {}

    def word(i: int) -> ir.Value:
        if i not in loaded:
            at = builder.add(words_at, builder.mul(tile.rows, const(tile.rows, 4 * i)))
            loaded[i] = _masked_load(builder, tile.data, at, VI32, tile.mask)
        return loaded[i]
    return header, word


def header_scales(builder: ir.IRBuilder, header: ir.Value) -> tuple[ir.Value, ir.Value | None]:
    """The float32 d of each lane's header, and its min (None for a 2-byte header)."""
    if header.type == VI16:
        return _halves(builder, header), None
    return _halves(builder, header), _halves(builder, builder.lshr(header, vconst(16)))


def row_pointer(builder: ir.IRBuilder, array: Array, n0: ir.Value, j: int) -> ir.Value:
    """A pointer to row n0 + j of an array."""
    return builder.gep(array.data, [builder.mul(builder.add(n0, const(n0, j)), array.stride)])


def store_tile(builder: ir.IRBuilder, acc: list[ir.Value], out: Array, n0: ir.Value, tile: TileRows) -> None:
    """out[n0 + j, the tile's rows] = the lanes of acc[j] (allocas)."""
    for j, a in enumerate(acc):
        at = builder.mul(tile.first, const(tile.first, 4))
        masked_store(builder, builder.load(a), row_pointer(builder, out, n0, j), at, tile.mask)


def _tile_loop(builder: ir.IRBuilder, dtype: DType, call: Q8Tile, n_x: int) -> None:
    """Sum over the blocks the products of weight tile t's rows (one per lane) with activation rows n0..n0 + n_x
    - 1 into out[n0 + j, 16t..]."""
    fmt, tile, k = Q8_FORMATS[dtype], tile_rows(builder, call.w, call.t), call.xq.cols
    x_rows, d_rows, s_rows = ([row_pointer(builder, a, call.n0, j) for j in range(n_x)]
                              for a in (call.xq, call.xd, call.xs))
    acc = [cgutils.alloca_once_value(builder, ir.Constant(VF32, None)) for _ in range(n_x)]
    n_blocks = builder.sdiv(k, const(k, 32))
    with cgutils.for_range(builder, n_blocks) as loop:
        b = loop.index
        header, word = block_words(builder, tile, b, TILE_LAYOUTS[dtype])
        values = fmt.unpack(builder, [word(i) for i in range(TILE_LAYOUTS[dtype].words)])
        d_w, m_w = header_scales(builder, header)
        x_at, d_at = builder.mul(b, const(b, 32)), builder.mul(b, const(b, 4))
        sum_at = builder.add(d_at, builder.mul(n_blocks, const(n_blocks, 4)))  # d·Σq, after the blocks' d
        for j in range(n_x):
            dots = scalar_splat(builder, s_rows[j], d_at, I32, VI32)
            for i, v in enumerate(values):
                x_i = scalar_splat(builder, x_rows[j], builder.add(x_at, const(x_at, 4 * i)), I32, VI32)
                dots = dpbusd(builder, dots, v, x_i, fmt.bits)
            d_x = scalar_splat(builder, d_rows[j], d_at, F32, VF32)
            total = fma(builder, builder.sitofp(dots, VF32), builder.fmul(d_w, d_x), builder.load(acc[j]))
            if m_w is not None:  # the min times the activations' sum
                total = fma(builder, m_w, scalar_splat(builder, d_rows[j], sum_at, F32, VF32), total)
            builder.store(total, acc[j])
    store_tile(builder, acc, call.out, call.n0, tile)


def _tiled_products(w, x, xq, xd, xs, out, n_tasks):
    """out[n, m] = weight row m · x[n] quantized for tiled weights w: x quantized into xq, xd and xs, then each
    task takes a share of the weight tiles and goes over it once per TILE_ROWS activation rows; QUANTIZE and TILE
    are the type's, bound by specialize."""
    QUANTIZE(x, xq, xd, xs)  # noqa: F821
    n_tiles = (w.shape[0] + LANES - 1) // LANES
    n_tasks = min(n_tasks, n_tiles)
    for task in prange(n_tasks):
        start, stop = share(task, n_tasks, n_tiles)
        for n0 in range(0, x.shape[0], TILE_ROWS):
            for t in range(start, stop):
                TILE(w, t, xq, xd, xs, n0, min(TILE_ROWS, x.shape[0] - n0), out)  # noqa: F821


def tiled_products(dtype: DType, quantize: Callable, tile: Callable) -> Callable:
    """The parallel kernel (w, x, xq, xd, xs, out, n_tasks) of dtype's integer products, with its activation
    quantizer quantize(x, xq, xd, xs) and its tile intrinsic (see tile_intrinsic)."""
    return specialize(_tiled_products, dtype, True, QUANTIZE=quantize, TILE=tile)


def _quantize_with_zero(x, xq, xd, xs):
    """_quantize_rows with the weight type's zero, ZERO, bound by specialize."""
    _quantize_rows(x, xq, xd, xs, ZERO)  # noqa: F821


Q8_TILED = {t: tiled_products(t, specialize(_quantize_with_zero, t, False, ZERO=fmt.zero),
                              tile_intrinsic(t, _tile_loops)) for t, fmt in Q8_FORMATS.items()}


def q8_product(dtype: DType, w: np.ndarray, x: np.ndarray, out: np.ndarray, n_tasks: int) -> Callable[[], None]:
    """The step out (N, M) = Q8_0(x) (N, K) @ dequantize(w).T for w (M, bytes per row) blocks of dtype repacked
    by `repack`, in n_tasks parallel tasks (x and out float32 with contiguous rows)."""
    check_float32_rows("q8_product", x, out)
    return functools.partial(Q8_TILED[dtype], w, x, *_activation_buffers(x), out, n_tasks)
