"""The numba backend's kernels of ops other than mul_mat: attention, where each (query row, K/V head) task reads
only the key and value rows its token sees, once for its group of query heads (paged_attn: its sequence's rows;
flash_attn_ext: the rows its mask does not hide; the masked product form multiplies every query row with every
row: 8 sequences, 8x the work), rms_norm_mul in one pass per row (NumPy's five ufunc calls cost 8-15 us on a few
rows, 61 times a SmolLM2 step), swiglu in one pass, and get_rows of quantized blocks (gguf's dequantizer took
110 us for a decode step's one embedding row). Their exponentials are `_exp`, which LLVM vectorizes: numba calls
libm's expf a value at a time (no SVML here), 7,200 times a layer in an 8-sequence decode step."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from llvmlite import ir
from numba import float32 as f32, njit, prange, types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic, overload

from pyggml.graph.dtypes import ROW_QUANT_TYPES, DType, block_layout
from pyggml.graph.tensor import Tensor

from ..fusion import rms_norm_mul_kernel as numpy_rms_norm_mul
from ..numpy.attention import flash_attn_ext as numpy_flash_attn_ext, paged_attn as numpy_paged_attn
from ..numpy.kernels import GLU_GATES, get_rows as numpy_get_rows, glu_kernel, set_rows as numpy_set_rows
from ..quants import checked_rows, gather_block_rows
from .q8 import TILE_LAYOUTS, tiled_rows
from .quants import BLOCK_TYPES, F16_TABLE, FAST, INLINE, dequantize_into, prefetch

LOG2E, LN2_HI, LN2_LO = f32(1.44269504088896341), f32(0.693359375), f32(-2.12194440e-4)
EXP_LOW, EXP_HIGH = f32(-87.33), f32(88.0)  # below: 0; above: e^88 (2^n must stay finite: e^88.72 is the largest)


@intrinsic
def _pow2(typingctx, n):
    """2^n for a float32 n holding an integer in [-126, 127], from its exponent bits."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())
    return nbtypes.float32(nbtypes.float32), codegen


@njit(**INLINE)
def _exp(x):
    """e^x for float32 x (Cephes' expf: x = n ln 2 + r, |r| <= ln 2 / 2, a polynomial in r; relative error under
    3e-7 against float64), in operations LLVM vectorizes."""
    c = min(max(x, EXP_LOW), EXP_HIGH)
    n = np.floor(c * LOG2E + f32(0.5))
    r = c - n * LN2_HI - n * LN2_LO
    p = f32(1.9875691500e-4)
    p = p * r + f32(1.3981999507e-3)
    p = p * r + f32(8.3334519073e-3)
    p = p * r + f32(4.1665795894e-2)
    p = p * r + f32(1.6666665459e-1)
    p = p * r + f32(5.0000001201e-1)
    e = (p * r * r + r + f32(1)) * _pow2(n)
    return f32(0) if x < EXP_LOW else e


@njit(**INLINE)
def _visible_rows(rows, mask, t, seen, bias):
    """seen[:n] = the key rows token t sees (rows[t, j] >= 0 where mask[t, j] > -inf), bias[:n] = their mask
    values; returns n."""
    n = 0
    for j in range(rows.shape[1]):
        if rows[t, j] >= 0 and mask[t, j] != -np.inf:
            seen[n], bias[n] = rows[t, j], mask[t, j]
            n += 1
    return n


@njit(**INLINE)
def _softmax_in_place(s, n):
    """s[:n] = softmax(s[:n])."""
    top = f32(-np.inf)
    for j in range(n):
        top = max(top, s[j])
    total = f32(0)
    for j in range(n):
        s[j] = _exp(s[j] - top)
        total += s[j]
    inv = f32(1) / total if n > 0 else f32(0)
    for j in range(n):
        s[j] *= inv


ROW_BLOCK, Q8_0_BYTES = block_layout(DType.Q8_0)
Q4_0_BYTES = block_layout(DType.Q4_0)[1]
DEQ_Q8_0, DEQ_Q4_0 = (BLOCK_TYPES[t].deq for t in (DType.Q8_0, DType.Q4_0))  # the quantized caches' blocks
ATTEND_AHEAD = 8  # rows ahead whose key and value lines are fetched: 8 sequences of SmolLM2 at 125 rows, paged_attn
# 6.7-7.5 -> 5.1-6.2 ms a step (16 ahead: the same); the rows of a block table are scattered over the pool


@njit(**INLINE)
def _prefetch_row(row):
    """Fetch every cache line of a row."""
    for i in range(0, row.shape[0], 64 // row.itemsize):
        prefetch(row, i)


def _converting_copy(source: ir.Type, target: ir.Type) -> Callable:
    """The codegen of an intrinsic (src, dst): dst[:] = src's values, read as `source` and written as `target`
    (float16 held as uint16 bits), 16 at a time (a length that 16 divides)."""
    def codegen(context, builder, signature, args):
        (src_data, n), (dst_data, _) = (_row_pointer(context, builder, t, a) for t, a in zip(signature.args, args))
        vec_in, vec_out = ir.VectorType(source, 16), ir.VectorType(target, 16)
        convert = builder.fpext if target.intrinsic_name == "f32" else builder.fptrunc
        with cgutils.for_range(builder, builder.sdiv(n, ir.Constant(n.type, 16))) as loop:
            at = builder.mul(loop.index, ir.Constant(n.type, 16))
            values = builder.load(builder.bitcast(builder.gep(src_data, [at]), vec_in.as_pointer()), align=2)
            builder.store(convert(values, vec_out), builder.bitcast(builder.gep(dst_data, [at]),
                                                                    vec_out.as_pointer()), align=2)
        return context.get_dummy_value()
    return codegen


@intrinsic
def _halves_into(typingctx, src, dst):
    """dst[:] = the float16 values of src (uint16 bits) as float32."""
    return nbtypes.void(src, dst), _converting_copy(ir.HalfType(), ir.FloatType())


@intrinsic
def _floats_into_halves(typingctx, src, dst):
    """dst[:] = src's float32 values rounded to nearest float16 (as uint16 bits)."""
    return nbtypes.void(src, dst), _converting_copy(ir.FloatType(), ir.HalfType())


def _row_pointer(context, builder, ary_type, value):
    """(pointer to the data of a contiguous 1-D array, its length)."""
    ary = context.make_array(ary_type)(context, builder, value)
    return ary.data, cgutils.unpack_tuple(builder, ary.shape, 1)[0]


def _f32_row(row, scratch, table):
    """row as float32: itself, or (a float16 row held as uint16 bits, a Q8_0 or Q4_0 row as uint8 blocks) its values
    converted into scratch."""


@overload(_f32_row, inline="always")
def _f32_row_overload(row, scratch, table):
    if row.dtype == nbtypes.float32:
        return lambda row, scratch, table: row
    if row.dtype == nbtypes.uint16:
        def convert(row, scratch, table):
            _halves_into(row, scratch)
            return scratch
        return convert
    if row.dtype == nbtypes.uint8:
        def dequantize(row, scratch, table):
            n_blocks = scratch.shape[0] // ROW_BLOCK
            q8 = row.shape[0] == n_blocks * Q8_0_BYTES  # the two cache types differ in bytes per block
            for b in range(n_blocks):
                if q8:
                    DEQ_Q8_0(row, b * Q8_0_BYTES, scratch, b * ROW_BLOCK, table, ROW_BLOCK // 2)
                else:
                    DEQ_Q4_0(row, b * Q4_0_BYTES, scratch, b * ROW_BLOCK, table, ROW_BLOCK // 2)
            return scratch
        return dequantize
    return None


@njit(**INLINE)
def _attend(qs, k, v, hk, seen, bias, n, softcap, table, out):
    """out[g] = softmax(softcap(qs[g] · k[seen[j], hk]) + bias[j]) · v[seen[j], hk] over j < n, for the G query
    heads qs (already scaled) of K/V head hk: each key and value row (float32, float16 as uint16 bits, Q8_0/Q4_0
    blocks as uint8) is read once for the group."""
    (group, dk), dv = qs.shape, out.shape[1]
    scores = np.empty((group, n), np.float32)
    # room for converted rows (none for float32: this runs once per token and K/V head of a step)
    k_row = np.empty(dk if k.itemsize < 4 else 0, np.float32)
    v_row = np.empty(dv if v.itemsize < 4 else 0, np.float32)
    for j in range(n):
        if j + ATTEND_AHEAD < n:
            _prefetch_row(k[seen[j + ATTEND_AHEAD], hk])
            _prefetch_row(v[seen[j + ATTEND_AHEAD], hk])
        kr = _f32_row(k[seen[j], hk], k_row, table)
        for g in range(group):
            s = f32(0)
            for d in range(dk):
                s += qs[g, d] * kr[d]
            scores[g, j] = (softcap * np.tanh(s / softcap) if softcap > 0 else s) + bias[j]
    for g in range(group):
        _softmax_in_place(scores[g], n)
    acc = np.zeros((group, dv), np.float32)
    for j in range(n):
        vr = _f32_row(v[seen[j], hk], v_row, table)
        for g in range(group):
            p = scores[g, j]
            for d in range(vr.shape[0]):
                acc[g, d] += p * vr[d]
    out[:] = acc


@njit(parallel=True, cache=True, fastmath=FAST, error_model="numpy")
def _attention(q, k, v, rows, mask, scale, softcap, table, out):
    """out[t, h] = softmax(softcap(q[t, h] · k[rows[t], h // G] * scale) + mask[t]) v[rows[t], h // G] for q
    (T, H, D), key and value rows k (R, Hkv, D) and v (R, Hkv, Dv), rows and mask (T, L) (a negative row or a
    -inf mask hides an entry; zeros where none is left), a task per (token, K/V head): paged_attn's own rows,
    flash_attn_ext's every row under its mask."""
    n_tok, n_head, n_kv_head = q.shape[0], q.shape[1], k.shape[1]
    group = n_head // n_kv_head
    for task in prange(n_tok * n_kv_head):
        t, hk = task // n_kv_head, task % n_kv_head
        seen, bias = np.empty(rows.shape[1], np.int64), np.empty(rows.shape[1], np.float32)
        n = _visible_rows(rows, mask, t, seen, bias)
        heads = slice(hk * group, (hk + 1) * group)
        _attend(q[t, heads] * scale, k, v, hk, seen, bias, n, softcap, table, out[t, heads])


def paged_attn(node: Tensor, out: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
               rows: np.ndarray) -> Callable[[], None]:
    """paged_attn through the numba kernel for an F32, F16, Q8_0 or Q4_0 cache (its rows a length that 16
    divides); anything else through the NumPy kernel."""
    if not (_kernel_reads(node, k, v) and all(a.dtype == np.float32 for a in (q, out))):
        return numpy_paged_attn(node, out, q, k, v, rows)
    scale, softcap = np.float32(node.params["scale"]), np.float32(node.params["logit_softcap"])
    no_mask = np.broadcast_to(np.float32(0), rows.shape)
    k, v = _as_bits(k), _as_bits(v)
    return lambda: _attention(q, k, v, rows, no_mask, scale, softcap, F16_TABLE, out)


def _kernel_reads(node: Tensor, k: np.ndarray, v: np.ndarray) -> bool:
    """Whether the attention kernel reads these keys and values (sources 1 and 2 of node): each float32, or
    float16 or Q8_0/Q4_0 with contiguous rows (float16 rows a multiple of 16 long)."""
    return all(_reads_row(t.dtype, a) for t, a in zip(node.srcs[1:3], (k, v)))


def _reads_row(dtype: DType, a: np.ndarray) -> bool:
    """Whether the attention kernel reads rows of this array: float32, or float16 or Q8_0/Q4_0 blocks it converts
    (contiguous)."""
    if a.dtype == np.float32:
        return True
    if a.dtype == np.float16:
        return a.strides[-1] == 2 and a.shape[-1] % 16 == 0
    return a.dtype == np.uint8 and dtype in ROW_QUANT_TYPES and a.strides[-1] == 1


def _as_bits(a: np.ndarray) -> np.ndarray:
    """A float16 array as its uint16 bits (numba has no float16 arithmetic); float32 as it is."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


def flash_attn_ext(node: Tensor, out: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                   mask: np.ndarray | None = None) -> Callable[[], None]:
    """flash_attn_ext through the numba kernel for 3-D operands, F32 (keys and values F16 too) and a mask without
    ALiBi; anything else through the NumPy kernel."""
    p = node.params
    arrays = (q, out) if mask is None else (q, out, mask)
    if q.ndim != 3 or p["max_bias"] or not (_kernel_reads(node, k, v) and all(a.dtype == np.float32 for a in arrays)):
        return numpy_flash_attn_ext(node, out, q, k, v, mask)
    k, v = _as_bits(k), _as_bits(v)
    shape = (q.shape[1], k.shape[1])  # (T, KV): every key row, under the mask
    rows = np.broadcast_to(np.arange(shape[1], dtype=np.int64), shape)
    mask_rows = np.broadcast_to(np.float32(0), shape) if mask is None else mask[:shape[0]]
    rows_q, rows_k, rows_v = (np.swapaxes(a, 0, 1) for a in (q, k, v))  # (T, H, D), (KV, Hkv, D), (KV, Hkv, Dv)
    scale, softcap = np.float32(p["scale"]), np.float32(p["logit_softcap"])
    return lambda: _attention(rows_q, rows_k, rows_v, rows, mask_rows, scale, softcap, F16_TABLE, out)


@njit(cache=True, fastmath=FAST)
def _rms_norm_mul(x, w, eps, out):
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w; out may be x."""
    n = x.shape[1]
    for t in range(x.shape[0]):
        s = f32(0)
        for i in range(n):
            s += x[t, i] * x[t, i]
        scale = f32(1) / np.sqrt(s / f32(n) + eps)
        for i in range(n):
            out[t, i] = x[t, i] * scale * w[i]


def rms_norm_mul(node: Tensor, out: np.ndarray, x: np.ndarray, w: np.ndarray) -> Callable[[], None]:
    """rms_norm_mul through the numba kernel for contiguous F32 rows; anything else through the NumPy kernel."""
    if not (x.dtype == out.dtype == w.dtype == np.float32 and x.flags.c_contiguous and out.flags.c_contiguous):
        return numpy_rms_norm_mul(node, out, x, w)
    rows, rows_out, eps = x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1]), np.float32(node.params["eps"])
    return lambda: _rms_norm_mul(rows, w, eps, rows_out)


@njit(cache=True, fastmath=FAST, error_model="numpy")  # numpy's: a division checked for zero is not vectorized
def _swiglu(gate, up, out):
    """out = silu(gate) * up = gate * up / (1 + e^-gate), row by row."""
    for t in range(out.shape[0]):
        for i in range(out.shape[1]):
            g = gate[t, i]
            out[t, i] = g * up[t, i] / (f32(1) + _exp(-g))


def swiglu_into(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> None:
    """out = silu(gate) * up through the numba kernel for rows (2-D), else through NumPy's."""
    if out.ndim == 2:
        _swiglu(gate, up, out)
    else:
        GLU_GATES["swiglu"](gate, up, out)


glu = glu_kernel({**GLU_GATES, "swiglu": swiglu_into})


def get_rows(node: Tensor, out: np.ndarray, a: np.ndarray, idx: np.ndarray) -> Callable[[], None]:
    """get_rows of a table held as blocks (uint8 rows) through the numba dequantizer; anything else through
    NumPy's."""
    a_type = node.srcs[0].dtype
    if not (a_type in BLOCK_TYPES and a.dtype == np.uint8 and a.ndim == 2 and out.ndim == 2
            and out.dtype == np.float32 and out.flags.c_contiguous):
        return numpy_get_rows(node, out, a, idx)
    return lambda: dequantize_into(a_type, gather_block_rows(a, idx), out)


def tiled_get_rows(node: Tensor, out: np.ndarray, a: np.ndarray, idx: np.ndarray) -> Callable[[], None]:
    """get_rows of a table of a TILE_LAYOUTS type held repacked (numba_q8.py, a weight): its rows taken back to
    ggml's layout and dequantized; any other table (a quantized KV cache too) as get_rows."""
    a_type = node.srcs[0].dtype
    if a_type not in TILE_LAYOUTS or a.dtype != np.uint8 or not node.srcs[0].is_leaf:
        return get_rows(node, out, a, idx)
    rows = out.reshape(-1, node.shape[-1])
    if not (rows.dtype == np.float32 and np.shares_memory(rows, out)):
        raise ValueError(f"get_rows of a repacked table needs a float32 output with contiguous rows, got "
                         f"{out.dtype} {out.shape} strides {out.strides}")
    n_rows = node.srcs[0].shape[-2]  # a (B, R, C) table is held as B * R rows: batch b's rows start at b * R
    starts = (np.arange(idx.shape[0]) * n_rows)[:, None] if idx.ndim == 2 else 0
    return lambda: dequantize_into(a_type, tiled_rows(a_type, a, (checked_rows(idx, n_rows).reshape(idx.shape)
                                                                   + starts).reshape(-1)), rows)


@intrinsic
def _half_bits(typingctx, x):
    """The float16 bits (uint16) of a float32 rounded to nearest even, as F16C's conversion (GGML_FP32_TO_FP16)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return nbtypes.uint16(nbtypes.float32), codegen


@njit(inline="always")
def _roundf(x):
    """C's roundf (halves away from zero), exactly: floor(|x| + 0.5) in float32 rounds 0.49999997 up."""
    a = abs(x)
    floored = np.floor(a)
    return np.sign(x) * (floored + np.floor(f32(2) * (a - floored)))


@njit(inline="always")
def _put_half(out, o, x):
    bits = _half_bits(x)
    out[o], out[o + 1] = np.uint8(bits & 255), np.uint8(bits >> 8)


@njit(inline="always")
def _quantize_q8_0(row, out):
    """out = row as Q8_0 blocks, as ggml's quantize_row_q8_0_ref: d = amax / 127, q = roundf(x / d)."""
    for b in range(row.shape[0] // ROW_BLOCK):
        x, o = row[b * ROW_BLOCK:(b + 1) * ROW_BLOCK], b * Q8_0_BYTES
        d = np.max(np.abs(x)) / f32(127)
        inv = f32(1) / d if d != 0 else f32(0)
        _put_half(out, o, d)
        for j in range(ROW_BLOCK):
            out[o + 2 + j] = np.uint8(np.int64(_roundf(x[j] * inv)) & 255)


@njit(inline="always")
def _quantize_q4_0(row, out):
    """out = row as Q4_0 blocks, as ggml's quantize_row_q4_0_ref: d = (the value of largest magnitude) / -8,
    q = min(15, trunc(x / d + 8.5)), element j in the low nibble of byte j and element j + 16 in its high one."""
    half = ROW_BLOCK // 2
    for b in range(row.shape[0] // ROW_BLOCK):
        x, o = row[b * ROW_BLOCK:(b + 1) * ROW_BLOCK], b * Q4_0_BYTES
        top = x[0]
        for j in range(1, ROW_BLOCK):
            if abs(x[j]) > abs(top):
                top = x[j]
        d = top / f32(-8)
        inv = f32(1) / d if d != 0 else f32(0)
        _put_half(out, o, d)
        for j in range(half):
            lo = min(15, np.int64(x[j] * inv + f32(8.5)))
            hi = min(15, np.int64(x[j + half] * inv + f32(8.5)))
            out[o + 2 + j] = np.uint8(lo | (hi << 4))


def _store_row(table, r, row):
    """table[r] = row: float32 as it is, into float16 bits (a uint16 table) rounded to nearest, or into Q8_0 or
    Q4_0 blocks (a uint8 table; the bytes per row tell which)."""


@overload(_store_row, inline="always")
def _store_row_overload(table, r, row):
    if table.dtype == nbtypes.float32:
        def store(table, r, row):
            table[r, :] = row
        return store
    if table.dtype == nbtypes.uint16:
        return lambda table, r, row: _floats_into_halves(row, table[r])
    if table.dtype == nbtypes.uint8:
        def quantize(table, r, row):
            if table.shape[1] * ROW_BLOCK == row.shape[0] * Q8_0_BYTES:
                _quantize_q8_0(row, table[r])
            else:
                _quantize_q4_0(row, table[r])
        return quantize
    return None


@njit(cache=True)
def _set_rows(table, rows, idx):
    """table[idx[i]] = rows[i] for every i, an index below 0 counted from the end as NumPy does."""
    for i in range(len(idx)):
        r = idx[i] + table.shape[0] if idx[i] < 0 else idx[i]
        if not 0 <= r < table.shape[0]:
            raise IndexError("set_rows: row index out of range")
        _store_row(table, r, rows[i])


def set_rows(node: Tensor, out: np.ndarray, dst: np.ndarray, src: np.ndarray, idx: np.ndarray) -> Callable[[], None]:
    """set_rows of several float32 rows into a float32 or float16 table (a batch's K/V rows into the cache) in one
    numba call: NumPy's scatter took 7-10 us for SmolLM2's 8 rows, its float16 conversion more; of any number of
    rows into a Q8_0 or Q4_0 table; anything else through NumPy's kernel."""
    table = out.reshape(len(out), -1) if out.ndim >= 2 and out.flags.c_contiguous else None
    rows = src.reshape(len(idx), -1) if idx.ndim == 1 and src.flags.c_contiguous else None
    if table is None or rows is None or src.dtype != np.float32:
        return numpy_set_rows(node, out, dst, src, idx)
    blocks = out.dtype == np.uint8 and node.dtype in ROW_QUANT_TYPES
    floats = len(idx) >= 2 and rows.shape[1] == table.shape[1] and (
        out.dtype == np.float32 or (out.dtype == np.float16 and table.shape[1] % 16 == 0))
    if not (blocks or floats):
        return numpy_set_rows(node, out, dst, src, idx)
    table = _as_bits(table)
    return lambda: _set_rows(table, rows, idx)
