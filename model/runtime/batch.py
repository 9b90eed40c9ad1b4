"""BatchContext: one forward step over several sequences of a paged KV cache, each row with its own position,
block table and mask; shapes are padded to buckets so each plan is compiled once and replayed."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pyggml.backends import BackendSpec, Plan, compile as compile_plan
from pyggml.graph.dtypes import DType
from pyggml.graph.errors import PyggmlError
from pyggml.graph.tensor import Tensor, input_tensor

from ..hparams import HParams
from .kv_cache import KV_PAD, additive_mask, causal_mask
from .step import StepInputs
from .paged_cache import PagedKVCache, SeqBlocks
from ..weights import Weights

GraphBuilder = Callable[[Weights, HParams, StepInputs, "PagedKVCache | None"], Tensor]
MAX_PLANS = 12
MASK_WASTE = 4  # a step reads each token's own rows (paged_attn) where the masked form would compute more than
# this many times the (token, own row) pairs: the masked form's BLAS products are about 5x faster per pair


def bucket(n: int, minimum: int = 1) -> int:
    """n rounded up to an eighth of its power of two (at least `minimum`): few shapes, under 25% padding."""
    power = 1 << max(0, n - 1).bit_length()
    step = max(minimum, power // 8)
    return max(minimum, -(-n // step) * step)


@dataclass
class Entry:
    """A sequence's part of a step: the tokens it appends and whether the last one's logits are wanted (or, with
    all_logits, every one's)."""
    seq: SeqBlocks
    tokens: list[int]
    logits: bool = True
    all_logits: bool = False

    @property
    def n_out(self) -> int:
        """Rows of logits wanted."""
        return len(self.tokens) if self.all_logits else int(self.logits)


@dataclass
class StepArrays:
    """A prepared step's inputs, all a context (or each pipeline stage) needs to run it: padded tokens,
    positions and logit rows, per cache kind the rows to write and what the rows read (paged: (T, L) rows; else
    gathered rows and a mask), and the copies on write (kind, from, to) to make first."""
    tokens: np.ndarray
    pos: np.ndarray
    out_ids: np.ndarray
    kinds: dict[int | None, tuple[np.ndarray, tuple[np.ndarray, ...]]]
    paged: bool
    copies: list[tuple[int | None, int, int]]


class CacheLost(PyggmlError):
    """The K/V rows of every sequence of a context were lost (a pipeline stage died and was rebuilt)."""


class BatchContext:
    """Evaluates steps over several sequences of a paged cache; plans are kept per padded shape."""

    def __init__(self, weights: Weights, hp: HParams, build: GraphBuilder, cache: PagedKVCache, backend: BackendSpec):
        self.weights, self.hp, self.build, self.cache, self.backend = weights, hp, build, cache, backend
        self._plans: OrderedDict[tuple, tuple[Plan, StepInputs]] = OrderedDict()
        self._copy_plans: dict[int | None, tuple[Plan, Tensor, Tensor]] = {}
        self.n_compiled = 0  # plans compiled so far (a step that compiles one takes longer)
        self.last_plan: Plan | None = None  # the latest step's plan (its last_profile after a profiled step)

    def step(self, entries: Sequence[Entry], profile: bool = False) -> list[np.ndarray | None]:
        """Append each entry's tokens to its sequence; the logits of each entry's last token (if wanted; of every
        token, (n, n_vocab), with all_logits); profile: time each node (in the plan's last_profile)."""
        arrays, out_rows = self.prepare(entries)
        logits = self.execute(arrays, profile=profile)
        for entry in entries:
            self.cache.commit(entry.seq, list(entry.tokens))
        return [logits[out_rows[i]] if i in out_rows else None for i in range(len(entries))]

    def prepare(self, entries: Sequence[Entry]) -> tuple[StepArrays, dict[int, int | slice]]:
        """The host side of a step: blocks reserved for each entry's tokens, the step's input arrays, and
        entry -> logits row(s)."""
        copies = [copy for entry in entries for copy in self.cache.reserve(entry.seq, len(entry.tokens))]
        tokens, pos, out_ids, out_rows, spans = self._rows(entries)
        paged = self._paged(entries)
        kinds = {w: self._kind_inputs(entries, spans, pos, w, paged) for w in self.cache.pools}
        return StepArrays(tokens, pos, out_ids, kinds, paged, copies), out_rows

    def execute(self, step: StepArrays, hidden: np.ndarray | None = None, profile: bool = False) -> np.ndarray:
        """Run a prepared step over this context's K/V: its block copies, then the plan of its shape; the logits
        (or a pipeline stage's hidden states out, given the previous stage's as `hidden`)."""
        for w, src, dst in step.copies:
            self._copy_block(w, src, dst)
        n_kv = tuple((w, read[-1].shape[-1], len(read) > 1) for w, (_, read) in step.kinds.items())
        plan, inp = self._plan(len(step.tokens), len(step.out_ids), n_kv, step.paged)
        values = {inp.tokens: step.tokens, inp.pos: step.pos, inp.out_ids: step.out_ids}
        if inp.hidden is not None:
            values[inp.hidden] = hidden
        for w, (idx, read) in step.kinds.items():
            gathered = (inp.kv_gather[w],) if len(read) > 1 else ()
            names = (inp.kv_rows[w],) if step.paged else gathered + (inp.kq_mask[w],)
            values.update(zip((inp.kv_idx[w], *names), (idx, *read)))
        self.last_plan = plan  # a pipeline stage's plan reads only some inputs (the first no out_ids, ...)
        return plan.run({t: v for t, v in values.items() if t in plan.inputs}, profile=profile)[0]

    def uncached(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Logits (of the last token, or of every one) of a whole sequence recomputed from scratch without the KV
        cache (the baseline): the graph built with no cache, compiled for this call."""
        n, n_out = len(tokens), len(tokens) if all_logits else 1
        positions = np.arange(n, dtype=np.int64)
        inp = StepInputs.create(n, n_out, dict.fromkeys(self.cache.pools, n))
        plan = compile_plan(self.build(self.weights, self.hp, inp, None), self.backend)
        values = {inp.tokens: np.asarray(tokens, np.int32), inp.pos: positions.astype(np.int32),
                  inp.out_ids: np.arange(n - n_out, n, dtype=np.int32)}
        values.update({inp.kq_mask[w]: causal_mask(positions, w) for w in self.cache.pools})
        return plan.run(values)[0]

    @staticmethod
    def _paged(entries: Sequence[Entry]) -> bool:
        """Whether each token reads only its own sequence's rows (paged_attn) rather than every sequence's rows
        under a mask: in a decode step of several sequences (one token each), and where the mask would cover more
        than MASK_WASTE times the pairs each token's own sequence holds (a prompt chunk next to long sequences).
        One sequence alone is masked: its mask covers only its own rows, and the masked form fuses."""
        if len(entries) > 1 and all(len(e.tokens) == 1 for e in entries):
            return True
        held = [e.seq.n_past + len(e.tokens) for e in entries]
        own = sum(len(e.tokens) * n for e, n in zip(entries, held))
        return sum(len(e.tokens) for e in entries) * sum(held) > MASK_WASTE * own

    @staticmethod
    def _rows(entries: Sequence[Entry]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, int | slice], list]:
        """Padded tokens and positions, padded output rows, entry -> logits row(s), and each entry's span of rows.
        Padding rows repeat the last row (the same token written to the same cache row), so they need no row of
        their own."""
        n_tok = bucket(sum(len(e.tokens) for e in entries))
        tokens, pos = np.zeros(n_tok, np.int32), np.zeros(n_tok, np.int32)
        out_ids = np.zeros(bucket(sum(e.n_out for e in entries)), np.int32)
        out_rows, spans, start, n_out = {}, [], 0, 0
        for i, e in enumerate(entries):
            end = start + len(e.tokens)
            tokens[start:end] = e.tokens
            pos[start:end] = np.arange(e.seq.n_past, e.seq.n_past + len(e.tokens))
            if e.n_out:
                out_ids[n_out:n_out + e.n_out] = np.arange(end - e.n_out, end)
                out_rows[i] = slice(n_out, n_out + e.n_out) if e.all_logits else n_out
                n_out += e.n_out
            spans.append((start, end))
            start = end
        tokens[start:], pos[start:] = tokens[start - 1], pos[start - 1]
        return tokens, pos, out_ids, out_rows, spans

    def _kind_inputs(self, entries: Sequence[Entry], spans: list[tuple[int, int]], pos: np.ndarray,
                     w: int | None, paged: bool) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Rows to write (T,) of kind w, and what the rows read: each row sees its own sequence's positions,
        causally and within the window. Paged: (the rows each token reads (T, L), -1 where none,); else the
        rows gathered for all (n_kv,) and the mask (T, n_kv)."""
        idx = np.empty(len(pos), np.int64)
        parts = []
        for e, (lo, hi) in zip(entries, spans):
            rows, cols = self.cache.gather(e.seq, w)
            p = pos[lo:hi]
            idx[lo:hi] = self.cache.rows(e.seq, w, p.astype(np.int64))
            seen = cols[None, :] <= p[:, None]
            if w is not None:
                seen &= p[:, None] - cols[None, :] < w
            parts.append((rows, seen))
        idx[spans[-1][1]:] = idx[spans[-1][1] - 1]  # padding rows write and read as the last row does
        return idx, (self._own_rows if paged else self._shared_rows)(len(pos), spans, parts, self.cache.pool_rows(w))

    @staticmethod
    def _padded(n: int, pool_rows: int) -> int:
        """An attended length of n rows padded to a bucket, but not beyond the pool's rows (when n is within)."""
        return max(n, min(bucket(n, KV_PAD), pool_rows))

    def _own_rows(self, n_tok: int, spans: list[tuple[int, int]], parts: list, pool_rows: int) -> tuple[np.ndarray]:
        """((T, L) I32,): the rows each token sees, -1 padded."""
        read = np.full((n_tok, self._padded(max(len(rows) for rows, _ in parts), pool_rows)), -1, np.int32)
        for (lo, hi), (rows, seen) in zip(spans, parts):
            read[lo:hi, :len(rows)] = np.where(seen, rows, -1)
        read[spans[-1][1]:] = read[spans[-1][1] - 1]
        return (read,)

    def _shared_rows(self, n_tok: int, spans: list[tuple[int, int]], parts: list,
                     pool_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Every sequence's rows gathered once (n_kv,) and the mask (T, n_kv) that gives each row its own; or only
        the mask when one sequence holds the first rows in order (its blocks handed out lowest first), which
        attention reads as a view of the store, gathering nothing."""
        n_kv = self._padded(sum(len(rows) for rows, _ in parts), pool_rows)
        gather = np.zeros(n_kv, np.int32)  # unused columns read row 0, masked out
        visible = np.zeros((n_tok, n_kv), bool)
        col = 0
        for (lo, hi), (rows, seen) in zip(spans, parts):
            gather[col:col + len(rows)] = rows
            visible[lo:hi, col:col + len(rows)] = seen
            col += len(rows)
        visible[spans[-1][1]:] = visible[spans[-1][1] - 1]
        in_place = len(parts) == 1 and np.array_equal(parts[0][0], np.arange(len(parts[0][0])))
        return (additive_mask(visible),) if in_place else (gather, additive_mask(visible))

    def _plan(self, n_tok: int, n_out: int, n_kv: tuple, paged: bool) -> tuple[Plan, StepInputs]:
        """The plan of a padded shape (per kind: its attended length and whether its rows are gathered), compiled
        on first use; the least recently used ones are dropped."""
        key = (n_tok, n_out, n_kv, paged)
        if key in self._plans:
            self._plans.move_to_end(key)
        else:
            inp = StepInputs.create(n_tok, n_out, {w: n for w, n, _ in n_kv}, paged)
            if not paged:
                inp.kv_gather = {w: input_tensor((n,), DType.I32, f"inp_kv_gather_{w or 'full'}")
                                 for w, n, gathered in n_kv if gathered}
            self._plans[key] = (compile_plan(self.build(self.weights, self.hp, inp, self.cache), self.backend), inp)
            self.n_compiled += 1
            if len(self._plans) > MAX_PLANS:
                self._plans.popitem(last=False)
        return self._plans[key]

    def _copy_block(self, w: int | None, src: int, dst: int) -> None:
        """Copy one block's K/V rows in every layer of kind w (copy on write of a shared block)."""
        if w not in self._copy_plans:
            bs = self.cache.block_size
            src_t, dst_t = input_tensor((bs,), DType.I32, "copy_src"), input_tensor((bs,), DType.I64, "copy_dst")
            self._copy_plans[w] = (compile_plan(self.cache.copy_graph(w, src_t, dst_t), self.backend), src_t, dst_t)
        plan, src_t, dst_t = self._copy_plans[w]
        offsets = np.arange(self.cache.block_size)
        plan.run({src_t: src * self.cache.block_size + offsets, dst_t: dst * self.cache.block_size + offsets})
