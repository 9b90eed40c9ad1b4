"""Speed of a model in the spirit of llama-bench: prefill (pp) and decode (tg) tokens/s over repetitions, with
the weight bytes a decode token reads and the bare bounds of the same machine measured in the same run."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pyggml.backends.quants import dequantize
from pyggml.graph.tensor import Tensor

from ..runtime.stages import step_bytes
from .profile import placed_weights, step_plan

if TYPE_CHECKING:
    from ..model import Model

COPY_BYTES = 128 * 2**20  # the array np.copyto copies for the memory-bandwidth figure
MAX_DENSE_BOUND_BYTES = 4 * 2**30  # F32 copies beyond this are not made for the mat-vec bound (an 8B model)


@dataclass
class Bounds:
    """What the machine reaches bare: one token's weight mat-vecs in NumPy on F32 copies, and a memory copy."""
    weight_bytes: int      # bytes of the weights one decode token's mul_mats read, as the backend holds them
    dense_bytes: int       # F32 bytes of the same weights
    n_matvecs: int
    matvec_seconds: float | None  # all of one token's F32 mat-vecs, best of the repetitions (None: not made)
    copy_gbps: float       # np.copyto, bytes read plus bytes written per second

    @property
    def matvec_tps(self) -> float | None:
        return None if self.matvec_seconds is None else 1.0 / self.matvec_seconds

    @property
    def bandwidth_tps(self) -> float:
        """Tokens/s if reading the weights once per token ran at the copy bandwidth."""
        return self.copy_gbps * 1e9 / self.weight_bytes

    def to_dict(self) -> dict:
        seconds = self.matvec_seconds
        return {"weight_bytes": self.weight_bytes, "dense_bytes": self.dense_bytes, "n_matvecs": self.n_matvecs,
                "matvec_ms": None if seconds is None else seconds * 1e3, "matvec_tokens_per_second": self.matvec_tps,
                "matvec_gb_per_s": None if seconds is None else self.dense_bytes / seconds / 1e9,
                "copy_gb_per_s": self.copy_gbps, "bandwidth_tokens_per_second": self.bandwidth_tps}


@dataclass
class BenchRow:
    """One test (pp N or tg N): tokens/s of each repetition and the weight traffic they imply."""
    test: str
    n_prompt: int
    n_gen: int
    samples: list[float]       # tokens/s per repetition
    weight_bytes_per_token: float
    bounds: Bounds

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples))

    @property
    def std(self) -> float:
        return float(np.std(self.samples, ddof=1)) if len(self.samples) > 1 else 0.0

    @property
    def gbps(self) -> float:
        return self.weight_bytes_per_token * self.mean / 1e9

    def to_dict(self) -> dict:
        """Figures of the row; ratio_matvec_bound: tokens/s over the bare F32 mat-vecs' (per decode token of
        weights read; None when no F32 copies were made)."""
        matvec_tps, per_token = self.bounds.matvec_tps, self.weight_bytes_per_token / self.bounds.weight_bytes
        return {"test": self.test, "n_prompt": self.n_prompt, "n_gen": self.n_gen, "samples_ts": self.samples,
                "avg_ts": self.mean, "stddev_ts": self.std, "weight_bytes_per_token": self.weight_bytes_per_token,
                "gb_per_s": self.gbps,
                "ratio_matvec_bound": None if matvec_tps is None else self.mean * per_token / matvec_tps,
                "ratio_copy_bandwidth": self.gbps / self.bounds.copy_gbps}


def best_seconds(fn: Callable[[], object], repetitions: int) -> float:
    """The fastest of some timed calls of fn."""
    best = math.inf
    for _ in range(max(repetitions, 1)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def f32_weights(weights: list[Tensor]) -> list[np.ndarray]:
    """Dense F32 copies of weights (dequantized from their blocks)."""
    return [dequantize(np.asarray(w.data), w.dtype, w.shape) for w in weights]


def matvec_seconds(weights: list[np.ndarray], repetitions: int) -> float:
    """Time of one (1, K) vector times every F32 weight, as the NumPy backend's mul_mat does it."""
    work = [(np.ones((1, w.shape[-1]), np.float32), w.T, np.empty((1, w.shape[0]), np.float32)) for w in weights]

    def run() -> None:
        for x, w_t, out in work:
            np.matmul(x, w_t, out=out)
    return best_seconds(run, repetitions + 1)


def copy_gbps(repetitions: int, nbytes: int = COPY_BYTES) -> float:
    """np.copyto bandwidth of a large array, counting the bytes read and the bytes written."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    return 2 * nbytes / best_seconds(lambda: np.copyto(dst, src), repetitions + 1) / 1e9


def measure_bounds(model: Model, repetitions: int) -> Bounds:
    """Compile a fresh decode step and measure the bare bounds of its weights on this machine's CPU (F32 copies
    made from the weights' host data, wherever the plan holds them). Over pipeline stages, which hold the
    weights: the bytes a step reads from the file, and no mat-vec bound."""
    if model.pipeline is not None:
        return Bounds(sum(step_bytes(model.gguf.tensors, model.hparams.n_layer)), 0, 0, None, copy_gbps(repetitions))
    model.reset()
    placed = placed_weights(step_plan(model.context, [0]))
    dense_bytes = sum(4 * w.nelements for w in placed)
    seconds = None
    if dense_bytes <= MAX_DENSE_BOUND_BYTES:
        seconds = matvec_seconds(f32_weights(list(placed)), repetitions)
    return Bounds(sum(a.nbytes for a in placed.values()), dense_bytes, len(placed), seconds, copy_gbps(repetitions))


def prefill_tps(model: Model, ids: list[int]) -> float:
    """Tokens/s of one prefill of ids from an empty cache."""
    model.reset()
    t0 = time.perf_counter()
    model.context.eval(ids)
    return len(ids) / (time.perf_counter() - t0)


def decode_tps(model: Model, ids: list[int]) -> float:
    """Tokens/s of decoding ids one step each from an empty cache."""
    model.reset()
    t0 = time.perf_counter()
    for token in ids:
        model.context.eval([token])
    return len(ids) / (time.perf_counter() - t0)


def bench(model: Model, n_prompt: int = 256, n_gen: int = 128, repetitions: int = 3,
          seed: int = 0) -> tuple[list[BenchRow], Bounds]:
    """pp n_prompt and tg n_gen rows (a test of 0 tokens is left out) and the bounds measured with them."""
    rng = np.random.default_rng(seed)
    bounds = measure_bounds(model, repetitions)  # also places the weights and compiles a decode plan
    n_chunks = -(-n_prompt // model.context.n_batch)
    tests = [(f"pp{n_prompt}", n_prompt, 0, prefill_tps, bounds.weight_bytes * n_chunks / max(n_prompt, 1)),
             (f"tg{n_gen}", 0, n_gen, decode_tps, float(bounds.weight_bytes))]
    rows = []
    for name, n_p, n_g, measure, bytes_per_token in tests:
        if n_p + n_g == 0:
            continue
        measure(model, rng.integers(0, model.tokenizer.n_vocab, n_p + n_g).tolist())  # warm-up: compiles plans
        samples = [measure(model, rng.integers(0, model.tokenizer.n_vocab, n_p + n_g).tolist())
                   for _ in range(repetitions)]
        rows.append(BenchRow(name, n_p, n_g, samples, bytes_per_token, bounds))
    return rows, bounds
