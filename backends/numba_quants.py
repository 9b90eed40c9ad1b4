"""Numba kernels that read GGUF blocks directly: a quantized mat-vec for a few activation rows.

Four weight rows are done at a time, so each activation value is loaded once for four rows, and each block
type has one function computing one block of four rows (`_dot4_*`), compiled into its own copy of the mat-vec
loop (`_specialize`). Most are built from `_bits4`, which sums
a bit field of packed bytes (and optionally high bits from another byte run) against the activations. Block
layouts are ggml's (see quants.py). Kernels compile once per machine into numba's cache (`cache=True`).
"""
from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

from pyggml.graph.dtypes import DType

# every float16 bit pattern -> float32: a scale is one table load (256 KiB, stays in L2)
F16_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
# no nnan/ninf: an inf or nan scale must give inf/nan, as dequantization does
FAST = {"reassoc", "contract", "nsz", "arcp"}
INLINE = dict(inline="always", cache=True, fastmath=FAST)
f32 = np.float32


@njit(**INLINE)
def _f16(u, o, table):
    """The float16 at byte o of a row of blocks."""
    return table[np.int64(u[o]) | (np.int64(u[o + 1]) << 8)]


@njit(**INLINE)
def _u32(u, o):
    """The little-endian uint32 at byte o of a row of blocks."""
    return (np.int64(u[o]) | (np.int64(u[o + 1]) << 8) | (np.int64(u[o + 2]) << 16)
            | (np.int64(u[o + 3]) << 24))


@njit(**INLINE)
def _bits4(u0, u1, u2, u3, qo, shift, mask, ho, hshift, hmask, hpos, x, xo, n):
    """For l < n, v(l) = ((u[qo+l] >> shift) & mask) | (((u[ho+l] >> hshift) & hmask) << hpos) of four rows:
    (sum v·x per row ×4, sum x)."""
    s0 = s1 = s2 = s3 = xs = f32(0)
    for l in range(n):
        xv = x[xo + l]
        s0 += f32(((u0[qo + l] >> shift) & mask) | (((u0[ho + l] >> hshift) & hmask) << hpos)) * xv
        s1 += f32(((u1[qo + l] >> shift) & mask) | (((u1[ho + l] >> hshift) & hmask) << hpos)) * xv
        s2 += f32(((u2[qo + l] >> shift) & mask) | (((u2[ho + l] >> hshift) & hmask) << hpos)) * xv
        s3 += f32(((u3[qo + l] >> shift) & mask) | (((u3[ho + l] >> hshift) & hmask) << hpos)) * xv
        xs += xv
    return s0, s1, s2, s3, xs


@njit(**INLINE)
def _nibbles4(u0, u1, u2, u3, qo, x, xo):
    """A 16-byte run of nibbles (low nibbles: values 0-15, high: 16-31) of four rows: (sums ×4, sum x)."""
    s0 = s1 = s2 = s3 = xs = f32(0)
    for l in range(16):
        xl, xh = x[xo + l], x[xo + 16 + l]
        b0, b1, b2, b3 = u0[qo + l], u1[qo + l], u2[qo + l], u3[qo + l]
        s0 += f32(b0 & 15) * xl + f32(b0 >> 4) * xh
        s1 += f32(b1 & 15) * xl + f32(b1 >> 4) * xh
        s2 += f32(b2 & 15) * xl + f32(b2 >> 4) * xh
        s3 += f32(b3 & 15) * xl + f32(b3 >> 4) * xh
        xs += xl + xh
    return s0, s1, s2, s3, xs


@njit(**INLINE)
def _fives4(u0, u1, u2, u3, hq, qo, x, xo):
    """Q5_0/Q5_1 values (nibble | bit j of the uint32 at hq, as bit 4) of four rows: (sums ×4, sum x)."""
    h0, h1, h2, h3 = _u32(u0, hq), _u32(u1, hq), _u32(u2, hq), _u32(u3, hq)
    s0 = s1 = s2 = s3 = xs = f32(0)
    for l in range(16):
        xl, xh = x[xo + l], x[xo + 16 + l]
        b0, b1, b2, b3 = u0[qo + l], u1[qo + l], u2[qo + l], u3[qo + l]
        s0 += f32((b0 & 15) | (((h0 >> l) & 1) << 4)) * xl + f32((b0 >> 4) | (((h0 >> (l + 16)) & 1) << 4)) * xh
        s1 += f32((b1 & 15) | (((h1 >> l) & 1) << 4)) * xl + f32((b1 >> 4) | (((h1 >> (l + 16)) & 1) << 4)) * xh
        s2 += f32((b2 & 15) | (((h2 >> l) & 1) << 4)) * xl + f32((b2 >> 4) | (((h2 >> (l + 16)) & 1) << 4)) * xh
        s3 += f32((b3 & 15) | (((h3 >> l) & 1) << 4)) * xl + f32((b3 >> 4) | (((h3 >> (l + 16)) & 1) << 4)) * xh
        xs += xl + xh
    return s0, s1, s2, s3, xs


@njit(**INLINE)
def _offset(u0, u1, u2, u3, o, s, zero, table):
    """d·(sums - zero·sum x) of four rows whose d is at byte o."""
    return (_f16(u0, o, table) * (s[0] - zero * s[4]), _f16(u1, o, table) * (s[1] - zero * s[4]),
            _f16(u2, o, table) * (s[2] - zero * s[4]), _f16(u3, o, table) * (s[3] - zero * s[4]))


@njit(**INLINE)
def _affine(u0, u1, u2, u3, o, s, table):
    """d·sums + m·sum x of four rows whose d and m are at bytes o and o + 2."""
    return (_f16(u0, o, table) * s[0] + _f16(u0, o + 2, table) * s[4],
            _f16(u1, o, table) * s[1] + _f16(u1, o + 2, table) * s[4],
            _f16(u2, o, table) * s[2] + _f16(u2, o + 2, table) * s[4],
            _f16(u3, o, table) * s[3] + _f16(u3, o + 2, table) * s[4])


@njit(**INLINE)
def _dot4_q4_0(u0, u1, u2, u3, o, x, xo, table):
    return _offset(u0, u1, u2, u3, o, _nibbles4(u0, u1, u2, u3, o + 2, x, xo), f32(8), table)


@njit(**INLINE)
def _dot4_q4_1(u0, u1, u2, u3, o, x, xo, table):
    return _affine(u0, u1, u2, u3, o, _nibbles4(u0, u1, u2, u3, o + 4, x, xo), table)


@njit(**INLINE)
def _dot4_q5_0(u0, u1, u2, u3, o, x, xo, table):
    return _offset(u0, u1, u2, u3, o, _fives4(u0, u1, u2, u3, o + 2, o + 6, x, xo), f32(16), table)


@njit(**INLINE)
def _dot4_q5_1(u0, u1, u2, u3, o, x, xo, table):
    return _affine(u0, u1, u2, u3, o, _fives4(u0, u1, u2, u3, o + 4, o + 8, x, xo), table)


@njit(**INLINE)
def _dot4_q8_0(u0, u1, u2, u3, o, x, xo, table):
    q0, q1, q2, q3 = u0.view(np.int8), u1.view(np.int8), u2.view(np.int8), u3.view(np.int8)
    s0 = s1 = s2 = s3 = f32(0)
    for l in range(32):
        xv = x[xo + l]
        s0 += f32(q0[o + 2 + l]) * xv
        s1 += f32(q1[o + 2 + l]) * xv
        s2 += f32(q2[o + 2 + l]) * xv
        s3 += f32(q3[o + 2 + l]) * xv
    return (_f16(u0, o, table) * s0, _f16(u1, o, table) * s1, _f16(u2, o, table) * s2, _f16(u3, o, table) * s3)


@njit(**INLINE)
def _dot4_f16(u0, u1, u2, u3, o, x, xo, table):
    s0 = s1 = s2 = s3 = f32(0)
    for l in range(32):
        xv = x[xo + l]
        s0 += _f16(u0, o + 2 * l, table) * xv
        s1 += _f16(u1, o + 2 * l, table) * xv
        s2 += _f16(u2, o + 2 * l, table) * xv
        s3 += _f16(u3, o + 2 * l, table) * xv
    return s0, s1, s2, s3


@njit(**INLINE)
def _scaled4(a, s, d0, d1, d2, d3, c0, c1, c2, c3, zero):
    """a + d·c·(sums - zero·sum x) per row (a 4-tuple of accumulators)."""
    return (a[0] + d0 * c0 * (s[0] - zero * s[4]), a[1] + d1 * c1 * (s[1] - zero * s[4]),
            a[2] + d2 * c2 * (s[2] - zero * s[4]), a[3] + d3 * c3 * (s[3] - zero * s[4]))


@njit(**INLINE)
def _dot4_q2_k(u0, u1, u2, u3, o, x, xo, table):
    # 16 groups of 16: value = (q >> 2j) & 3; byte `is` holds the group's scale (low nibble) and min (high)
    d0, d1, d2, d3 = _f16(u0, o + 80, table), _f16(u1, o + 80, table), _f16(u2, o + 80, table), _f16(u3, o + 80, table)
    m0, m1, m2, m3 = _f16(u0, o + 82, table), _f16(u1, o + 82, table), _f16(u2, o + 82, table), _f16(u3, o + 82, table)
    a = (f32(0), f32(0), f32(0), f32(0))
    for g in range(16):
        half, j, part = g // 8, (g % 8) // 2, g % 2
        qo = o + 16 + 32 * half + 16 * part
        s = _bits4(u0, u1, u2, u3, qo, 2 * j, 3, qo, 0, 0, 0, x, xo + 128 * half + 32 * j + 16 * part, 16)
        c0, c1, c2, c3 = u0[o + g], u1[o + g], u2[o + g], u3[o + g]
        a = _scaled4(a, s, d0, d1, d2, d3, f32(c0 & 15), f32(c1 & 15), f32(c2 & 15), f32(c3 & 15), f32(0))
        a = _scaled4(a, (f32(0), f32(0), f32(0), f32(0), s[4]), m0, m1, m2, m3,
                     f32(c0 >> 4), f32(c1 >> 4), f32(c2 >> 4), f32(c3 >> 4), f32(1))
    return a


@njit(**INLINE)
def _q3_k_scale(u, o, k):
    """Scale k (0-15) of a Q3_K block: 6 bits, low 4 in bytes 0-7 of the scales, high 2 in bytes 8-11, minus 32."""
    low = (np.int64(u[o + 96 + k % 8]) >> (4 * (k // 8))) & 15
    high = (np.int64(u[o + 104 + k % 4]) >> (2 * (k // 4))) & 3
    return f32((low | (high << 4)) - 32)


@njit(**INLINE)
def _dot4_q3_k(u0, u1, u2, u3, o, x, xo, table):
    # value = ((q >> 2j) & 3) | (bit (4·half + j) of hmask) << 2, minus 4
    d0, d1, d2, d3 = _f16(u0, o + 108, table), _f16(u1, o + 108, table), _f16(u2, o + 108, table), _f16(u3, o + 108, table)
    a = (f32(0), f32(0), f32(0), f32(0))
    for g in range(16):
        half, j, part = g // 8, (g % 8) // 2, g % 2
        s = _bits4(u0, u1, u2, u3, o + 32 + 32 * half + 16 * part, 2 * j, 3, o + 16 * part, 4 * half + j, 1, 2,
                   x, xo + 128 * half + 32 * j + 16 * part, 16)
        a = _scaled4(a, s, d0, d1, d2, d3, _q3_k_scale(u0, o, g), _q3_k_scale(u1, o, g), _q3_k_scale(u2, o, g),
                     _q3_k_scale(u3, o, g), f32(4))
    return a


@njit(**INLINE)
def _k4_scale_min(u, o, j):
    """(scale, min) j (0-7) of a Q4_K/Q5_K block: 6-bit values packed in the 12 bytes at o + 4."""
    q = o + 4
    if j < 4:
        return f32(u[q + j] & 63), f32(u[q + j + 4] & 63)
    return (f32((u[q + j + 4] & 15) | ((u[q + j - 4] >> 6) << 4)),
            f32((u[q + j + 4] >> 4) | ((u[q + j] >> 6) << 4)))


@njit(**INLINE)
def _dot4_k_nibbles(u0, u1, u2, u3, o, x, xo, table, qs, hs):
    """Q4_K (hs < 0) and Q5_K (high bits at o + hs): 8 groups of 32, d·scale·sum - dmin·min·sum x."""
    # the mins enter as _scaled4 of zero sums with zero = 1: a + dmin·min·(0 - sum x)
    d0, d1, d2, d3 = _f16(u0, o, table), _f16(u1, o, table), _f16(u2, o, table), _f16(u3, o, table)
    m0, m1, m2, m3 = _f16(u0, o + 2, table), _f16(u1, o + 2, table), _f16(u2, o + 2, table), _f16(u3, o + 2, table)
    a = (f32(0), f32(0), f32(0), f32(0))
    for g in range(8):
        qo = o + qs + 32 * (g // 2)
        ho, hmask = (o + hs, 1) if hs >= 0 else (qo, 0)
        s = _bits4(u0, u1, u2, u3, qo, 4 * (g % 2), 15, ho, g, hmask, 4, x, xo + 32 * g, 32)
        c0, n0 = _k4_scale_min(u0, o, g)
        c1, n1 = _k4_scale_min(u1, o, g)
        c2, n2 = _k4_scale_min(u2, o, g)
        c3, n3 = _k4_scale_min(u3, o, g)
        a = _scaled4(a, s, d0, d1, d2, d3, c0, c1, c2, c3, f32(0))
        a = _scaled4(a, (f32(0), f32(0), f32(0), f32(0), s[4]), m0, m1, m2, m3, n0, n1, n2, n3, f32(1))
    return a


@njit(**INLINE)
def _dot4_q4_k(u0, u1, u2, u3, o, x, xo, table):
    return _dot4_k_nibbles(u0, u1, u2, u3, o, x, xo, table, 16, -1)


@njit(**INLINE)
def _dot4_q5_k(u0, u1, u2, u3, o, x, xo, table):
    return _dot4_k_nibbles(u0, u1, u2, u3, o, x, xo, table, 48, 16)


@njit(**INLINE)
def _dot4_q6_k(u0, u1, u2, u3, o, x, xo, table):
    # 16 groups of 16: low nibble of ql (t = 0, 1) or high (t = 2, 3), 2 bits of qh at 2t; int8 scales; minus 32
    d0, d1, d2, d3 = _f16(u0, o + 208, table), _f16(u1, o + 208, table), _f16(u2, o + 208, table), _f16(u3, o + 208, table)
    q0, q1, q2, q3 = u0.view(np.int8), u1.view(np.int8), u2.view(np.int8), u3.view(np.int8)
    a = (f32(0), f32(0), f32(0), f32(0))
    for g in range(16):
        half, t, part = g // 8, (g % 8) // 2, g % 2
        qo = o + 64 * half + 32 * (t % 2) + 16 * part
        s = _bits4(u0, u1, u2, u3, qo, 4 * (t // 2), 15, o + 128 + 32 * half + 16 * part, 2 * t, 3, 4,
                   x, xo + 128 * half + 32 * t + 16 * part, 16)
        c = o + 192 + 8 * half + part + 2 * t
        a = _scaled4(a, s, d0, d1, d2, d3, f32(q0[c]), f32(q1[c]), f32(q2[c]), f32(q3[c]), f32(32))
    return a


# ---- single rows dequantized, for the prefill path: one block of one row into out[oo:oo + block]

@njit(**INLINE)
def _bits1(u, qo, shift, mask, ho, hshift, hmask, hpos, out, oo, n, scale, offset):
    """out[oo + l] = scale·v(l) + offset for l < n, v(l) as in _bits4."""
    for l in range(n):
        out[oo + l] = scale * f32(((u[qo + l] >> shift) & mask) | (((u[ho + l] >> hshift) & hmask) << hpos)) + offset


@njit(**INLINE)
def _deq_nibbles(u, o, qo, out, oo, table, zero, has_min):
    """Q4_0 (values minus zero) and Q4_1 (plus m at o + 2): 16 bytes of nibbles, low then high."""
    d = _f16(u, o, table)
    offset = _f16(u, o + 2, table) if has_min else -zero * d
    _bits1(u, qo, 0, 15, qo, 0, 0, 0, out, oo, 16, d, offset)
    _bits1(u, qo, 4, 15, qo, 0, 0, 0, out, oo + 16, 16, d, offset)


@njit(**INLINE)
def _deq_fives(u, o, hq, qo, out, oo, table, zero, has_min):
    """Q5_0 and Q5_1: nibbles with bit 4 from the uint32 at hq."""
    d, h = _f16(u, o, table), _u32(u, hq)
    offset = _f16(u, o + 2, table) if has_min else -zero * d
    for l in range(16):
        b = u[qo + l]
        out[oo + l] = d * f32((b & 15) | (((h >> l) & 1) << 4)) + offset
        out[oo + 16 + l] = d * f32((b >> 4) | (((h >> (l + 16)) & 1) << 4)) + offset


@njit(**INLINE)
def _deq_q4_0(u, o, out, oo, table):
    _deq_nibbles(u, o, o + 2, out, oo, table, f32(8), False)


@njit(**INLINE)
def _deq_q4_1(u, o, out, oo, table):
    _deq_nibbles(u, o, o + 4, out, oo, table, f32(0), True)


@njit(**INLINE)
def _deq_q5_0(u, o, out, oo, table):
    _deq_fives(u, o, o + 2, o + 6, out, oo, table, f32(16), False)


@njit(**INLINE)
def _deq_q5_1(u, o, out, oo, table):
    _deq_fives(u, o, o + 4, o + 8, out, oo, table, f32(0), True)


@njit(**INLINE)
def _deq_q8_0(u, o, out, oo, table):
    d, q = _f16(u, o, table), u.view(np.int8)
    for l in range(32):
        out[oo + l] = d * f32(q[o + 2 + l])


@njit(**INLINE)
def _deq_f16(u, o, out, oo, table):
    for l in range(32):
        out[oo + l] = _f16(u, o + 2 * l, table)


@njit(**INLINE)
def _deq_q2_k(u, o, out, oo, table):
    d, dmin = _f16(u, o + 80, table), _f16(u, o + 82, table)
    for g in range(16):
        half, j, part = g // 8, (g % 8) // 2, g % 2
        qo, c = o + 16 + 32 * half + 16 * part, u[o + g]
        _bits1(u, qo, 2 * j, 3, qo, 0, 0, 0, out, oo + 128 * half + 32 * j + 16 * part, 16,
               d * f32(c & 15), -dmin * f32(c >> 4))


@njit(**INLINE)
def _deq_q3_k(u, o, out, oo, table):
    d = _f16(u, o + 108, table)
    for g in range(16):
        half, j, part = g // 8, (g % 8) // 2, g % 2
        scale = d * _q3_k_scale(u, o, g)
        _bits1(u, o + 32 + 32 * half + 16 * part, 2 * j, 3, o + 16 * part, 4 * half + j, 1, 2,
               out, oo + 128 * half + 32 * j + 16 * part, 16, scale, -4 * scale)


@njit(**INLINE)
def _deq_k_nibbles(u, o, out, oo, table, qs, hs):
    d, dmin = _f16(u, o, table), _f16(u, o + 2, table)
    for g in range(8):
        qo = o + qs + 32 * (g // 2)
        ho, hmask = (o + hs, 1) if hs >= 0 else (qo, 0)
        c, m = _k4_scale_min(u, o, g)
        _bits1(u, qo, 4 * (g % 2), 15, ho, g, hmask, 4, out, oo + 32 * g, 32, d * c, -dmin * m)


@njit(**INLINE)
def _deq_q4_k(u, o, out, oo, table):
    _deq_k_nibbles(u, o, out, oo, table, 16, -1)


@njit(**INLINE)
def _deq_q5_k(u, o, out, oo, table):
    _deq_k_nibbles(u, o, out, oo, table, 48, 16)


@njit(**INLINE)
def _deq_q6_k(u, o, out, oo, table):
    d, q = _f16(u, o + 208, table), u.view(np.int8)
    for g in range(16):
        half, t, part = g // 8, (g % 8) // 2, g % 2
        scale = d * f32(q[o + 192 + 8 * half + part + 2 * t])
        _bits1(u, o + 64 * half + 32 * (t % 2) + 16 * part, 4 * (t // 2), 15, o + 128 + 32 * half + 16 * part,
               2 * t, 3, 4, out, oo + 128 * half + 32 * t + 16 * part, 16, scale, -32 * scale)


def _matvec(w, x, out, table):
    """out[n, m] = w[m] · x[n] for a weight w of (M, bytes per row) blocks and x of (N, K) float32; DOT4, BLOCK
    and TYPE_SIZE are the block type's, bound per type by _specialize."""
    n_rows, n_blocks = w.shape[0], x.shape[1] // BLOCK  # noqa: F821
    for group in prange((n_rows + 3) // 4):
        m = 4 * group
        u0, u1, u2, u3 = w[m], w[min(m + 1, n_rows - 1)], w[min(m + 2, n_rows - 1)], w[min(m + 3, n_rows - 1)]
        for n in range(x.shape[0]):
            xr = x[n]
            a0 = a1 = a2 = a3 = f32(0)
            for b in range(n_blocks):
                s = DOT4(u0, u1, u2, u3, b * TYPE_SIZE, xr, b * BLOCK, table)  # noqa: F821
                a0 += s[0]
                a1 += s[1]
                a2 += s[2]
                a3 += s[3]
            out[n, m] = a0
            if m + 3 < n_rows:
                out[n, m + 1], out[n, m + 2], out[n, m + 3] = a1, a2, a3
            elif m + 1 < n_rows:
                out[n, m + 1] = a1
                if m + 2 < n_rows:
                    out[n, m + 2] = a2


def _matmat(w, x, out, table):
    """out[n, m] = w[m] · x[n] for a few activation rows: four weight rows dequantized once into a scratch, then
    each activation row against them (the block mat-vec would unpack the blocks again for every row)."""
    n_rows, k = w.shape[0], x.shape[1]
    for group in prange((n_rows + 3) // 4):
        m = 4 * group
        rows = np.zeros((4, k), np.float32)
        for r in range(min(4, n_rows - m)):
            for b in range(k // BLOCK):  # noqa: F821
                DEQ(w[m + r], b * TYPE_SIZE, rows[r], b * BLOCK, table)  # noqa: F821
        r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
        for n in range(x.shape[0]):
            xr = x[n]
            a0 = a1 = a2 = a3 = f32(0)
            for i in range(k):
                xv = xr[i]
                a0 += r0[i] * xv
                a1 += r1[i] * xv
                a2 += r2[i] * xv
                a3 += r3[i] * xv
            out[n, m] = a0
            for r, a in enumerate((a1, a2, a3)):
                if m + 1 + r < n_rows:
                    out[n, m + 1 + r] = a


def _dequantize(w, out, table):
    """out (M, K) float32 from w (M, bytes per row) blocks; DEQ, BLOCK and TYPE_SIZE bound per type."""
    for m in range(w.shape[0]):
        u, row = w[m], out[m]
        for b in range(out.shape[1] // BLOCK):  # noqa: F821
            DEQ(u, b * TYPE_SIZE, row, b * BLOCK, table)  # noqa: F821


def _specialize(template, dtype: DType, parallel: bool, **constants):
    """A kernel template for one block type: the type's block function and sizes as compile-time constants,
    under a name of its own so that numba caches each type apart."""
    # One kernel dispatching on the type inside its loops ran 6x slower (LLVM no longer vectorized the block
    # loop), and numba's literal dispatch took minutes to compile: a copy per type, as C++ templates would.
    name = f"{template.__name__.strip('_')}_{dtype.name.lower()}"
    code = template.__code__.replace(co_name=name, co_qualname=name)
    fn = types.FunctionType(code, {**globals(), **constants}, name)
    fn.__qualname__ = name
    return njit(parallel=parallel, cache=True, fastmath=FAST)(fn)


MATMAT_MIN_ROWS = 4  # activation rows from which dequantizing four weight rows once beats unpacking per row
# (batched SmolLM2 decode: 2 rows 45 against 67 tok/s, 4 rows 81 against 73, 8 rows 121 against 74)

# DType -> (elements, bytes) of the unit the block functions read (F16 rows: 32 at a time), the four-row dot
# function and the one-row dequantizer
BLOCK_TYPES: dict[DType, tuple[int, int, object, object]] = {
    DType.Q4_0: (32, 18, _dot4_q4_0, _deq_q4_0), DType.Q4_1: (32, 20, _dot4_q4_1, _deq_q4_1),
    DType.Q5_0: (32, 22, _dot4_q5_0, _deq_q5_0), DType.Q5_1: (32, 24, _dot4_q5_1, _deq_q5_1),
    DType.Q8_0: (32, 34, _dot4_q8_0, _deq_q8_0), DType.Q2_K: (256, 84, _dot4_q2_k, _deq_q2_k),
    DType.Q3_K: (256, 110, _dot4_q3_k, _deq_q3_k), DType.Q4_K: (256, 144, _dot4_q4_k, _deq_q4_k),
    DType.Q5_K: (256, 176, _dot4_q5_k, _deq_q5_k), DType.Q6_K: (256, 210, _dot4_q6_k, _deq_q6_k),
    DType.F16: (32, 64, _dot4_f16, _deq_f16),
}
MATVEC = {t: _specialize(_matvec, t, True, DOT4=dot4, BLOCK=block, TYPE_SIZE=size)
          for t, (block, size, dot4, _) in BLOCK_TYPES.items()}
MATMAT = {t: _specialize(_matmat, t, True, DEQ=deq, BLOCK=block, TYPE_SIZE=size)
          for t, (block, size, _, deq) in BLOCK_TYPES.items()}
# serial: the panels it fills go straight to BLAS, whose threads would wait on numba's spinning ones
DEQUANTIZE = {t: _specialize(_dequantize, t, False, DEQ=deq, BLOCK=block, TYPE_SIZE=size)
              for t, (block, size, _, deq) in BLOCK_TYPES.items()}


def quantized_matvec(dtype: DType, w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out (N, M) = x (N, K) @ dequantize(w).T for w held as (M, bytes per row) blocks of dtype: one activation
    row through the fused block kernel, a few through rows dequantized once."""
    (MATVEC if len(x) < MATMAT_MIN_ROWS else MATMAT)[dtype](w, x, out, F16_TABLE)


def dequantize_into(dtype: DType, w: np.ndarray, out: np.ndarray) -> None:
    """out (M, K) float32 = the values of w's (M, bytes per row) blocks of dtype."""
    DEQUANTIZE[dtype](w, out, F16_TABLE)
