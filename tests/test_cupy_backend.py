"""The CuPy backend on a CPU stand-in for cupy (tests/fake_cupy.py): every op against the NumPy backend, F16/BF16
and quantized blocks read on the device, device dequantization against gguf, the synthetic llama against the
NumPy backend with and without CUDA-graph replay, and a decode step making no host sync and no upload."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

import fake_cupy
import pyggml as pg
from conftest import F32_CACHE, float32_backend
from op_cases import (CASE_IDS, CASES, HALF_CASES, HALF_IDS, MAX_NMSE, RAW_CASES, blocks_leaf, nmse, quant_cases,
                      r, random_blocks)
from pyggml import DType
from pyggml.backends import compile as compile_plan
from pyggml.backends.cupy.backend import CupyBackend, GraphReplay
from pyggml.backends.cupy.quants import DEVICE_FORMATS, Dequantizer, dequantize_rows
from pyggml.backends.numpy.backend import NumpyBackend
from pyggml.backends.numpy.kernels import as_f32
from pyggml.model.model import Model
from synthetic_llama import TinyLlama, make_weights, write_gguf

CFG = TinyLlama()
CFG_Q = TinyLlama(n_ff=64)  # every matrix row a whole number of blocks
QUANT_TYPES = sorted(DEVICE_FORMATS, key=lambda t: t.value)
QUANT_CASES = quant_cases(QUANT_TYPES)


def device(**options) -> CupyBackend:
    return CupyBackend(xp=fake_cupy, **options)


def compare(build, rtol_nmse: float = MAX_NMSE) -> None:
    """The graph built twice (same seed) on NumPy and on the CuPy backend over the stand-in: same values."""
    want = pg.compute(build(np.random.default_rng(7)), backend=NumpyBackend())
    result = build(np.random.default_rng(7))
    got = pg.compute(result, backend=device())
    assert got.shape == want.shape
    assert nmse(as_f32(got, result.dtype), as_f32(want, result.dtype)) <= rtol_nmse


# ---- the stand-in behaves as cupy does where it matters

def test_stand_in_refuses_host_values_and_counts_syncs():
    a = fake_cupy.asarray(np.ones(3, np.float32))
    with pytest.raises(TypeError):
        np.asarray(a)
    with pytest.raises(TypeError):
        fake_cupy.add(a, np.ones(3, np.float32))  # a host array as an operand
    fake_cupy.counts.reset()
    assert a.get().sum() == 3 and fake_cupy.counts.syncs == 1


def test_stand_in_capture_refuses_syncs_cublas_and_the_default_stream():
    a = fake_cupy.asarray(np.ones((2, 2), np.float32))
    with pytest.raises(fake_cupy.CaptureError):
        fake_cupy.cuda.Stream().begin_capture()
    stream = fake_cupy.cuda.Stream(non_blocking=True)
    for forbidden in (a.get, lambda: fake_cupy.matmul(a, a), lambda: a.set(np.zeros((2, 2)))):
        stream.begin_capture()
        try:
            with pytest.raises(fake_cupy.CaptureError):
                forbidden()
        finally:
            stream.end_capture()


# ---- op by op

@pytest.mark.parametrize("op,i", CASE_IDS, ids=[f"{op}-{i}" for op, i in CASE_IDS])
def test_op_matches_numpy(op, i):
    compare(CASES[op][i])


@pytest.mark.parametrize("op,dtype", HALF_IDS, ids=[f"{op}-{t.name}" for op, t in HALF_IDS])
def test_half_precision_operands_on_the_device(op, dtype):
    compare(lambda g: HALF_CASES[op](g, dtype), rtol_nmse=1e-5)


# ---- quantized blocks on the device

@pytest.mark.parametrize("dtype", QUANT_TYPES, ids=lambda t: t.name)
def test_device_dequantization_matches_gguf(dtype):
    raw = random_blocks(dtype, 5, 3, np.random.default_rng(dtype.value))
    row_len = 3 * gguf.GGML_QUANT_SIZES[dtype][0]
    got = dequantize_rows(Dequantizer(fake_cupy), fake_cupy.asarray(raw), dtype, None, row_len).get()
    np.testing.assert_array_equal(got, gguf.quants.dequantize(raw, dtype))


@pytest.mark.parametrize("case", sorted(QUANT_CASES))
def test_quantized_ops_match_numpy(case):
    compare(QUANT_CASES[case], rtol_nmse=1e-10)


@pytest.mark.parametrize("dtype", QUANT_TYPES, ids=lambda t: t.name)
def test_quantized_weights_are_read_as_blocks(dtype):
    row_len = max(256, gguf.GGML_QUANT_SIZES[dtype][0])
    rng = np.random.default_rng(3)
    w = blocks_leaf(dtype, 6, row_len, rng)
    x = r(rng, 2, row_len)
    rows = pg.from_numpy(np.array([4, 1, 4], np.int32))
    dev = device()
    plan = compile_plan([pg.mul_mat(w, x), pg.get_rows(w, rows)], dev)
    assert plan.array(w).dtype == np.uint8 and plan.array(w).nbytes == w.data.nbytes  # blocks, not floats
    full = gguf.quants.dequantize(w.data, dtype)
    product, gathered = plan.run()
    np.testing.assert_allclose(product, x.data @ full.T, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(gathered, full[[4, 1, 4]])


# ---- the synthetic llama

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("cupy") / "tiny-llama.gguf", CFG, make_weights(CFG))


@pytest.fixture(scope="module")
def tiny_q8(tmp_path_factory):
    weights = make_weights(CFG_Q)
    raw = {n: DType.Q8_0 for n, v in weights.items() if v.ndim == 2}
    weights = {n: gguf.quants.quantize(v, DType.Q8_0) if n in raw else v for n, v in weights.items()}
    return write_gguf(tmp_path_factory.mktemp("cupy") / "tiny-llama-q8.gguf", CFG_Q, weights, raw_dtypes=raw)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graph-replay"])
@pytest.mark.parametrize("model", ["tiny", "tiny_q8"])
def test_generation_matches_numpy(model, graphs, request):
    path = request.getfixturevalue(model)
    ref = Model(path, n_ctx=64, backend=float32_backend(), **F32_CACHE).generate([1, 2, 3], max_tokens=8,
                                                                             temperature=0.0, logprobs=True)
    out = Model(path, n_ctx=64, **F32_CACHE, backend=device(cuda_graphs=graphs)).generate(
        [1, 2, 3], max_tokens=8, temperature=0.0, logprobs=True)
    assert out.tokens == ref.tokens
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graph-replay"])
def test_batched_steps_match_numpy(tiny_q8, graphs):
    """Two sequences over a paged cache: a prefill step (masked attention), then decode steps (paged_attn)."""
    from pyggml.model.runtime.batch import Entry
    logits = []
    for backend in (NumpyBackend(), device(cuda_graphs=graphs)):
        bc = Model(tiny_q8, n_ctx=64, **F32_CACHE, backend=backend).batch_context(8)
        seqs = [bc.cache.new_sequence() for _ in range(2)]
        steps = [bc.step([Entry(seqs[0], [1, 2, 3]), Entry(seqs[1], [4, 5])])]
        for token in (6, 7, 8):
            steps.append(bc.step([Entry(seqs[0], [token]), Entry(seqs[1], [token + 3])]))
        logits.append(np.array(steps))
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-5)


def decode_plan(model: Model):
    return next(p for key, (p, _) in model.context.batch._plans.items() if key[0] == 1)


def test_decode_step_is_one_graph_launch_without_host_sync(tiny_q8):
    model = Model(tiny_q8, n_ctx=64, **F32_CACHE, backend=device())
    model.eval([1, 2, 3])
    for token in (4, 5, 6):  # warm-up, capture, replay
        model.eval([token])
    plan = decode_plan(model)
    assert len(plan._calls) == 1 and isinstance(plan._calls[0], GraphReplay) and plan._calls[0].graph is not None
    fake_cupy.counts.reset()
    plan._calls[0]()
    assert (fake_cupy.counts.syncs, fake_cupy.counts.uploads, fake_cupy.counts.launches) == (0, 0, 1)
    fake_cupy.counts.reset()
    model.eval([7])
    assert fake_cupy.counts.syncs == 1  # the logits' download, nothing else
    assert fake_cupy.counts.uploads == len(plan.inputs)


def test_eager_decode_step_makes_no_host_sync(tiny_q8):
    model = Model(tiny_q8, n_ctx=64, **F32_CACHE, backend=device(cuda_graphs=False))
    model.eval([1, 2, 3])
    model.eval([4])
    plan = decode_plan(model)
    fake_cupy.counts.reset()
    for step in plan._calls:
        step()
    assert fake_cupy.counts.syncs == 0 and fake_cupy.counts.uploads == 0
    assert fake_cupy.counts.launches > len(plan._calls)


# ---- the raw-kernel path: launches checked against the CUDA signatures (their arithmetic needs a GPU)

@pytest.fixture
def raw_device(monkeypatch):
    monkeypatch.setattr(fake_cupy, "RawModule", fake_cupy.CheckedRawModule, raising=False)
    return device(raw_kernels=True)


@pytest.mark.parametrize("kernel", sorted(RAW_CASES))
def test_raw_launches_match_signatures(raw_device, kernel):
    pg.compute(RAW_CASES[kernel](np.random.default_rng(0)), backend=raw_device)
    assert kernel in raw_device.raw._module.launched


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the checked launches compute nothing: values are garbage
def test_raw_decode_step_launches_only_kernels(raw_device, tiny_q8):
    model = Model(tiny_q8, n_ctx=64, **F32_CACHE, backend=raw_device)
    model.eval([1, 2, 3])
    for token in (4, 5, 6):
        model.eval([token])
    launched = set(raw_device.raw._module.launched)
    # the attention's scores and softmax are fused into attn_decode (the softmax and small-product kernels run
    # in RAW_CASES)
    assert {"get_rows_q8_0", "mmv_q8_0", "rms_norm_f32", "rope_f32", "glu_f32", "attn_decode_f32"} <= launched
    plan = decode_plan(model)
    assert len(plan._calls) == 1 and plan._calls[0].graph is not None  # captured: no cuBLAS in the step


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the checked launches compute nothing: values are garbage
def test_raw_decode_attention_and_norms_are_fused(raw_device, tiny_q8):
    """The graph passes of backends/fusion.py: a norm with its weight is one rms_norm_mul, the decode attention one
    flash_attn_ext launching attn_decode, so no separate norm, scores or softmax step is left."""
    raw_device.cuda_graphs = False
    model = Model(tiny_q8, n_ctx=64, **F32_CACHE, backend=raw_device)
    model.eval([1, 2, 3])
    model.eval([4])
    ops = [n.op for n in decode_plan(model).graph.nodes]
    assert ops.count("rms_norm_mul") == 2 * CFG_Q.n_layer + 1 and ops.count("flash_attn_ext") == CFG_Q.n_layer
    assert not {"rms_norm", "soft_max_ext"} & set(ops)
    assert "attn_decode_f32" in raw_device.raw._module.launched


def test_a_step_that_cannot_be_captured_runs_eagerly():
    dev = device()
    a = fake_cupy.asarray(np.ones(4, np.float32))
    seen = []
    replay = GraphReplay(dev, [lambda: fake_cupy.multiply(a, 2, out=a), lambda: seen.append(float(a[0]))])
    replay()  # warm-up
    with pytest.warns(RuntimeWarning, match="capture failed"):
        replay()  # a host read during capture: refused, run eagerly from now on
    replay()
    assert replay.graph is None and replay.failed and len(seen) == 3 and seen[2] == 2 * seen[1]


# ---- RMSNorm fused with its weight

def norm_graph(rng, norm_is_read_again: bool):
    x = pg.input_tensor((3, 16), name="x")
    w = pg.from_numpy((1 + 0.1 * rng.standard_normal(16)).astype(np.float32))
    norm = pg.rms_norm(pg.exp(x), 1e-6)
    y = pg.mul(norm, w)
    return x, (pg.add(y, norm) if norm_is_read_again else pg.silu(y))


@pytest.mark.parametrize("read_again", [False, True], ids=["fused", "norm-read-again"])
def test_rms_norm_with_its_weight_is_one_node(read_again):
    rng = np.random.default_rng(0)
    value = rng.standard_normal((3, 16)).astype(np.float32)
    x, y = norm_graph(rng, read_again)
    want = compile_plan(y, NumpyBackend()).run({x: value})[0]
    plan = compile_plan(y, device(cuda_graphs=False))
    np.testing.assert_allclose(plan.run({x: value})[0], want, rtol=1e-6)
    ops = [n.op for n in plan.graph.nodes]
    assert "rms_norm_mul" in ops and ("rms_norm" in ops) == read_again  # a norm read elsewhere stays too


def test_llama_norms_are_fused(tiny_q8):
    model = Model(tiny_q8, n_ctx=64, **F32_CACHE, backend=device(cuda_graphs=False))
    model.eval([1, 2])
    ops = [n.op for n in model.context.last_plan.graph.nodes]
    assert ops.count("rms_norm_mul") == 2 * CFG_Q.n_layer + 1 and "rms_norm" not in ops
