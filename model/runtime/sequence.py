"""SequenceContext: Context's one-sequence interface (eval, eval_prompt, truncate) over a BatchContext's paged
cache, for a model whose layers run as pipeline stages."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pyggml.graph.errors import PyggmlError

from .batch import BatchContext, CacheLost, Entry
from .paged_cache import common_prefix
from .stages import StageFailed


class SequenceContext:
    """One sequence of n_ctx tokens at most, evaluated in chunks of n_batch through a BatchContext."""

    def __init__(self, batch: BatchContext, n_ctx: int, n_batch: int):
        self.batch, self.cache, self.n_ctx, self.n_batch = batch, batch.cache, n_ctx, n_batch
        self.seq = self.cache.new_sequence()
        self.last_plan = None  # the plans run in the stages

    @property
    def tokens(self) -> list[int]:
        return self.seq.tokens

    @property
    def n_past(self) -> int:
        return self.seq.n_past

    def truncate(self, n: int) -> None:
        """Keep the first n tokens (their blocks shared into a new sequence, the old one released)."""
        if n >= self.n_past:
            return
        seq = self.cache.new_sequence()
        if n:
            self.cache.share_prefix(seq, self.seq, n)
        self.cache.release(self.seq)
        self.seq = seq

    def reset(self) -> None:
        self.truncate(0)

    def eval_prompt(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits (1, n_vocab) of the last prompt token, evaluating only what the sequence does not hold; when
        a stage rebuilt since lost the K/V, the whole prompt again (a stage that dies in this step fails it)."""
        self.truncate(common_prefix(self.tokens, tokens[:-1]))
        try:
            return self.eval(tokens[self.n_past:])
        except StageFailed:
            self.reset()
            raise
        except CacheLost:
            self.reset()
            return self.eval(tokens)

    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append tokens; logits (1, n_vocab) of the last one."""
        if all_logits:
            raise PyggmlError("all_logits is not available when the model runs as pipeline stages")
        if len(tokens) == 0:
            raise PyggmlError("eval needs at least one token")
        if self.n_past + len(tokens) > self.n_ctx:
            raise PyggmlError(f"{self.n_past + len(tokens)} tokens do not fit in the context of {self.n_ctx}")
        for start in range(0, len(tokens), self.n_batch):
            row = self.batch.step([Entry(self.seq, list(tokens[start:start + self.n_batch]))])[0]
        return row[None, :]

    def eval_uncached(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        raise PyggmlError("kv_cache=False is not available when the model runs as pipeline stages")
