"""Every op of the vocabulary against an independent NumPy formula, on random and non-contiguous inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest

import pyggml as pg
from pyggml import DType, ShapeError
from pyggml.backends.numpy.kernels import KERNELS
from pyggml.ops import OPS, is_view

LAYOUTS = ("contiguous", "permuted", "strided")


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded generator per test."""
    return np.random.default_rng(20240611)


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Standard-normal float32 values."""
    return rng.standard_normal(shape).astype(np.float32)


def tensor(x: np.ndarray, layout: str = "contiguous") -> pg.Tensor:
    """A tensor whose value is x, stored contiguously, as a permuted view, or as a strided (row-padded) view."""
    if layout == "contiguous" or x.ndim < 2 and layout == "permuted":
        return pg.from_numpy(x.copy())
    if layout == "permuted":  # stored with the axes reversed, seen through permute (NumPy transpose semantics)
        axes = tuple(reversed(range(x.ndim)))
        return pg.permute(pg.from_numpy(np.transpose(x, axes).copy()), *axes)
    if layout == "strided":  # rows padded by 3 elements, the view starts 1 element in
        big = np.full(x.shape[:-1] + (x.shape[-1] + 3,), 1e6, x.dtype)
        big[..., 1:1 + x.shape[-1]] = x
        return pg.view(pg.from_numpy(big), x.shape, big.strides, offset=x.itemsize)
    raise ValueError(layout)


def close(got: np.ndarray, want: np.ndarray, tol: float = 1e-5) -> None:
    """Assert same shape and values within a relative/absolute tolerance."""
    assert got.shape == np.shape(want), (got.shape, np.shape(want))
    np.testing.assert_allclose(got.astype(np.float64), np.asarray(want, np.float64), rtol=tol, atol=tol)


def repeat_like(b: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """ggml_repeat: tile b (aligned right) until it has `shape`."""
    b = b.reshape((1,) * (len(shape) - b.ndim) + b.shape)
    return np.tile(b, [s // d for s, d in zip(shape, b.shape)])


# ---------------------------------------------------------------------------------------------- coverage

def test_every_op_has_a_numpy_kernel_or_is_a_view():
    assert [op for op in OPS if op not in KERNELS and not is_view(op)] == []


def test_every_op_is_exported_at_the_top_level():
    assert [op for op in OPS if not callable(getattr(pg, op, None))] == []


def test_shape_error_names_the_op_and_both_shapes():
    a, b = pg.input_tensor((2, 3)), pg.input_tensor((4,))
    with pytest.raises(ShapeError) as err:
        pg.add(a, b)
    assert "add" in str(err.value) and "[2, 3]" in str(err.value) and "[4]" in str(err.value)
    with pytest.raises(ShapeError) as err:
        pg.mul_mat(pg.input_tensor((5, 7)), pg.input_tensor((3, 6)))
    assert "mul_mat" in str(err.value) and "[5, 7]" in str(err.value) and "[3, 6]" in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("make", [
    lambda: pg.mul(pg.input_tensor((6, 4)), pg.input_tensor((4, 4))),  # 6 % 4 != 0: not a tiling
    lambda: pg.mul_mat(pg.input_tensor((3, 4, 8)), pg.input_tensor((4, 2, 8))),  # 4 heads over 3
    lambda: pg.concat(pg.input_tensor((2, 3)), pg.input_tensor((2, 4)), axis=0),
    lambda: pg.reshape(pg.input_tensor((2, 3)), (4, 2)),
    lambda: pg.reshape(pg.transpose(pg.input_tensor((2, 3))), (6,)),  # not contiguous
    lambda: pg.swiglu(pg.input_tensor((2, 5))),  # odd fused width
    lambda: pg.get_rows(pg.input_tensor((4, 3)), pg.input_tensor((2,), DType.F32)),  # float indices
    lambda: pg.set_rows(pg.input_tensor((4, 3)), pg.input_tensor((2, 2)), pg.input_tensor((2,), DType.I32)),
    lambda: pg.rope(pg.input_tensor((3, 2, 8)), pg.input_tensor((2,), DType.I32), 8),
    lambda: pg.soft_max_ext(pg.input_tensor((2, 3, 5)), pg.input_tensor((2, 4))),  # mask columns
    lambda: pg.view(pg.input_tensor((2, 3)), (4, 2)),  # runs past the storage
    lambda: pg.permute(pg.input_tensor((2, 3)), 0, 0),
    lambda: pg.cpy(pg.input_tensor((2, 3)), pg.input_tensor((5,))),
])
def test_bad_operands_raise_shape_error(make):
    with pytest.raises(ShapeError):
        make()


# ---------------------------------------------------------------------------------------------- binary

BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}
BROADCASTS = [
    ((4, 6), (4, 6)),            # same shape
    ((4, 6), (6,)),              # a row over every row
    ((4, 6), (1, 6)),
    ((4, 6), (4, 1)),            # a column
    ((4, 6), (1,)),
    ((2, 3, 4, 6), (3, 1, 6)),   # size-1 dims inside
    ((6, 8), (2, 8)),            # true tiling: rows 0,1 repeated three times
    ((6, 4), (3, 2)),            # tiling in both dims
    ((2, 6, 4, 8), (1, 3, 2, 8)),
]


@pytest.mark.parametrize("op", BINARY)
@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_binary_ops_repeat_the_second_operand(rng, op, shapes, layout):
    a, b = rand(rng, *shapes[0]), rand(rng, *shapes[1])
    if op == "div":
        b = np.abs(b) + 0.5
    got = pg.compute(getattr(pg, op)(tensor(a, layout), tensor(b, "permuted")))
    close(got, BINARY[op](a.astype(np.float64), repeat_like(b, a.shape)))


def test_binary_tiling_is_a_repeat_not_a_stretch():
    a = np.zeros((4, 2), np.float32)
    b = np.array([[1, 2], [3, 4]], np.float32)
    got = pg.compute(pg.add(pg.from_numpy(a), pg.from_numpy(b)))
    np.testing.assert_array_equal(got, [[1, 2], [3, 4], [1, 2], [3, 4]])


# ---------------------------------------------------------------------------------------------- unary

def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x)."""
    return x / (1.0 + np.exp(-x))


UNARY = {
    "sqr": lambda x: x * x, "sqrt": np.sqrt, "neg": lambda x: -x, "exp": np.exp, "tanh": np.tanh,
    "silu": silu, "gelu": gelu_tanh, "relu": lambda x: np.where(x > 0, x, 0.0),
}


@pytest.mark.parametrize("op", UNARY)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_unary_ops(rng, op, layout):
    x = rand(rng, 3, 4, 5) * 2
    if op == "sqrt":
        x = np.abs(x)
    got = pg.compute(getattr(pg, op)(tensor(x, layout)))
    close(got, UNARY[op](x.astype(np.float64)))


def test_gelu_known_values():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0], np.float32)
    # 0.5 x (1 + tanh(0.7978845608 (x + 0.044715 x^3))), evaluated by hand for these points
    want = [-0.00363739, -0.15880801, 0.0, 0.34571401, 0.84119199, 2.99636261]
    close(pg.compute(pg.gelu(pg.from_numpy(x))), np.array(want), tol=1e-6)


@pytest.mark.parametrize("op", ["neg", "exp", "silu", "gelu", "sqr"])
def test_unary_ops_on_f16_inputs_read_the_values_of_each_run(rng, op):
    x = pg.input_tensor((2, 8), DType.F16, "x")
    plan = pg.compile(getattr(pg, op)(x))
    for _ in range(2):
        value = rand(rng, 2, 8).astype(np.float16)
        (got,) = plan.run({"x": value})
        assert got.dtype == np.float16
        close(got, UNARY[op](value.astype(np.float64)), tol=3e-3)


def test_unary_op_on_bf16_storage(rng):
    value = rand(rng, 4, 8)
    bits = (value.view(np.uint32) >> 16).astype(np.uint16)  # truncation: exactly representable values
    x = pg.input_tensor((4, 8), DType.BF16, "x")
    (got,) = pg.compile(pg.neg(x)).run({"x": bits})
    assert got.dtype == np.uint16
    truncated = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal((got.astype(np.uint32) << 16).view(np.float32), -truncated)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bias", [0.0, 0.25])
def test_scale(rng, layout, bias):
    x = rand(rng, 4, 6)
    close(pg.compute(pg.scale(tensor(x, layout), -1.5, bias)), x.astype(np.float64) * -1.5 + bias)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_clamp(rng, layout):
    x = rand(rng, 5, 7) * 3
    close(pg.compute(pg.clamp(tensor(x, layout), -0.5, 1.25)), np.minimum(np.maximum(x, -0.5), 1.25))


# ---------------------------------------------------------------------------------------------- GLU

GATES = {"swiglu": silu, "geglu": gelu_tanh}


@pytest.mark.parametrize("op", GATES)
@pytest.mark.parametrize("swapped", [False, True])
def test_glu_fused(rng, op, swapped):
    x = rand(rng, 3, 2, 10).astype(np.float64)
    first, second = x[..., :5], x[..., 5:]
    gate, up = (second, first) if swapped else (first, second)
    got = pg.compute(getattr(pg, op)(pg.from_numpy(x.astype(np.float32)), swapped=swapped))
    close(got, GATES[op](gate) * up)


@pytest.mark.parametrize("op", GATES)
@pytest.mark.parametrize("swapped", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_glu_split(rng, op, swapped, layout):
    a, b = rand(rng, 4, 6), rand(rng, 4, 6)
    gate, up = (b, a) if swapped else (a, b)
    got = pg.compute(getattr(pg, op)(tensor(a, layout), tensor(b, "permuted"), swapped=swapped))
    close(got, GATES[op](gate.astype(np.float64)) * up)


# ---------------------------------------------------------------------------------------------- norms

@pytest.mark.parametrize("layout", LAYOUTS)
def test_rms_norm(rng, layout):
    x = rand(rng, 2, 3, 16).astype(np.float64)
    want = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        row = x[idx]
        want[idx] = row / math.sqrt(sum(v * v for v in row) / len(row) + 1e-5)
    close(pg.compute(pg.rms_norm(tensor(x.astype(np.float32), layout), 1e-5)), want)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_norm(rng, layout):
    x = rand(rng, 3, 16).astype(np.float64) * 2 + 1
    want = np.empty_like(x)
    for r, row in enumerate(x):
        mu = sum(row) / len(row)
        var = sum((v - mu) ** 2 for v in row) / len(row)
        want[r] = (row - mu) / math.sqrt(var + 1e-3)
    close(pg.compute(pg.norm(tensor(x.astype(np.float32), layout), 1e-3)), want, tol=1e-4)


# ---------------------------------------------------------------------------------------------- reductions

@pytest.mark.parametrize("layout", LAYOUTS)
def test_sum_rows_and_mean(rng, layout):
    x = rand(rng, 2, 3, 9).astype(np.float64)
    sums = np.array([[[sum(x[i, j])] for j in range(3)] for i in range(2)])
    close(pg.compute(pg.sum_rows(tensor(x.astype(np.float32), layout))), sums)
    close(pg.compute(pg.mean(tensor(x.astype(np.float32), layout))), sums / 9)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_argmax_first_on_ties(rng, layout):
    x = rand(rng, 5, 11)
    x[2, [3, 7]] = 9.0  # a tie: the first index wins
    got = pg.compute(pg.argmax(tensor(x, layout)))
    assert got.dtype == np.int32
    want = [max(range(11), key=lambda j: (x[r, j], -j)) for r in range(5)]
    np.testing.assert_array_equal(got, want)
    assert got[2] == 3


# ---------------------------------------------------------------------------------------------- layout ops

def test_view_with_offset_and_strides(rng):
    x = rand(rng, 6, 8)
    t = pg.from_numpy(x)
    rows = pg.view(t, (3, 8), offset=2 * 8 * 4)                          # rows 2..4
    cols = pg.view(t, (6, 4), strides=(8 * 4, 2 * 4), offset=4)          # odd columns
    block = pg.view(t, (2, 3), strides=(3 * 8 * 4, 4), offset=(8 + 5) * 4)  # rows 1 and 4, columns 5..7
    got = pg.compute(pg.cont(rows), pg.cont(cols), pg.cont(block))
    np.testing.assert_array_equal(got[0], x[2:5])
    np.testing.assert_array_equal(got[1], x[:, 1::2])
    np.testing.assert_array_equal(got[2], x[1::3, 5:8])


def test_view_of_a_view_adds_offsets(rng):
    x = rand(rng, 4, 6)
    inner = pg.view(pg.from_numpy(x), (3, 6), offset=6 * 4)  # rows 1..3
    outer = pg.view(inner, (2, 6), offset=6 * 4)              # rows 2..3 of x
    assert outer.view_offset == 2 * 6 * 4
    np.testing.assert_array_equal(pg.compute(pg.cont(outer)), x[2:4])


@pytest.mark.parametrize("axes", [(0, 1, 2), (2, 0, 1), (1, 2, 0), (2, 1, 0), (0, 2, 1)])
def test_permute_has_numpy_transpose_semantics(rng, axes):
    x = rand(rng, 2, 3, 4)
    p = pg.permute(pg.from_numpy(x), *axes)
    assert p.shape == tuple(x.shape[i] for i in axes)
    want = np.empty(p.shape, np.float32)
    for idx in np.ndindex(*p.shape):  # result dim d walks x's dim axes[d]
        src = [0, 0, 0]
        for d, axis in enumerate(axes):
            src[axis] = idx[d]
        want[idx] = x[tuple(src)]
    np.testing.assert_array_equal(pg.compute(pg.cont(p)), want)


def test_transpose_swaps_the_last_two_dims(rng):
    x = rand(rng, 2, 3, 5)
    got = pg.compute(pg.cont(pg.transpose(pg.from_numpy(x))))
    want = np.empty((2, 5, 3), np.float32)
    for b in range(2):
        for i in range(3):
            for j in range(5):
                want[b, j, i] = x[b, i, j]
    np.testing.assert_array_equal(got, want)


def test_reshape_and_cont_with_shape(rng):
    x = rand(rng, 2, 3, 4)
    np.testing.assert_array_equal(pg.compute(pg.cont(pg.reshape(pg.from_numpy(x), (6, 4)))), x.reshape(6, 4))
    permuted = pg.permute(pg.from_numpy(x), 2, 0, 1)  # (4, 2, 3), not contiguous
    want = np.array([x[i, j, k] for k in range(4) for i in range(2) for j in range(3)]).reshape(8, 3)
    np.testing.assert_array_equal(pg.compute(pg.cont(permuted, (8, 3))), want)
    np.testing.assert_array_equal(pg.compute(pg.reshape(pg.cont(permuted), (24,))), want.reshape(-1))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(rng, layout, axis):
    a = rand(rng, 2, 3, 4)
    shape_b = list(a.shape)
    shape_b[axis] = 2
    b = rand(rng, *shape_b)
    want = np.concatenate([a, b], axis=axis)
    close(pg.compute(pg.concat(tensor(a, layout), tensor(b, "permuted"), axis)), want)


@pytest.mark.parametrize("src_type,dst_type,tol", [
    (DType.F32, DType.F32, 0), (DType.F32, DType.F16, 1e-3), (DType.F16, DType.F32, 0), (DType.F16, DType.F16, 0),
])
def test_cpy_converts_dtype_in_row_major_order(rng, src_type, dst_type, tol):
    src_np, dst_np = np.dtype(np.float32 if src_type == DType.F32 else np.float16), \
        np.dtype(np.float32 if dst_type == DType.F32 else np.float16)
    x = rand(rng, 3, 4).astype(src_np)
    a = pg.transpose(pg.input_tensor((3, 4), src_type, "x"))  # (4, 3), a permuted view of the input
    dst = pg.new_tensor((2, 6), dst_type, "dst", pg.Flag.PERSISTENT)
    plan = pg.compile(pg.cpy(a, dst), pg.NumpyBackend())
    (got,) = plan.run({"x": x})
    assert got.dtype == dst_np and got.shape == (2, 6)
    flat = [x[i, j] for j in range(4) for i in range(3)]  # the logical order of x.T
    close(got, np.array(flat, np.float64).reshape(2, 6), tol=tol)


def test_cpy_to_bf16_rounds_to_nearest_even():
    one_plus = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -9, -2.5], np.float32)
    dst = pg.new_tensor((4,), DType.BF16, "dst", pg.Flag.PERSISTENT)
    got = pg.compute(pg.cpy(pg.from_numpy(one_plus), dst), backend=pg.NumpyBackend())
    # bf16 keeps 7 mantissa bits: 1+2^-8 is a tie -> even (1.0); 1+3*2^-8 is a tie -> even (1+2^-6);
    # 1+2^-9 rounds down to 1.0; -2.5 is exact
    np.testing.assert_array_equal((got.astype(np.uint32) << 16).view(np.float32), [1.0, 1 + 2 ** -6, 1.0, -2.5])


def test_cpy_into_a_view_writes_the_viewed_rows(rng):
    backend = pg.NumpyBackend()
    cache = pg.new_tensor((5, 4), DType.F32, "cache", pg.Flag.PERSISTENT)
    x = rand(rng, 2, 4)
    written = pg.cpy(pg.from_numpy(x), pg.view(cache, (2, 4), offset=3 * 4 * 4))  # rows 3..4
    pg.compute(written, backend=backend)
    want = np.zeros((5, 4), np.float32)
    want[3:5] = x
    np.testing.assert_array_equal(pg.compute(pg.cont(cache), backend=backend), want)


# ---------------------------------------------------------------------------------------------- rows

@pytest.mark.parametrize("dtype", [DType.F32, DType.F16])
@pytest.mark.parametrize("idx_type", [DType.I32, DType.I64])
def test_get_rows_2d(rng, dtype, idx_type):
    table = rand(rng, 7, 5).astype(np.float16 if dtype == DType.F16 else np.float32)
    idx = np.array([3, 0, 3, 6], np.int32 if idx_type == DType.I32 else np.int64)
    got = pg.compute(pg.get_rows(pg.from_numpy(table), pg.from_numpy(idx)))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.stack([table[i].astype(np.float32) for i in idx]))


def test_get_rows_of_an_f16_input_reads_each_run(rng):
    table = pg.input_tensor((6, 4), DType.F16, "table")
    idx = pg.input_tensor((3,), DType.I32, "idx")
    plan = pg.compile(pg.get_rows(table, idx))
    for rows in ([5, 1, 1], [0, 2, 4]):
        values = rand(rng, 6, 4).astype(np.float16)
        (got,) = plan.run({"table": values, "idx": np.array(rows, np.int32)})
        np.testing.assert_array_equal(got, values[rows].astype(np.float32))


def test_get_rows_batched_3d(rng):
    table = rand(rng, 2, 6, 4)
    idx = np.array([[5, 0, 2], [1, 1, 4]], np.int32)
    got = pg.compute(pg.get_rows(pg.from_numpy(table), pg.from_numpy(idx)))
    want = np.stack([np.stack([table[b, i] for i in idx[b]]) for b in range(2)])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("batched", [False, True])
def test_get_rows_of_quantized_blocks(rng, batched):
    from gguf import quants  # the reference dequantizer: gguf's own Python implementation
    values = rand(rng, 2, 5, 64)
    blocks = quants.quantize(values.reshape(10, 64), DType.Q8_0)          # (10 rows, bytes per row)
    dense = quants.dequantize(blocks, DType.Q8_0).reshape(2, 5, 64)
    if batched:
        table = pg.from_numpy(blocks.reshape(2, 5, -1), dtype=DType.Q8_0)  # (2, 5, 64) in elements
        idx = np.array([[4, 0], [1, 1]], np.int32)
        want = np.stack([dense[b, idx[b]] for b in range(2)])
    else:
        table = pg.from_numpy(blocks, dtype=DType.Q8_0)                    # (10, 64) in elements
        idx = np.array([9, 0, 3], np.int32)
        want = dense.reshape(10, 64)[idx]
    got = pg.compute(pg.get_rows(table, pg.from_numpy(idx)))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("idx_type", [np.int32, np.int64])
@pytest.mark.parametrize("dst_type", [DType.F32, DType.F16])
def test_set_rows(rng, idx_type, dst_type):
    dst_np = np.float32 if dst_type == DType.F32 else np.float16
    backend = pg.NumpyBackend()
    dst = pg.new_tensor((6, 4), dst_type, "dst", pg.Flag.PERSISTENT)
    src, idx = pg.input_tensor((2, 4), DType.F32, "src"), pg.input_tensor((2,), DType.I32 if idx_type == np.int32
                                                                             else DType.I64, "idx")
    plan = pg.compile(pg.set_rows(dst, src, idx), backend)
    want = np.zeros((6, 4), dst_np)
    for rows in ([4, 1], [0, 4]):
        values = rand(rng, 2, 4)
        (got,) = plan.run({"src": values, "idx": np.array(rows, idx_type)})
        for r, v in zip(rows, values):
            want[r] = v.astype(dst_np)
        assert got.dtype == dst_np
        np.testing.assert_array_equal(got, want)


def test_set_rows_from_a_permuted_source(rng):
    x = rand(rng, 4, 3)
    dst = pg.new_tensor((5, 3), DType.F32, "dst", pg.Flag.PERSISTENT)
    src = pg.transpose(pg.from_numpy(np.ascontiguousarray(x.T)))  # value x, stored transposed
    got = pg.compute(pg.set_rows(dst, src, pg.from_numpy(np.array([4, 0, 2, 1], np.int64))),
                     backend=pg.NumpyBackend())
    want = np.zeros((5, 3), np.float32)
    want[[4, 0, 2, 1]] = x
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------- mul_mat

def reference_mul_mat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b @ a.T per leading index of b; b's leading index i uses a's index i // (nb / na) per dim (ggml)."""
    lead_b = b.shape[:-2]
    lead_a = (1,) * (len(lead_b) - (a.ndim - 2)) + a.shape[:-2]
    a = a.reshape(lead_a + a.shape[-2:]).astype(np.float64)
    out = np.empty(lead_b + (b.shape[-2], a.shape[-2]))
    for idx in np.ndindex(*lead_b):
        a_idx = tuple(i // (nb // na) for i, na, nb in zip(idx, lead_a, lead_b))
        for n in range(b.shape[-2]):
            for m in range(a.shape[-2]):
                out[idx + (n, m)] = sum(float(x) * y for x, y in zip(b[idx + (n,)], a[a_idx + (m,)]))
    return out


@pytest.mark.parametrize("shape_a,shape_b", [
    ((5, 8), (3, 8)),
    ((5, 8), (2, 3, 8)),               # a 2-D weight over a batch
    ((2, 5, 8), (6, 3, 8)),            # GQA: each a head serves 3 consecutive b heads
    ((2, 2, 5, 8), (2, 4, 3, 8)),      # 4-D: head groups of 2
    ((1, 2, 5, 8), (3, 4, 3, 8)),      # 4-D: both leading dims broadcast
], ids=str)
@pytest.mark.parametrize("layout_a", ["contiguous", "permuted"])
@pytest.mark.parametrize("layout_b", LAYOUTS)
def test_mul_mat(rng, shape_a, shape_b, layout_a, layout_b):
    a, b = rand(rng, *shape_a), rand(rng, *shape_b)
    got = pg.compute(pg.mul_mat(tensor(a, layout_a), tensor(b, layout_b)))
    assert got.dtype == np.float32
    close(got, reference_mul_mat(a, b), tol=1e-4)


def test_mul_mat_gqa_uses_consecutive_groups():
    a = np.stack([np.eye(2, dtype=np.float32) * (h + 1) for h in range(2)])  # head h multiplies by h + 1
    b = np.ones((4, 1, 2), np.float32)
    got = pg.compute(pg.mul_mat(pg.from_numpy(a), pg.from_numpy(b)))
    np.testing.assert_array_equal(got[:, 0, 0], [1, 1, 2, 2])


@pytest.mark.parametrize("shape_a,shape_b", [((5, 8), (3, 8)), ((2, 5, 8), (4, 3, 8))], ids=str)
def test_mul_mat_f16_a(rng, shape_a, shape_b):
    a, b = rand(rng, *shape_a).astype(np.float16), rand(rng, *shape_b)
    got = pg.compute(pg.mul_mat(pg.from_numpy(a), pg.from_numpy(b)))  # an F16 weight leaf
    close(got, reference_mul_mat(a.astype(np.float32), b), tol=1e-4)
    plan = pg.compile(pg.mul_mat(pg.input_tensor(shape_a, DType.F16, "a"), pg.input_tensor(shape_b, DType.F32, "b")))
    for _ in range(2):  # an F16 input: converted on every run
        a, b = rand(rng, *shape_a).astype(np.float16), rand(rng, *shape_b)
        (got,) = plan.run({"a": a, "b": b})
        close(got, reference_mul_mat(a.astype(np.float32), b), tol=1e-4)


def test_mul_mat_f16_b_input(rng):
    a, b = rand(rng, 4, 8), rand(rng, 3, 8).astype(np.float16)
    plan = pg.compile(pg.mul_mat(pg.from_numpy(a), pg.input_tensor((3, 8), DType.F16, "b")))
    (got,) = plan.run({"b": b})
    close(got, reference_mul_mat(a, b.astype(np.float32)), tol=1e-4)


def test_view_of_an_f16_leaf_with_data(rng):
    x = rand(rng, 4, 6).astype(np.float16)
    rows = pg.view(pg.from_numpy(x), (2, 6), offset=2 * 6 * 2)  # rows 2..3 of an F16 leaf
    np.testing.assert_array_equal(pg.compute(pg.cont(rows)), x[2:4])
