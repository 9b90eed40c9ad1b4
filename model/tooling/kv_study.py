"""The KV-cache study: the same greedy tokens generated with the cache (one new token per step) and without it
(the whole sequence recomputed per step), per-step time against position, fits of both curves, the totals."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.polynomial import polynomial

from pyggml.graph.dtypes import DType
from pyggml.graph.errors import PyggmlError

from ..hparams import HParams

if TYPE_CHECKING:
    from ..model import Model

CHECKPOINTS = (128, 256, 512)
MIN_TOKENS = 4  # three decode steps at least, for the quadratic fit
# curve -> degree of the polynomial in position fitted to its per-step times
FIT_DEGREES = {"cached": 1, "uncached": 2}
STALL_SPREADS, STALL_ROUNDS = 5.0, 3  # a step over 5 robust deviations above the fit is a stall, not growth
Step = Callable[[list[int], list[int]], np.ndarray]  # (whole sequence, tokens new to this step) -> logits
Progress = Callable[[str, int, int], None]


@dataclass
class Fit:
    """Least-squares polynomial of per-step seconds in position: coefficients a, b, (c), R², and how many steps
    were left out as stalls (far slower than the fit: another process had the CPU)."""
    coefficients: list[float]
    r2: float
    n_left_out: int = 0

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray, degree: int) -> Fit:
        """Fit, leave out the steps far above the fit, and fit the rest again (a few rounds)."""
        keep = np.ones(len(x), bool)
        for _ in range(STALL_ROUNDS):
            coef = polynomial.polyfit(x[keep], y[keep], degree)
            residual = y - polynomial.polyval(x, coef)
            centre = np.median(residual[keep])
            spread = 1.4826 * np.median(np.abs(residual[keep] - centre))  # a robust standard deviation
            keep = residual <= centre + STALL_SPREADS * spread if spread > 0 else keep
        coef = polynomial.polyfit(x[keep], y[keep], degree)
        residual, kept = y[keep] - polynomial.polyval(x[keep], coef), y[keep]
        total = float(np.sum((kept - kept.mean()) ** 2))
        r2 = 1.0 - float(np.sum(residual ** 2)) / total if total else 1.0
        return cls([float(c) for c in coef], r2, int(len(x) - keep.sum()))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return polynomial.polyval(x, self.coefficients)

    def to_dict(self) -> dict:
        return {"a": self.coefficients[0], "b": self.coefficients[1],
                **({"c": self.coefficients[2]} if len(self.coefficients) > 2 else {}), "r2": self.r2,
                "n_left_out": self.n_left_out}


@dataclass
class KVStudy:
    """Per-step seconds and tokens of both runs; step k produces token k, step 0 evaluates the prompt."""
    n_prompt: int
    tokens: dict[str, list[int]]     # curve -> generated tokens
    seconds: dict[str, list[float]]  # curve -> seconds per step

    @property
    def identical(self) -> bool:
        return self.tokens["cached"] == self.tokens["uncached"]

    @property
    def positions(self) -> np.ndarray:
        """Position of the last token each decode step (k >= 1) evaluates."""
        return self.n_prompt - 1 + np.arange(1, len(self.tokens["cached"]))

    def fit(self, curve: str) -> Fit:
        """The fit of a curve's decode steps against position."""
        return Fit.of(self.positions.astype(np.float64), np.asarray(self.seconds[curve][1:]), FIT_DEGREES[curve])

    def total(self, curve: str, n: int | None = None) -> float:
        """Seconds to generate the first n tokens (all by default), prompt included."""
        return float(sum(self.seconds[curve][:n]))

    def speedups(self) -> dict[int, float]:
        """Time without the cache over time with it, after each checkpoint the run reaches, and at its end."""
        ends = [n for n in CHECKPOINTS if n < len(self.tokens["cached"])] + [len(self.tokens["cached"])]
        return {n: self.total("uncached", n) / self.total("cached", n) for n in ends}

    def to_dict(self) -> dict:
        return {"n_prompt": self.n_prompt, "n_tokens": len(self.tokens["cached"]), "identical": self.identical,
                "tokens": self.tokens, "positions": self.positions.tolist(),
                "curves": {c: {"step_ms": [s * 1e3 for s in self.seconds[c]], "total_s": self.total(c),
                               "fit": self.fit(c).to_dict()} for c in FIT_DEGREES},
                "speedups": [{"tokens": n, "speedup": s} for n, s in self.speedups().items()]}


def greedy(step: Step, prompt: Sequence[int], n: int, curve: str, progress: Progress | None) -> tuple[list, list]:
    """n greedy tokens and the seconds of each step."""
    sequence, new, tokens, seconds = list(prompt), list(prompt), [], []
    for k in range(n):
        t0 = time.perf_counter()
        logits = step(sequence, new)
        seconds.append(time.perf_counter() - t0)
        new = [int(np.argmax(logits[-1]))]
        tokens.append(new[0])
        sequence += new
        if progress:
            progress(curve, k + 1, n)
    return tokens, seconds


def kv_study(model: Model, prompt: Sequence[int], n: int, progress: Progress | None = None) -> KVStudy:
    """Generate n tokens greedily after prompt with and without the KV cache (end-of-generation ignored)."""
    if n < MIN_TOKENS:
        raise PyggmlError(f"the KV-cache study needs at least {MIN_TOKENS} tokens to fit its curves, not {n}")
    if len(prompt) + n > model.n_ctx:
        raise PyggmlError(f"{len(prompt)} prompt tokens + {n} do not fit in the context of {model.n_ctx} (use -c)")
    ctx = model.context
    steps: dict[str, Step] = {"cached": lambda seq, new: ctx.eval(new),
                              "uncached": lambda seq, new: ctx.eval_uncached(seq)}
    model.reset()
    greedy(steps["cached"], prompt, n, "warm-up", progress)  # compiles the decode plan of every padded length
    tokens, seconds = {}, {}
    for curve, step in steps.items():
        model.reset()
        tokens[curve], seconds[curve] = greedy(step, prompt, n, curve, progress)
    return KVStudy(len(prompt), tokens, seconds)


def kv_bytes_per_token(hp: HParams, type_k: DType, type_v: DType) -> dict[str, tuple[int, int]]:
    """KV-cache bytes per token, n_layer x n_kv_head x (a K row + a V row of a head), under MHA, GQA (the model's)
    and MQA: name -> (n_kv_head, bytes)."""
    heads = {"MHA": hp.n_head, "GQA": hp.n_head_kv, "MQA": 1}
    return {name: (h, hp.kv_bytes_per_token(type_k, type_v, h)) for name, h in heads.items()}


def plot(study: KVStudy, path: str, title: str) -> bool:
    """Draw per-step time against position and cumulative time as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    x = study.positions
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for curve, color in zip(FIT_DEGREES, ("tab:blue", "tab:red")):
        fit = study.fit(curve)
        terms = " + ".join(f"{c * 1e3:.3g}" + ("", "·p", "·p²")[i] for i, c in enumerate(fit.coefficients))
        left.plot(x, np.asarray(study.seconds[curve][1:]) * 1e3, ".", ms=2, color=color,
                  label=f"{'with' if curve == 'cached' else 'without'} KV cache")
        left.plot(x, fit(x) * 1e3, "-", lw=1, color=color, label=f"fit {terms} ms ({fit.n_left_out} stalls left out)")
        right.plot(np.arange(1, len(x) + 2), np.cumsum(study.seconds[curve]), color=color,
                   label=f"{'with' if curve == 'cached' else 'without'} cache: {study.total(curve):.1f} s")
    left.set(xlabel="position p", ylabel="ms per step", title="time of one step")
    right.set(xlabel="tokens generated", ylabel="seconds", title="cumulative time")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
