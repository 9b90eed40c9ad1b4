"""Context: runs forward steps of a model over its KV cache, compiling each step shape once (llama_context)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pyggml.backends import BackendSpec, Plan, compile as compile_plan
from pyggml.graph.errors import PyggmlError
from pyggml.graph.tensor import Tensor

from ..hparams import HParams
from .kv_cache import KVCache, causal_mask
from .step import StepInputs
from .paged_cache import common_prefix
from ..weights import Weights

MAX_BATCH_PLANS = 2
GraphBuilder = Callable[[Weights, HParams, StepInputs, "KVCache | None"], Tensor]


class Context:
    """Evaluates token batches: prefill in chunks of n_batch, decode one token at a time, plans reused."""

    def __init__(self, weights: Weights, hp: HParams, build: GraphBuilder, cache: KVCache, backend: BackendSpec):
        self.weights, self.hp, self.build, self.cache, self.backend = weights, hp, build, cache, backend
        self._plans: dict[tuple, tuple[Plan, StepInputs]] = {}
        self.tokens: list[int] = []  # the sequence held in the cache
        self.prefix_queried = self.prefix_hits = 0  # prompt tokens eval_prompt was given, and found in the cache
        self.last_plan: Plan | None = None  # the plan of the latest step (for profiling and benchmarks)

    @property
    def n_ctx(self) -> int:
        return self.cache.n_ctx

    @property
    def n_batch(self) -> int:
        return self.cache.n_batch

    @property
    def n_past(self) -> int:
        return self.cache.n_past

    def truncate(self, n: int) -> None:
        """Keep the first n tokens of the cached sequence."""
        self.cache.truncate(n)
        del self.tokens[n:]

    def reset(self) -> None:
        """Start a new sequence (the cache's rows are masked out, not freed)."""
        self.truncate(0)

    def eval_prompt(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits of the last prompt token, evaluating only what the cache does not already hold (the longest common
        prefix with the cached sequence, as llama-cpp-python)."""
        keep = common_prefix(self.tokens, tokens[:-1])
        self.truncate(keep)
        self.prefix_queried += len(tokens)
        self.prefix_hits += keep
        return self.eval(tokens[keep:])

    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append tokens to the sequence; logits (n, n_vocab) of the last token, or of every token."""
        if len(tokens) == 0:
            raise PyggmlError("eval needs at least one token")
        self.cache.check_room(len(tokens))
        outs = [self._step(np.asarray(tokens[start:start + self.cache.n_batch], np.int32), all_logits)
                for start in range(0, len(tokens), self.cache.n_batch)]
        return np.concatenate(outs) if all_logits else outs[-1]

    def _step(self, tokens: np.ndarray, all_rows: bool) -> np.ndarray:
        positions = np.arange(self.cache.n_past, self.cache.n_past + len(tokens), dtype=np.int64)
        kinds = self.cache.step_inputs(positions)
        n_out = len(tokens) if all_rows else 1
        key = (len(tokens), n_out) + tuple((w, mask.shape[1]) for w, (_, mask) in kinds.items())
        if key not in self._plans:
            self._evict_batch_plans()
            inp = StepInputs.create(len(tokens), n_out, {w: mask.shape[1] for w, (_, mask) in kinds.items()})
            self._plans[key] = (compile_plan(self.build(self.weights, self.hp, inp, self.cache), self.backend), inp)
        plan, inp = self._plans[key]
        self.last_plan = plan
        values = {inp.tokens: tokens, inp.pos: positions.astype(np.int32),
                  inp.out_ids: np.arange(len(tokens) - n_out, len(tokens), dtype=np.int32)}
        for w, (rows, mask) in kinds.items():
            values[inp.kv_idx[w]], values[inp.kq_mask[w]] = rows, mask
        logits = plan.run(values)[0]
        self.cache.commit(positions)
        self.tokens += tokens.tolist()
        return logits

    def _evict_batch_plans(self) -> None:
        """Keep every decode plan but only the newest few prefill plans (each holds an arena)."""
        batch_keys = [k for k in self._plans if k[0] > 1]
        for k in batch_keys[:max(0, len(batch_keys) - MAX_BATCH_PLANS + 1)]:
            del self._plans[k]

    def eval_uncached(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Logits of a whole sequence recomputed from scratch, without a KV cache (the baseline)."""
        n = len(tokens)
        positions = np.arange(n, dtype=np.int64)
        windows = dict.fromkeys(self.cache.kinds)
        n_out = n if all_logits else 1
        inp = StepInputs.create(n, n_out, {w: n for w in windows})
        plan = compile_plan(self.build(self.weights, self.hp, inp, None), self.backend)
        values = {inp.tokens: np.asarray(tokens, np.int32), inp.pos: positions.astype(np.int32),
                  inp.out_ids: np.arange(n - n_out, n, dtype=np.int32)}
        for w in windows:
            values[inp.kq_mask[w]] = causal_mask(positions, w)
        return plan.run(values)[0]
