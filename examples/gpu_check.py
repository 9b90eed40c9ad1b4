"""Check the CuPy backend on a GPU in one command and write a JSON and a Markdown report into OUT_DIR.

    python examples/gpu_check.py OUT_DIR [--models smollm2-135m,gemma3-270m] [--shapes llama-3.2-1b,llama-3.1-8b]

1. every op case (F32, F16/BF16, quantized blocks) on the GPU against the NumPy backend, raw kernels and array path;
2. both reference models' logits against the CPU backend (top 50 of the CPU logits within 0.02);
3. decode and prefill tokens/s of both models and of synthetic Llama shapes in Q4_0 and Q8_0 built on the device,
   with and without CUDA-graph replay, each next to the HBM bound: weight bytes per token over the
   device-to-device copy bandwidth measured in the same run.
`--stand-in` runs it all on tests/fake_cupy.py (the CPU stand-in) with tiny shapes: the script's own check in CI.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import MODEL_TENSOR as T, TENSOR_NAMES

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the op cases shared with the test suite

import op_cases  # noqa: E402
import pyggml as pg  # noqa: E402
from pyggml import DType  # noqa: E402
from pyggml.backends.cupy.backend import CupyBackend  # noqa: E402
from pyggml.backends.cupy.quants import DEVICE_FORMATS  # noqa: E402
from pyggml.backends.numpy.backend import NumpyBackend  # noqa: E402
from pyggml.backends.numpy.kernels import as_f32  # noqa: E402
from pyggml.graph.dtypes import block_layout, is_quantized  # noqa: E402
from pyggml.graph.tensor import Flag, Tensor  # noqa: E402
from pyggml.model.decoder import build_decoder  # noqa: E402
from pyggml.model.hparams import HParams  # noqa: E402
from pyggml.model.model import Model  # noqa: E402
from pyggml.model.runtime.batch import BatchContext  # noqa: E402
from pyggml.model.runtime.paged_cache import BLOCK_SIZE, PagedKVCache  # noqa: E402
from pyggml.model.runtime.sequence import SequenceContext  # noqa: E402

TOP_K, MAX_LOGIT_DIFF = 50, 0.02
PROMPT = "The capital of France is Paris, and the capital of Germany is"


@dataclass
class Shape:
    """A llama's shapes (the weights are made on the device)."""
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    tied: bool


SHAPES = {"llama-3.2-1b": Shape(128256, 2048, 16, 32, 8, 64, 8192, True),
          "llama-3.1-8b": Shape(128256, 4096, 32, 32, 8, 128, 14336, False),
          "tiny": Shape(256, 64, 2, 4, 2, 16, 128, True)}


def device(args: argparse.Namespace, **options) -> CupyBackend:
    """A CuPy backend (on the stand-in with --stand-in)."""
    if args.stand_in:
        import fake_cupy
        return CupyBackend(xp=fake_cupy, **options)
    return CupyBackend(**options)


def compare_case(build, backend: CupyBackend) -> float:
    """NMSE of a case's result on the backend against the NumPy backend."""
    want = pg.compute(build(np.random.default_rng(7)), backend=NumpyBackend())
    result = build(np.random.default_rng(7))
    got = pg.compute(result, backend=backend)
    return op_cases.nmse(as_f32(got, result.dtype).astype(np.float32), as_f32(want, result.dtype).astype(np.float32))


def check_ops(args: argparse.Namespace) -> list[dict]:
    """Every case on the raw-kernel path and on the array-level path (op_cases.all_cases)."""
    rows = []
    for raw in ([False] if args.stand_in else [True, False]):
        backend = device(args, raw_kernels=raw)
        for name, (case, limit) in op_cases.all_cases(sorted(DEVICE_FORMATS)).items():
            try:
                error = compare_case(case, backend)
                rows.append({"case": name, "raw_kernels": raw, "nmse": error, "ok": bool(error <= limit)})
            except Exception as e:  # noqa: BLE001  (a failing case is reported, the others still run)
                rows.append({"case": name, "raw_kernels": raw, "error": f"{type(e).__name__}: {e}", "ok": False})
    return rows


def check_model(args: argparse.Namespace, name: str) -> dict:
    """The last prompt position's logits on the GPU against the CPU backend, on the CPU's top 50."""
    cpu = Model(name, n_ctx=256)
    ids = cpu.tokenize(PROMPT)
    want = cpu.eval(ids)[-1]
    got = Model(name, n_ctx=256, backend=device(args)).eval(ids)[-1]
    top = np.argsort(want)[-TOP_K:]
    diff = float(np.max(np.abs(got[top] - want[top])))
    return {"model": name, "max_top50_diff": diff, "same_argmax": int(np.argmax(got)) == int(np.argmax(want)),
            "ok": diff <= MAX_LOGIT_DIFF}


def copy_gbps(backend: CupyBackend, nbytes: int) -> float:
    """Device-to-device copy bandwidth (bytes read plus written per second), best of 5."""
    xp = backend.xp
    src, dst = xp.zeros(nbytes, np.uint8), xp.empty(nbytes, np.uint8)
    best = float("inf")
    for _ in range(5):
        backend.synchronize()
        t0 = time.perf_counter()
        xp.copyto(dst, src)
        backend.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


class DeviceWeights:
    """The Weights interface over leafs without host data whose device arrays are filled on the device."""

    def __init__(self, shape: Shape, dtype: DType, backend: CupyBackend):
        self.shape, self.dtype, self.backend = shape, dtype, backend
        self._leafs: dict[str, Tensor] = {}

    def has(self, kind, il: int | None = None, suffix: str = "weight") -> bool:
        """A plain llama's weights: no biases, no rope_freqs; the output head only when not tied."""
        plain = kind in (T.ATTN_NORM, T.FFN_NORM, T.OUTPUT_NORM) or len(self._dims(kind)) == 2
        return suffix == "weight" and plain and not (kind == T.OUTPUT and self.shape.tied)

    def get_optional(self, kind, il: int | None = None, suffix: str = "weight") -> Tensor | None:
        return self.get(kind, il) if self.has(kind, il, suffix) else None

    def get(self, kind, il: int | None = None, suffix: str = "weight") -> Tensor:
        name = TENSOR_NAMES[kind].format(bid=il)
        if name not in self._leafs:
            dims = self._dims(kind)
            dtype = self.dtype if len(dims) == 2 else DType.F32
            leaf = Tensor(dims, dtype, name=name, flags=Flag.WEIGHT)
            self._fill(leaf)
            self._leafs[name] = leaf
        return self._leafs[name]

    def _dims(self, kind) -> tuple[int, ...]:
        s = self.shape
        q, kv = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
        return {T.TOKEN_EMBD: (s.n_vocab, s.n_embd), T.OUTPUT: (s.n_vocab, s.n_embd), T.ATTN_Q: (q, s.n_embd),
                T.ATTN_K: (kv, s.n_embd), T.ATTN_V: (kv, s.n_embd), T.ATTN_OUT: (s.n_embd, q),
                T.FFN_GATE: (s.n_ff, s.n_embd), T.FFN_UP: (s.n_ff, s.n_embd),
                T.FFN_DOWN: (s.n_embd, s.n_ff)}.get(kind, (s.n_embd,))

    def _fill(self, leaf: Tensor) -> None:
        """Pseudo-random blocks with small scales (norms: ones), made on the device: nothing is uploaded."""
        array, xp = self.backend.place(leaf, False), self.backend.xp
        if not is_quantized(leaf.dtype):
            array[...] = 1.0
            return
        n = array.size
        bytes_ = ((xp.arange(n, dtype=np.uint32) * np.uint32(2654435761)) >> np.uint32(24)).astype(np.uint8)
        blocks = bytes_.reshape(-1, block_layout(leaf.dtype)[1])
        blocks[:, 0], blocks[:, 1] = np.uint8(0x1E), np.uint8(0x1E)  # d = float16 0x1E1E (about 0.006)
        array[...] = blocks.reshape(array.shape)


def synthetic_context(shape: Shape, dtype: DType, backend: CupyBackend, n_ctx: int) -> SequenceContext:
    """A llama context over device-made weights of a shape."""
    hp = HParams(arch="llama", n_vocab=shape.n_vocab, n_ctx_train=n_ctx, n_embd=shape.n_embd, n_layer=shape.n_layer,
                 n_head=shape.n_head, n_head_kv=shape.n_head_kv, head_dim=shape.head_dim, head_dim_v=shape.head_dim,
                 n_ff=shape.n_ff, rms_eps=1e-5, rope_dim=shape.head_dim, rope_freq_base=500000.0, rope_freq_scale=1.0,
                 attention_scale=1.0 / np.sqrt(shape.head_dim), embedding_scale=1.0, tie_embeddings=shape.tied)
    cache = PagedKVCache(shape.n_layer, -(-n_ctx // BLOCK_SIZE), shape.n_head_kv, shape.head_dim, DType.F16,
                         in_order=True)
    batch = BatchContext(DeviceWeights(shape, dtype, backend), hp, build_decoder, cache, backend)
    return SequenceContext(batch, n_ctx, min(512, n_ctx))


def weight_bytes_per_token(context: SequenceContext) -> int:
    """Bytes of the weights one decode step's mul_mats read (their device arrays)."""
    plan = context.last_plan
    return sum(plan.array(n.srcs[0]).nbytes for n in plan.graph.nodes
               if n.op == "mul_mat" and n.srcs[0].is_leaf and n.srcs[0].flags & Flag.WEIGHT)


def speed(context: SequenceContext, n_vocab: int, args: argparse.Namespace) -> dict:
    """Prefill and decode tokens/s (after a warm-up of each) and the decode step's weight bytes."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, n_vocab, args.prefill_tokens).tolist()
    context.reset()
    context.eval(prompt)  # warm-up: plans compiled, kernels compiled
    context.reset()
    t0 = time.perf_counter()
    context.eval(prompt)
    prefill = args.prefill_tokens / (time.perf_counter() - t0)
    for token in prompt[:3]:  # warm-up, capture
        context.eval([token])
    t0 = time.perf_counter()
    for token in prompt[:args.decode_tokens]:
        context.eval([token])
    decode = args.decode_tokens / (time.perf_counter() - t0)
    return {"prefill_tps": prefill, "decode_tps": decode, "weight_bytes_per_token": weight_bytes_per_token(context)}


def check_speed(args: argparse.Namespace, gbps: float) -> list[dict]:
    """Speeds of the reference models and the synthetic shapes, with and without graph replay."""
    rows = []
    for graphs in (True, False):
        for name in args.models:
            backend = device(args, cuda_graphs=graphs)
            model = Model(name, n_ctx=args.prefill_tokens + args.decode_tokens + 8, backend=backend)
            rows.append({"model": name, "cuda_graphs": graphs,
                         **speed(model.context, model.hparams.n_vocab, args)})
        for shape_name in args.shapes:
            for dtype in (DType.Q4_0, DType.Q8_0):
                backend = device(args, cuda_graphs=graphs)
                context = synthetic_context(SHAPES[shape_name], dtype, backend,
                                            args.prefill_tokens + args.decode_tokens + 8)
                rows.append({"model": f"{shape_name} {dtype.name}", "cuda_graphs": graphs,
                             **speed(context, SHAPES[shape_name].n_vocab, args)})
    for row in rows:
        row["hbm_bound_tps"] = gbps * 1e9 / row["weight_bytes_per_token"]
    return rows


def markdown(report: dict) -> str:
    """The report as Markdown tables."""
    ops = report["ops"]
    failed = [r for r in ops if not r["ok"]]
    lines = [f"# GPU check ({report['device']})", "", f"Op cases: {len(ops) - len(failed)} of {len(ops)} pass.", ""]
    lines += [f"- FAIL {r['case']} (raw kernels: {r['raw_kernels']}): {r.get('error', r.get('nmse'))}"
              for r in failed]
    lines += ["", "| model | max diff on CPU top 50 | same argmax | ok |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r.get('max_top50_diff', r.get('error'))} | {r.get('same_argmax')} | {r['ok']} |"
              for r in report["models"]]
    lines += ["", f"Device-to-device copy: {report['copy_gb_per_s']:.0f} GB/s", "",
              "| model | CUDA graphs | prefill tok/s | decode tok/s | HBM bound tok/s | weight MiB/token |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['cuda_graphs']} | {r['prefill_tps']:.1f} | {r['decode_tps']:.1f} | "
              f"{r['hbm_bound_tps']:.1f} | {r['weight_bytes_per_token'] / 2**20:.1f} |" for r in report["speed"]]
    return "\n".join(lines) + "\n"


def model_check_or_error(args: argparse.Namespace, name: str) -> dict:
    try:
        return check_model(args, name)
    except Exception as e:  # noqa: BLE001  (a model that cannot be loaded is reported, the rest still runs)
        return {"model": name, "error": f"{type(e).__name__}: {e}", "ok": False}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m", help="comma-separated names or paths")
    parser.add_argument("--shapes", default="llama-3.2-1b,llama-3.1-8b", help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--stand-in", action="store_true", help="run on the CPU stand-in for cupy (tests)")
    args = parser.parse_args()
    args.models, args.shapes = [m for m in args.models.split(",") if m], [s for s in args.shapes.split(",") if s]
    start = time.perf_counter()
    gbps = copy_gbps(device(args), 1 << 30 if not args.stand_in else 1 << 20)
    report = {"device": "CPU stand-in" if args.stand_in else "GPU", "ops": check_ops(args),
              "models": [model_check_or_error(args, name) for name in args.models],
              "copy_gb_per_s": gbps, "speed": check_speed(args, gbps)}
    report["seconds"] = time.perf_counter() - start
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (args.out_dir / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(r["ok"] for r in report["ops"] + report["models"]) else 1


if __name__ == "__main__":
    sys.exit(main())
