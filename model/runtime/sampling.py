"""The sampler chain, in llama.cpp's order: logit bias, penalties, top-k, top-p, min-p, temperature, then a draw."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SamplingParams:
    """llama.cpp's sampling settings; temperature <= 0 means greedy."""
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit (-100: banned)


TOP_P_FIRST = 64  # candidates top_p looks at first


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p of each token under the model's distribution."""
    z = logits.astype(np.float64) - logits.max()
    return z - np.log(np.exp(z).sum())


def apply_logit_bias(logits: np.ndarray, bias: dict[int, float]) -> np.ndarray:
    """logits with each biased token's bias added."""
    if not bias:
        return logits
    out = logits.copy()
    ids = np.fromiter(bias, np.int64, len(bias))
    out[ids] += np.fromiter(bias.values(), np.float32, len(bias))
    return out


def apply_penalties(logits: np.ndarray, history: Sequence[int], p: SamplingParams) -> np.ndarray:
    """Repetition (divide positive / multiply negative logits), frequency and presence penalties."""
    recent = list(history)[-p.repeat_last_n:] if p.repeat_last_n > 0 else []
    if not recent or (p.repeat_penalty == 1.0 and not p.frequency_penalty and not p.presence_penalty):
        return logits
    ids, counts = np.unique(np.asarray(recent, np.int64), return_counts=True)
    out = logits.copy()
    seen = out[ids]
    seen = np.where(seen > 0, seen / p.repeat_penalty, seen * p.repeat_penalty)
    out[ids] = seen - counts * p.frequency_penalty - p.presence_penalty
    return out


def top_k(ids: np.ndarray, logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k largest logits, sorted descending (k <= 0 keeps all, in their order: sorting a whole
    vocabulary took 5 ms a token)."""
    if not 0 < k < len(logits):
        return ids, logits
    keep = np.argpartition(-logits, k - 1)[:k]
    order = np.argsort(-logits[keep], kind="stable")
    return ids[keep][order], logits[keep][order]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max())
    return e / e.sum()


def top_p(ids: np.ndarray, logits: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the smallest set of most probable tokens whose probability reaches p (at least one), sorted
    descending. Found among the k most probable for k = 64, 512, ...: the whole vocabulary is sorted only when
    the set needs it."""
    if p >= 1.0:
        return ids, logits
    probs, k = softmax(logits), min(TOP_P_FIRST, len(logits))
    while True:
        best = np.argpartition(-probs, k - 1)[:k] if k < len(probs) else np.arange(len(probs))
        best = best[np.argsort(-probs[best], kind="stable")]
        cum = np.cumsum(probs[best])
        if cum[-1] >= p or k == len(probs):
            keep = best[:min(int(np.searchsorted(cum, p)) + 1, k)]
            return ids[keep], logits[keep]
        k = min(8 * k, len(probs))


def min_p(ids: np.ndarray, logits: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep tokens whose probability is at least p times the largest one."""
    if p <= 0.0:
        return ids, logits
    keep = logits >= logits.max() + np.log(p)
    return ids[keep], logits[keep]


class Sampler:
    """Draws the next token from logits; seeded runs are reproducible."""

    def __init__(self, params: SamplingParams | None = None):
        self.params = params or SamplingParams()
        self.rng = np.random.default_rng(self.params.seed)

    @property
    def penalized(self) -> bool:
        """Whether the draw depends on the history (a penalty is on)."""
        p = self.params
        return p.repeat_last_n > 0 and (p.repeat_penalty != 1.0 or bool(p.frequency_penalty or p.presence_penalty))

    def keeps_all(self, n_vocab: int) -> bool:
        """Whether a draw at a temperature keeps the whole vocabulary (no top-k, top-p or min-p cut)."""
        p = self.params
        return p.temperature > 0 and not 0 < p.top_k < n_vocab and p.top_p >= 1.0 and p.min_p <= 0.0

    def adjusted(self, logits: np.ndarray, history: Sequence[int] = ()) -> np.ndarray:
        """float32 logits after the logit bias and the penalties."""
        p = self.params
        return apply_penalties(apply_logit_bias(np.asarray(logits, np.float32), p.logit_bias), history, p)

    def candidates(self, logits: np.ndarray, history: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The surviving (ids, probabilities) after the whole chain, before the draw."""
        return self._survivors(self.adjusted(logits, history))

    def _survivors(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        if p.temperature <= 0:
            best = int(np.argmax(logits))
            return np.array([best]), np.array([1.0])
        ids, cand = top_k(np.arange(len(logits)), logits, p.top_k)
        ids, cand = top_p(ids, cand, p.top_p)
        ids, cand = min_p(ids, cand, p.min_p)
        return ids, softmax(cand / p.temperature)

    def draw(self, cum: np.ndarray) -> int:
        """The index a uniform draw picks by the inverse of the cumulative weights cum (no draw for one)."""
        if len(cum) == 1:
            return 0
        return min(int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right")), len(cum) - 1)

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """The next token id."""
        return sample_batch([self], [logits], [history])[0]


def sample_batch(samplers: Sequence[Sampler], logits: np.ndarray | Sequence[np.ndarray],
                 histories: Sequence[Sequence[int]]) -> list[int]:
    """The next token of each row of logits under its own sampler (and history), each drawn from its sampler's
    generator as sample() does. A row that keeps the whole vocabulary goes through softmax and cumsum in two
    buffers reused from row to row: row by row, as a whole batch of float64 rows outgrows the L2 cache (twice as
    slow), and in place, as a fresh vocabulary-sized array each pass costs page faults."""
    if not samplers:
        return []
    n_vocab = len(logits[0])
    scaled, cum = np.empty(n_vocab, np.float32), np.empty(n_vocab, np.float64)
    tokens = []
    for sampler, row, history in zip(samplers, logits, histories):
        row = sampler.adjusted(row, history)
        if not sampler.keeps_all(n_vocab):
            ids, probs = sampler._survivors(row)
            tokens.append(int(ids[sampler.draw(np.cumsum(probs))]))
            continue
        np.divide(row, np.float32(sampler.params.temperature), out=scaled)  # softmax(logits / temperature)
        np.subtract(scaled, scaled.max(), out=cum, dtype=np.float64)
        np.exp(cum, out=cum)
        cum /= cum.sum()
        tokens.append(sampler.draw(np.cumsum(cum, out=cum)))
    return tokens
