"""SequenceContext: one sequence over a BatchContext's paged cache (llama_context for one sequence): prefill in
chunks, decode a token a step, the cached prefix reused; in one process or through pipeline stages."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pyggml.backends import Plan
from pyggml.graph.errors import PyggmlError

from .batch import BatchContext, CacheLost, Entry
from .stages import StageFailed


class SequenceContext:
    """One sequence of n_ctx tokens at most, evaluated in chunks of n_batch through a BatchContext."""

    def __init__(self, batch: BatchContext, n_ctx: int, n_batch: int):
        self.batch, self.cache, self.n_ctx, self.n_batch = batch, batch.cache, n_ctx, n_batch
        self.backend = batch.backend
        self.seq = self.cache.new_sequence()
        self.prefix_queried = self.prefix_hits = 0  # prompt tokens eval_prompt was given, and found in the cache

    @property
    def tokens(self) -> list[int]:
        return self.seq.tokens

    @property
    def n_past(self) -> int:
        return self.seq.n_past

    @property
    def last_plan(self) -> Plan | None:
        """The plan of the latest step (for profiling and benchmarks; None when the stages ran it)."""
        return self.batch.last_plan

    def truncate(self, n: int) -> None:
        """Keep the first n tokens (their blocks shared into a new sequence, the old one released)."""
        if n >= self.n_past:
            return
        if n and self.cache.shareable(self.seq, self.tokens[:n + 1]) < n:
            raise PyggmlError(f"the first {n} tokens cannot be kept: the sliding-window layers no longer hold "
                              "the rows the next token sees")
        seq = self.cache.new_sequence()
        if n:
            self.cache.share_prefix(seq, self.seq, n)
        self.cache.release(self.seq)
        self.seq = seq

    def reset(self) -> None:
        """Start a new sequence."""
        self.truncate(0)

    def eval_prompt(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits (1, n_vocab) of the last prompt token, evaluating only what the sequence does not hold (the longest
        common prefix, as llama-cpp-python); when a stage rebuilt since lost the K/V, the whole prompt again (a
        stage that dies in this step fails it)."""
        keep = self.cache.shareable(self.seq, list(tokens))
        self.truncate(keep)
        self.prefix_queried += len(tokens)
        self.prefix_hits += keep
        try:
            return self.eval(tokens[keep:])
        except StageFailed:
            self.reset()
            raise
        except CacheLost:
            self.reset()
            return self.eval(tokens)

    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append tokens; logits (1, n_vocab) of the last one, or (n, n_vocab) of every one."""
        if len(tokens) == 0:
            raise PyggmlError("eval needs at least one token")
        if self.n_past + len(tokens) > self.n_ctx:
            raise PyggmlError(f"{self.n_past + len(tokens)} tokens do not fit in the context of {self.n_ctx}")
        outs, start = [], 0
        while start < len(tokens):
            end = start + self._chunk(len(tokens) - start)
            out = self.batch.step([Entry(self.seq, list(tokens[start:end]), all_logits=all_logits)])[0]
            outs.append(out if all_logits else out[None, :])
            start = end
        return np.concatenate(outs) if all_logits else outs[-1]

    def _chunk(self, n_left: int) -> int:
        """Tokens of the next step: n_batch at most; over a ring (sliding-window layers holding a window, not the
        context) a step that crosses a block boundary ends at one, which keeps it within the ring's blocks."""
        n = min(n_left, self.n_batch)
        bs = self.cache.block_size
        boundary = (self.n_past + n) // bs * bs
        return boundary - self.n_past if self.cache.ring and boundary > self.n_past else n

    def eval_uncached(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Logits of a whole sequence recomputed from scratch, without the KV cache (the baseline)."""
        return self.batch.uncached(tokens, all_logits)
