"""Speed of a model in the spirit of llama-bench: prefill (pp) and decode (tg) tokens/s over repetitions, with
the weight bytes a decode token reads and the bare bounds of the same machine measured in the same run."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .profile import dense_weights, step_plan

if TYPE_CHECKING:
    from .model import Model

COPY_BYTES = 128 * 2**20  # the array np.copyto copies for the memory-bandwidth figure


@dataclass
class Bounds:
    """What bare NumPy reaches here: one token's F32 weight mat-vecs, and a large memory copy."""
    weight_bytes: int      # F32 bytes of the dense weights one decode token's mul_mats read
    n_matvecs: int
    matvec_seconds: float  # all of one token's mat-vecs, best of the repetitions
    copy_gbps: float       # np.copyto, bytes read plus bytes written per second

    @property
    def matvec_gbps(self) -> float:
        return self.weight_bytes / self.matvec_seconds / 1e9

    @property
    def matvec_tps(self) -> float:
        return 1.0 / self.matvec_seconds

    def to_dict(self) -> dict:
        return {"weight_bytes": self.weight_bytes, "n_matvecs": self.n_matvecs,
                "matvec_ms": self.matvec_seconds * 1e3, "matvec_tokens_per_second": self.matvec_tps,
                "matvec_gb_per_s": self.matvec_gbps, "copy_gb_per_s": self.copy_gbps}


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
        return {"test": self.test, "n_prompt": self.n_prompt, "n_gen": self.n_gen, "samples_ts": self.samples,
                "avg_ts": self.mean, "stddev_ts": self.std, "weight_bytes_per_token": self.weight_bytes_per_token,
                "gb_per_s": self.gbps, "ratio_matvec_bound": self.gbps / self.bounds.matvec_gbps,
                "ratio_copy_bandwidth": self.gbps / self.bounds.copy_gbps}


def best_seconds(fn: Callable[[], object], repetitions: int) -> float:
    """The fastest of some timed calls of fn."""
    best = math.inf
    for _ in range(max(repetitions, 1)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matvec_seconds(weights: list[np.ndarray], repetitions: int) -> float:
    """Time of one (1, K) vector times every weight, as the plan's mul_mat does it (np.matmul into out)."""
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
    """Compile a fresh decode step and measure the bare bounds of its weights on this machine's CPU (weights held
    on a device are measured on host copies)."""
    model.reset()
    plan = step_plan(model.context, [0])
    weights = [a if isinstance(a, np.ndarray) else plan.where[leaf].download(a)
               for leaf, a in dense_weights(plan).items()]
    return Bounds(sum(w.nbytes for w in weights), len(weights), matvec_seconds(weights, repetitions),
                  copy_gbps(repetitions))


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
    n_chunks = -(-n_prompt // model.context.cache.n_batch)
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
