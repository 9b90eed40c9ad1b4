"""Numba kernels that read GGUF blocks directly: four weight rows dequantized once at a time for some rows (past
the register tiles of numba_tiles.py, which take one to a few rows, up to BLOCK_KERNEL_MAX_ROWS), and exact
dequantizers for prefill panels and get_rows.

Bit fields are cut in float32 (`_shr`: floor(byte / 2^k)), because numba widens integer arithmetic to int64,
which AVX2 cannot convert to float in vectors; every step is exact for bytes. Each block type's loops are
compiled on their own (`specialize`). Field offsets come from the block-layout table (graph/block_layouts.py), bound
below as module constants, which numba compiles in. Kernels compile once per machine into numba's cache
(`cache=True`).
"""
from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, prange, types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic

from pyggml.graph.block_layouts import BLOCKS
from pyggml.graph.dtypes import DType

# every float16 bit pattern -> float32: a scale is one table load (256 KiB, stays in L2)
F16_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
BIT_SCALE = (0.5 ** np.arange(16)).astype(np.float32)  # 2^-j: bit j of lane j's 16-bit word, in _bit
# no nnan/ninf: an inf or nan scale must give inf/nan, as dequantization does
FAST = {"reassoc", "contract", "nsz", "arcp"}
INLINE = dict(inline="always", cache=True, fastmath=FAST)
f32 = np.float32


def _at(dtype: DType, *names: str) -> tuple[int, ...]:
    return tuple(BLOCKS[dtype].at(name) for name in names)


# field offsets of each block type, read by the kernels below
Q4_0_QS, = _at(DType.Q4_0, "qs")
Q4_1_M, Q4_1_QS = _at(DType.Q4_1, "m", "qs")
Q5_0_QH, Q5_0_QS = _at(DType.Q5_0, "qh", "qs")
Q5_1_M, Q5_1_QH, Q5_1_QS = _at(DType.Q5_1, "m", "qh", "qs")
Q8_0_QS, = _at(DType.Q8_0, "qs")
Q2_K_SCALES, Q2_K_QS, Q2_K_D, Q2_K_DMIN = _at(DType.Q2_K, "scales", "qs", "d", "dmin")
Q3_K_HMASK, Q3_K_QS, Q3_K_SCALES, Q3_K_D = _at(DType.Q3_K, "hmask", "qs", "scales", "d")
K4_D, K4_DMIN, K4_SCALES = _at(DType.Q4_K, "d", "dmin", "scales")  # Q5_K's first three fields are Q4_K's
assert _at(DType.Q5_K, "d", "dmin", "scales") == (K4_D, K4_DMIN, K4_SCALES)
Q4_K_QS, = _at(DType.Q4_K, "qs")
Q5_K_QH, Q5_K_QS = _at(DType.Q5_K, "qh", "qs")
Q6_K_QL, Q6_K_QH, Q6_K_SCALES, Q6_K_D = _at(DType.Q6_K, "ql", "qh", "scales", "d")


def prefetch_line(builder: ir.IRBuilder, p: ir.Value, locality: int = 3) -> None:
    """IR: start fetching the cache line at byte pointer p without waiting for it (llvm.prefetch: read, data;
    locality 3 into all cache levels, lower ones less close)."""
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [p.type] + [i32] * 3)
    fn = builder.module.declare_intrinsic("llvm.prefetch", [p.type], fnty)
    builder.call(fn, [p, ir.Constant(i32, 0), ir.Constant(i32, locality), ir.Constant(i32, 1)])


@intrinsic
def prefetch(typingctx, arr, idx):
    """Fetch the cache line holding arr[idx] towards L1 without waiting for it."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [args[1]])
        prefetch_line(builder, builder.bitcast(ptr, ir.IntType(8).as_pointer()))
        return context.get_dummy_value()
    return nbtypes.void(arr, idx), codegen


@njit(**INLINE)
def _f16(u, o, table):
    """The float16 at byte o of a row of blocks."""
    return table[np.int64(u[o]) | (np.int64(u[o + 1]) << 8)]


@njit(**INLINE)
def _i8(u, o):
    """The int8 at byte o, as a float32."""
    v = np.int64(u[o])
    return f32(v - 256 if v > 127 else v)


@njit(**INLINE)
def _u16(u, o):
    """The little-endian uint16 at byte o, as a float32 (exact)."""
    return f32(np.int64(u[o]) | (np.int64(u[o + 1]) << 8))


@njit(**INLINE)
def _shr(f, k):
    """floor(f / 2^k): a byte held as a float32, shifted right by k bits."""
    return np.floor(f * f32(1.0 / (1 << k)))


@njit(**INLINE)
def _bit(f, j):
    """Bit j of a 16-bit integer held as a float32 (j indexes BIT_SCALE, so it may vary per lane)."""
    g = np.floor(f * BIT_SCALE[j])
    return g - f32(2) * np.floor(g * f32(0.5))


# ---- bit fields of bytes held as float32

@njit(**INLINE)
def _nibbles(f):
    """(low, high) nibble of a byte held as a float32."""
    hi = _shr(f, 4)
    return f - f32(16) * hi, hi


@njit(**INLINE)
def _crumbs(f):
    """The four 2-bit fields of a byte held as a float32, lowest first."""
    g1, g2, g3 = _shr(f, 2), _shr(f, 4), _shr(f, 6)
    return f - f32(4) * g1, g1 - f32(4) * g2, g2 - f32(4) * g3, g3


@njit(**INLINE)
def _low_bits(h):
    """Bits 0-3 of an integer held as a float32."""
    h1, h2, h3, h4 = np.floor(h * f32(0.5)), np.floor(h * f32(0.25)), np.floor(h * f32(0.125)), _shr(h, 4)
    return h - f32(2) * h1, h1 - f32(2) * h2, h2 - f32(2) * h3, h3 - f32(2) * h4


@njit(**INLINE)
def _fives(f, hl, hh, j):
    """Q5 values (low nibble + 16·bit j of hl, high nibble + 16·bit j of hh) of a byte f and 16-bit words hl, hh
    held as float32."""
    lo, hi = _nibbles(f)
    return lo + f32(16) * _bit(hl, j), hi + f32(16) * _bit(hh, j)


# K-quants: 256 values a block; each value helper cuts one layout's values or scales.

@njit(**INLINE)
def _q2_k_group(u, o, g, scale, shift):
    """scale·nibble of the Q2_K scale bytes of groups g, g + 2, g + 4, g + 6: shift 0 is the group's scale,
    4 its min."""
    s = o + Q2_K_SCALES + g
    return (scale * f32((u[s] >> shift) & 15), scale * f32((u[s + 2] >> shift) & 15),
            scale * f32((u[s + 4] >> shift) & 15), scale * f32((u[s + 6] >> shift) & 15))


@njit(**INLINE)
def _q3_k_scale(u, o, k):
    """Scale k (0-15) of a Q3_K block: 6 bits, low 4 in bytes 0-7 of the scales, high 2 in bytes 8-11, minus 32."""
    low = (np.int64(u[o + Q3_K_SCALES + k % 8]) >> (4 * (k // 8))) & 15
    high = (np.int64(u[o + Q3_K_SCALES + 8 + k % 4]) >> (2 * (k // 4))) & 3
    return f32((low | (high << 4)) - 32)


@njit(**INLINE)
def _q3_k_group(u, o, g, d):
    """Q3_K coefficients of the four groups g, g + 2, g + 4, g + 6."""
    return d * _q3_k_scale(u, o, g), d * _q3_k_scale(u, o, g + 2), d * _q3_k_scale(u, o, g + 4), \
        d * _q3_k_scale(u, o, g + 6)


@njit(**INLINE)
def _q3_k_values(f, hm, half):
    """Q3_K's four values of a quant byte f (2-bit fields) with bits 4·half.. of the hmask byte hm as bit 2."""
    v, h = _crumbs(f), _low_bits(_shr(hm, 4 * half))
    return v[0] + f32(4) * h[0], v[1] + f32(4) * h[1], v[2] + f32(4) * h[2], v[3] + f32(4) * h[3]


@njit(**INLINE)
def _k4_scale_min(u, o, j):
    """(scale, min) j (0-7) of a Q4_K/Q5_K block: 6-bit values packed in the 12 scale bytes."""
    q = o + K4_SCALES
    if j < 4:
        return f32(u[q + j] & 63), f32(u[q + j + 4] & 63)
    return (f32((u[q + j + 4] & 15) | ((u[q + j - 4] >> 6) << 4)),
            f32((u[q + j + 4] >> 4) | ((u[q + j] >> 6) << 4)))


@njit(**INLINE)
def _k_values(u, qo, ho, p, l):
    """Q4_K (ho < 0) and Q5_K values l of groups 2p, 2p + 1: low and high nibble of byte qo + l, plus bits 2p,
    2p + 1 of byte ho + l as bit 4."""
    lo, hi = _nibbles(f32(u[qo + l]))
    if ho >= 0:
        h = _low_bits(_shr(f32(u[ho + l]), 2 * p))
        lo, hi = lo + f32(16) * h[0], hi + f32(16) * h[1]
    return lo, hi


@njit(**INLINE)
def _q6_k_values(fa, fb, h):
    """Q6_K's four values (before minus 32): nibbles of ql bytes fa, fb plus the 2-bit fields of qh byte h."""
    a, b, c = _nibbles(fa), _nibbles(fb), _crumbs(h)
    return a[0] + f32(16) * c[0], b[0] + f32(16) * c[1], a[1] + f32(16) * c[2], b[1] + f32(16) * c[3]


# (half, part) quarters of Q2_K/Q3_K/Q6_K blocks: value l of group g + 2t sits at 128·half + 32t + 16·part + l,
# g = 8·half + part

# ---- one row dequantized (prefill panels, the few-rows path): the block at byte o into out[oo:oo + block].
# n16 is 16, passed at run time: with constant trip counts LLVM unrolled these short loops into scalar code
# (2.4 G values/s for Q8_0); with a run-time one it vectorizes them (9 G/s).

@njit(**INLINE)
def _deq_q4(u, qo, out, oo, d, offset, n16):
    """Q4_0/Q4_1: d·nibble + offset."""
    for l in range(n16):
        lo, hi = _nibbles(f32(u[qo + l]))
        out[oo + l], out[oo + 16 + l] = d * lo + offset, d * hi + offset


@njit(**INLINE)
def _deq_q5(u, hq, qo, out, oo, d, offset, n16):
    """Q5_0/Q5_1: d·value + offset."""
    hl, hh = _u16(u, hq), _u16(u, hq + 2)
    for l in range(n16):
        lo, hi = _fives(f32(u[qo + l]), hl, hh, l)
        out[oo + l], out[oo + 16 + l] = d * lo + offset, d * hi + offset


@njit(**INLINE)
def _deq_q4_0(u, o, out, oo, table, n16):
    d = _f16(u, o, table)
    _deq_q4(u, o + Q4_0_QS, out, oo, d, f32(-8) * d, n16)


@njit(**INLINE)
def _deq_q4_1(u, o, out, oo, table, n16):
    _deq_q4(u, o + Q4_1_QS, out, oo, _f16(u, o, table), _f16(u, o + Q4_1_M, table), n16)


@njit(**INLINE)
def _deq_q5_0(u, o, out, oo, table, n16):
    d = _f16(u, o, table)
    _deq_q5(u, o + Q5_0_QH, o + Q5_0_QS, out, oo, d, f32(-16) * d, n16)


@njit(**INLINE)
def _deq_q5_1(u, o, out, oo, table, n16):
    _deq_q5(u, o + Q5_1_QH, o + Q5_1_QS, out, oo, _f16(u, o, table), _f16(u, o + Q5_1_M, table), n16)


@njit(**INLINE)
def _deq_q8_0(u, o, out, oo, table, n16):
    d, q = _f16(u, o, table), u.view(np.int8)
    for l in range(2 * n16):
        out[oo + l] = d * f32(q[o + Q8_0_QS + l])


@njit(**INLINE)
def _deq_f16(u, o, out, oo, table, n16):
    for l in range(2 * n16):
        out[oo + l] = _f16(u, o + 2 * l, table)


@njit(**INLINE)
def _put4(out, i, v, c, z):
    """out[i + 32t] = c[t]·v[t] - z[t] for four values 32 apart."""
    for t in range(4):
        out[i + 32 * t] = c[t] * v[t] - z[t]


@njit(**INLINE)
def _deq_q2_k(u, o, out, oo, table, n16):
    d, dmin = _f16(u, o + Q2_K_D, table), _f16(u, o + Q2_K_DMIN, table)
    for half in range(2):
        for part in range(2):
            g, e, qo = 8 * half + part, oo + 128 * half + 16 * part, o + Q2_K_QS + 32 * half + 16 * part
            c, m = _q2_k_group(u, o, g, d, 0), _q2_k_group(u, o, g, dmin, 4)
            for l in range(n16):
                _put4(out, e + l, _crumbs(f32(u[qo + l])), c, m)


@njit(**INLINE)
def _deq_q3_k(u, o, out, oo, table, n16):
    d = _f16(u, o + Q3_K_D, table)
    for half in range(2):
        for part in range(2):
            g, e, qo = 8 * half + part, oo + 128 * half + 16 * part, o + Q3_K_QS + 32 * half + 16 * part
            c = _q3_k_group(u, o, g, d)
            z = f32(4) * c[0], f32(4) * c[1], f32(4) * c[2], f32(4) * c[3]
            for l in range(n16):
                _put4(out, e + l, _q3_k_values(f32(u[qo + l]), f32(u[o + Q3_K_HMASK + 16 * part + l]), half), c, z)


@njit(**INLINE)
def _deq_k_nibbles(u, o, out, oo, table, n16, qs, hs):
    d, dmin = _f16(u, o + K4_D, table), _f16(u, o + K4_DMIN, table)
    for p in range(4):
        sl, ml = _k4_scale_min(u, o, 2 * p)
        sh, mh = _k4_scale_min(u, o, 2 * p + 1)
        cl, ch, zl, zh, e = d * sl, d * sh, dmin * ml, dmin * mh, oo + 64 * p
        for l in range(2 * n16):
            lo, hi = _k_values(u, o + qs + 32 * p, o + hs if hs >= 0 else -1, p, l)
            out[e + l], out[e + 32 + l] = cl * lo - zl, ch * hi - zh


@njit(**INLINE)
def _deq_q4_k(u, o, out, oo, table, n16):
    _deq_k_nibbles(u, o, out, oo, table, n16, Q4_K_QS, -1)


@njit(**INLINE)
def _deq_q5_k(u, o, out, oo, table, n16):
    _deq_k_nibbles(u, o, out, oo, table, n16, Q5_K_QS, Q5_K_QH)


@njit(**INLINE)
def _deq_q6_k(u, o, out, oo, table, n16):
    d = _f16(u, o + Q6_K_D, table)
    for half in range(2):
        for part in range(2):
            a, hq = o + Q6_K_QL + 64 * half + 16 * part, o + Q6_K_QH + 32 * half + 16 * part
            e, s = oo + 128 * half + 16 * part, o + Q6_K_SCALES + 8 * half + part
            c = d * _i8(u, s), d * _i8(u, s + 2), d * _i8(u, s + 4), d * _i8(u, s + 6)
            z = f32(32) * c[0], f32(32) * c[1], f32(32) * c[2], f32(32) * c[3]
            for l in range(n16):
                _put4(out, e + l, _q6_k_values(f32(u[a + l]), f32(u[a + 32 + l]), f32(u[hq + l])), c, z)


# A group g of four weight rows is rows g, g + G, g + 2G and g + 3G (G groups in all): four memory streams a
# quarter of the weight apart. Four adjacent rows are one stream, which the prefetcher fed at half the rate on
# short rows (Gemma 3's 262,144 x 640 output head: 32 against 15 ms on one thread).

# The kernels run one parallel task per thread (n_tasks: numba.get_num_threads() when the step is made; called
# inside a kernel it keeps numba from caching it, and called per run it cost 1 ms a step), each taking an equal
# share of the work and allocating its scratch once. With 64 groups a task, 144 groups (a 576-row weight) split
# 2:1 between two threads and 48 (192 rows) ran on one thread: equal shares made SmolLM2's 211 products at 8
# rows 29 -> 23 ms, and at 1 row 10.3 -> 8.2 ms.

@njit(**INLINE)
def share(task, n_tasks, n):
    """The items [start, stop) of n that parallel task `task` of n_tasks takes."""
    return task * n // n_tasks, (task + 1) * n // n_tasks


@njit(**INLINE)
def _group_rows(w, g, n_groups):
    """The four weight rows of group g (the last row repeated where a quarter runs out)."""
    last = w.shape[0] - 1
    return (w[g], w[min(g + n_groups, last)], w[min(g + 2 * n_groups, last)],
            w[min(g + 3 * n_groups, last)])


@njit(**INLINE)
def _prefetch_group(w, g, n_groups):
    """Start fetching group g's four weight rows while the current group's products run."""
    for row in _group_rows(w, g, n_groups):
        for o in range(0, row.shape[0], 64):
            prefetch(row, o)


@njit(**INLINE)
def _store4(out, g, n_groups, a0, a1, a2, a3):
    """out at group g's four rows = a0..a3, for the rows that exist."""
    n = out.shape[0]
    out[g] = a0
    if g + n_groups < n:
        out[g + n_groups] = a1
    if g + 2 * n_groups < n:
        out[g + 2 * n_groups] = a2
    if g + 3 * n_groups < n:
        out[g + 3 * n_groups] = a3


@njit(**INLINE)
def _tile4x4(rows, x, n, out, group, n_groups):
    """Activation rows n..n+3 against the four dequantized weight rows: 8 loads for 16 products."""
    r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
    xa, xb, xc, xd = x[n], x[n + 1], x[n + 2], x[n + 3]
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = f32(0)
    c0 = c1 = c2 = c3 = e0 = e1 = e2 = e3 = f32(0)
    for i in range(x.shape[1]):
        va, vb, vc, vd = xa[i], xb[i], xc[i], xd[i]
        w0, w1, w2, w3 = r0[i], r1[i], r2[i], r3[i]
        a0 += w0 * va
        a1 += w1 * va
        a2 += w2 * va
        a3 += w3 * va
        b0 += w0 * vb
        b1 += w1 * vb
        b2 += w2 * vb
        b3 += w3 * vb
        c0 += w0 * vc
        c1 += w1 * vc
        c2 += w2 * vc
        c3 += w3 * vc
        e0 += w0 * vd
        e1 += w1 * vd
        e2 += w2 * vd
        e3 += w3 * vd
    _store4(out[n], group, n_groups, a0, a1, a2, a3)
    _store4(out[n + 1], group, n_groups, b0, b1, b2, b3)
    _store4(out[n + 2], group, n_groups, c0, c1, c2, c3)
    _store4(out[n + 3], group, n_groups, e0, e1, e2, e3)


@njit(**INLINE)
def _tile4x2(rows, x, n, out, group, n_groups):
    """Activation rows n, n+1 against the four dequantized weight rows: 6 loads for 8 products."""
    r0, r1, r2, r3, xa, xb = rows[0], rows[1], rows[2], rows[3], x[n], x[n + 1]
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = f32(0)
    for i in range(x.shape[1]):
        va, vb = xa[i], xb[i]
        w0, w1, w2, w3 = r0[i], r1[i], r2[i], r3[i]
        a0 += w0 * va
        a1 += w1 * va
        a2 += w2 * va
        a3 += w3 * va
        b0 += w0 * vb
        b1 += w1 * vb
        b2 += w2 * vb
        b3 += w3 * vb
    _store4(out[n], group, n_groups, a0, a1, a2, a3)
    _store4(out[n + 1], group, n_groups, b0, b1, b2, b3)


@njit(**INLINE)
def _tile4x1(rows, x, n, out, group, n_groups):
    """Activation row n against the four dequantized weight rows."""
    r0, r1, r2, r3, xa = rows[0], rows[1], rows[2], rows[3], x[n]
    a0 = a1 = a2 = a3 = f32(0)
    for i in range(x.shape[1]):
        va = xa[i]
        a0 += r0[i] * va
        a1 += r1[i] * va
        a2 += r2[i] * va
        a3 += r3[i] * va
    _store4(out[n], group, n_groups, a0, a1, a2, a3)


def _matmat(w, x, out, table, n16, n_tasks):
    """out[n, m] = w[m] · x[n] for more activation rows than the register tiles take: four weight rows dequantized
    once into a scratch, then four activation rows at a time against them, the last (up to three) two and one at
    a time (a four-row tile filled with repeated rows cost two rows 1.6x the time). DEQ, BLOCK and TYPE_SIZE
    bound per type."""
    k, n_groups, quads = x.shape[1], (w.shape[0] + 3) // 4, x.shape[0] - x.shape[0] % 4
    n_tasks = min(n_tasks, n_groups)
    for task in prange(n_tasks):
        rows = np.empty((4, k), np.float32)
        start, stop = share(task, n_tasks, n_groups)
        for group in range(start, stop):
            u = _group_rows(w, group, n_groups)
            for r in range(4):
                for b in range(k // BLOCK):  # noqa: F821
                    DEQ(u[r], b * TYPE_SIZE, rows[r], b * BLOCK, table, n16)  # noqa: F821
            if group + 1 < stop:  # the next group's rows arrive while these products run (4-16 rows: 7-14 %)
                _prefetch_group(w, group + 1, n_groups)
            for n in range(0, quads, 4):
                _tile4x4(rows, x, n, out, group, n_groups)
            if x.shape[0] - quads >= 2:
                _tile4x2(rows, x, quads, out, group, n_groups)
            if (x.shape[0] - quads) % 2:
                _tile4x1(rows, x, x.shape[0] - 1, out, group, n_groups)


def _dequantize(w, out, table, n16):
    """out (M, K) float32 from w (M, bytes per row) blocks; DEQ, BLOCK and TYPE_SIZE bound per type."""
    for m in range(w.shape[0]):
        u, row = w[m], out[m]
        for b in range(out.shape[1] // BLOCK):  # noqa: F821
            DEQ(u, b * TYPE_SIZE, row, b * BLOCK, table, n16)  # noqa: F821


def specialize(template, dtype: DType, parallel: bool, **constants):
    """A kernel template for one block type: the type's block function and sizes as compile-time constants,
    under a name of its own so that numba caches each type apart."""
    # One kernel dispatching on the type inside its loops ran 6x slower (LLVM no longer vectorized the block
    # loop), and numba's literal dispatch took minutes to compile: a copy per type, as C++ templates would.
    name = f"{template.__name__.strip('_')}_{dtype.name.lower()}"
    names = {"co_name": name, "co_qualname": name} if hasattr(template.__code__, "co_qualname") else {"co_name": name}
    code = template.__code__.replace(**names)  # co_qualname is Python 3.11's
    fn = types.FunctionType(code, {**template.__globals__, **constants}, name)
    fn.__qualname__ = name
    return njit(parallel=parallel, cache=True, fastmath=FAST)(fn)


N16 = 16  # the dequantizers' loop length, an argument so that it is no compile-time constant (see the dequantizers)
F16_UNIT = 32  # F16 rows are read in units of 32 values (64 bytes) by the kernels of both numba modules


class BlockKernels(NamedTuple):
    """A block type's unit (elements, bytes) and its one-row dequantizer."""
    block: int
    type_size: int
    deq: object


def kernel_unit(dtype: DType) -> tuple[int, int]:
    """(elements, bytes) a kernel reads at a time: a block, or F16_UNIT values of F16."""
    if dtype == DType.F16:
        return F16_UNIT, 2 * F16_UNIT
    return BLOCKS[dtype].elements, BLOCKS[dtype].nbytes


BLOCK_TYPES: dict[DType, BlockKernels] = {t: BlockKernels(*kernel_unit(t), deq) for t, deq in (
    (DType.Q4_0, _deq_q4_0), (DType.Q4_1, _deq_q4_1), (DType.Q5_0, _deq_q5_0), (DType.Q5_1, _deq_q5_1),
    (DType.Q8_0, _deq_q8_0), (DType.Q2_K, _deq_q2_k), (DType.Q3_K, _deq_q3_k), (DType.Q4_K, _deq_q4_k),
    (DType.Q5_K, _deq_q5_k), (DType.Q6_K, _deq_q6_k), (DType.F16, _deq_f16))}
MATMAT = {t: specialize(_matmat, t, True, DEQ=k.deq, BLOCK=k.block, TYPE_SIZE=k.type_size)
          for t, k in BLOCK_TYPES.items()}
# serial: the panels it fills go straight to BLAS, whose threads would wait on numba's spinning ones
DEQUANTIZE = {t: specialize(_dequantize, t, False, DEQ=k.deq, BLOCK=k.block, TYPE_SIZE=k.type_size)
              for t, k in BLOCK_TYPES.items()}


def block_product(dtype: DType, w: np.ndarray, x: np.ndarray, out: np.ndarray,
                  n_tasks: int) -> Callable[[], None]:
    """The step out (N, M) = x (N, K) @ dequantize(w).T for w held as (M, bytes per row) blocks of dtype, in n_tasks
    parallel tasks, through four weight rows dequantized once at a time."""
    return functools.partial(MATMAT[dtype], w, x, out, F16_TABLE, N16, n_tasks)


def dequantize_into(dtype: DType, w: np.ndarray, out: np.ndarray) -> None:
    """out (M, K) float32 = the values of w's (M, bytes per row) blocks of dtype."""
    DEQUANTIZE[dtype](w, out, F16_TABLE, N16)
