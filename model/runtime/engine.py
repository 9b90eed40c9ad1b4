"""Engine: continuous batching over a paged KV cache. Requests wait in a bounded queue, are admitted while
slots and KV blocks allow, and step together: each step carries every running sequence's next token and a chunk
of the prompts not yet evaluated; each request yields its own events (with log-probabilities when asked).
Finished, cancelled and failed requests give their blocks back."""
from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pyggml.graph.errors import PyggmlError

from .batch import CacheLost, Entry
from .generation import TextPieces
from .grammar import Constraint, GrammarSpec, apply_mask
from .paged_cache import BLOCK_SIZE, SeqBlocks, common_prefix
from .sampling import Sampler, SamplingParams, log_softmax, sample_batch

if TYPE_CHECKING:
    from ..model import Model

PREFILL_CHUNK = 256  # prompt tokens evaluated per step, over all prefilling requests


class QueueFull(PyggmlError):
    """The engine's waiting queue is full."""


@dataclass
class TokenLogprob:
    """A sampled token's log-probability under the model, and the most likely tokens' (id, log-probability)."""
    token: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprob(logits: np.ndarray, token: int, n_top: int) -> TokenLogprob:
    """The log-probabilities of token and of the n_top most likely tokens, most likely first."""
    lp = log_softmax(logits)
    n_top = min(n_top, len(lp))
    best = np.argpartition(-lp, n_top - 1)[:n_top] if n_top else np.arange(0)
    best = best[np.argsort(-lp[best], kind="stable")]
    return TokenLogprob(token, float(lp[token]), [(int(i), float(lp[i])) for i in best])


@dataclass
class Event:
    """A request's progress: a token and the text it completes; the last event has a finish_reason."""
    token: int | None
    text: str = ""
    finish_reason: str | None = None  # "stop" (also a complete grammar), "length", "cancelled" or "error"
    error: str | None = None
    logprob: TokenLogprob | None = None  # when the request asked for log-probabilities


@dataclass
class Request:
    """A generation request: its prompt and settings; while it runs, its sequence, tokens and text."""
    prompt_ids: list[int]
    max_tokens: int
    sampler: Sampler
    pieces: TextPieces
    seq: SeqBlocks | None = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    logprobs: int | None = None  # None: no log-probabilities; else each token's and this many top ones
    constraint: Constraint | None = None  # the grammar its tokens must follow

    def cancel(self) -> None:
        """Ask the engine to stop this request and free its blocks (thread-safe)."""
        self.cancelled.set()

    def __iter__(self) -> Iterator[Event]:
        """Events as the engine produces them, up to the last one (needs the engine stepping elsewhere)."""
        while True:
            event = self.events.get()
            yield event
            if event.finish_reason:
                return

    @property
    def prefilled(self) -> bool:
        return self.seq is not None and self.seq.n_past >= len(self.prompt_ids)


class Engine:
    """Steps many requests together over one paged KV cache; `submit` is thread-safe, `step` runs one round."""

    def __init__(self, model: Model, n_parallel: int = 4, n_ctx: int | None = None, n_blocks: int | None = None,
                 block_size: int = BLOCK_SIZE, max_queue: int = 64):
        """An engine of n_parallel slots; max_queue requests may wait beyond the free slots (0: none)."""
        self.model, self.n_parallel, self.max_queue = model, n_parallel, max_queue
        self.n_ctx = n_ctx or model.n_ctx
        n_blocks = n_blocks or n_parallel * -(-self.n_ctx // block_size)
        self.batch = model.batch_context(n_blocks, block_size)
        self.cache = self.batch.cache
        self.prefix_queried = self.prefix_hits = 0  # prompt tokens looked up in the prefix cache, and found there
        self.waiting: collections.deque[Request] = collections.deque()
        self.active: list[Request] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._deadline: float | None = None  # when draining: the time.monotonic() at which running requests stop
        # called in the engine's thread after each step, once that step's events are put (a server hands them
        # to its event loop together: a wake-up per event cost a GIL hand-off per token)
        self.after_step: list[Callable[[], None]] = []

    def submit(self, prompt_ids: Sequence[int], max_tokens: int = 128, sampling: SamplingParams | None = None,
               stop: Sequence[str] = (), events=None, logprobs: int | None = None,
               grammar: GrammarSpec | None = None) -> Request:
        """Queue a request (its events go to `events`, anything with put(), or to its own queue; with logprobs,
        each token's event carries its log-probability and that many top ones; with a grammar, its tokens follow
        it); PyggmlError if it can never fit, GrammarError if the grammar does not compile, QueueFull if the
        queue is full."""
        if max_tokens < 1:
            raise PyggmlError(f"max_tokens must be at least 1, not {max_tokens}")
        if not prompt_ids or len(prompt_ids) >= self.n_ctx:
            raise PyggmlError(f"the prompt has {len(prompt_ids)} tokens; the context holds {self.n_ctx}")
        req = Request(list(prompt_ids), max_tokens, Sampler(sampling), TextPieces(self.model.tokenizer, stop))
        req.events = events if events is not None else req.events
        req.logprobs = logprobs
        req.constraint = self.model.constraint(grammar)
        if self._budget(req) > self.cache.n_blocks:
            raise PyggmlError(f"the request needs {self._budget(req)} KV blocks; "
                              f"the pool has {self.cache.n_blocks}")
        with self._wake:
            if self._deadline is not None:
                raise QueueFull("the engine is stopping")
            if len(self.waiting) >= self.max_queue + max(self.n_parallel - len(self.active), 0):
                raise QueueFull(f"{len(self.waiting)} requests are waiting already")
            req.timings["submitted"] = time.perf_counter()
            self.waiting.append(req)
            self._wake.notify()
        return req

    def _budget(self, req: Request) -> int:
        """Blocks the request may come to hold: its prompt and tokens, up to the context."""
        return -(-min(len(req.prompt_ids) + req.max_tokens, self.n_ctx) // self.cache.block_size)

    @property
    def busy(self) -> bool:
        """True while requests wait or run."""
        return bool(self.waiting or self.active)

    def run_until_idle(self) -> None:
        """Step in this thread until every request has finished."""
        while self.busy:
            self.step()

    def step(self) -> None:
        """One round: retire cancelled requests, admit waiting ones, then one step of every running sequence's next
        token and a chunk of the prompts not yet evaluated (one pass over the weights for both)."""
        for req in [r for r in self.active if r.cancelled.is_set()]:
            self._finish(req, "cancelled")
        self._admit()
        decode = [(r, Entry(r.seq, r.tokens[-1:])) for r in self.active if r.prefilled and r.tokens]
        work = decode + self._prefill_entries()
        if work:
            self._run(work)

    def _admit(self) -> None:
        """Drop cancelled waiting requests, then move waiting ones into the batch while slots and blocks allow,
        sharing a common prefix."""
        with self._wake:
            for req in [r for r in self.waiting if r.cancelled.is_set()]:  # even while every slot is taken
                self.waiting.remove(req)
                req.finish_reason = "cancelled"
                req.events.put(Event(None, finish_reason="cancelled"))
            while self.waiting and len(self.active) < self.n_parallel:
                req = self.waiting[0]
                if sum(map(self._budget, self.active)) + self._budget(req) > self.cache.n_blocks:
                    return  # the pool is full: the request waits
                if self._prefix_pending(req):
                    return  # admitted once the prefix it can share is evaluated (n choices of one prompt)
                self.waiting.popleft()
                req.seq = self.cache.new_sequence()
                self._share_prefix(req)
                self.active.append(req)

    def _prefix_pending(self, req: Request) -> bool:
        """Whether an active request is still evaluating at least a block of req's prompt, which req can share
        once it is evaluated instead of evaluating it again."""
        for r in self.active:
            if not r.prefilled:
                n = common_prefix(r.prompt_ids, req.prompt_ids[:-1])  # the last token is always evaluated
                if n >= self.cache.block_size and r.seq.n_past < n:
                    return True
        return False

    def _share_prefix(self, req: Request) -> None:
        """Take over the longest evaluated prefix of req's prompt: full blocks cached by any sequence, finished or
        running (automatic prefix caching), or a running sequence's blocks up to a partial one."""
        n, source = max(((self.cache.shareable(r.seq, req.prompt_ids), r) for r in self.active), default=(0, None),
                        key=lambda pair: pair[0])
        keys = self.cache.prefix_keys(req.prompt_ids)
        n_cached = self.cache.cached_blocks(keys)
        if n > n_cached * self.cache.block_size:
            self.cache.share_prefix(req.seq, source.seq, n)
        elif n_cached:
            self.cache.reuse_cached(req.seq, req.prompt_ids, keys, n_cached)
        self.prefix_queried += len(req.prompt_ids)
        self.prefix_hits += req.seq.n_past

    def _prefill_entries(self) -> list[tuple[Request, Entry]]:
        """Chunks of the prompts not yet evaluated, PREFILL_CHUNK tokens at most in all."""
        entries, budget = [], PREFILL_CHUNK
        for req in self.active:
            if budget > 0 and not req.prefilled:
                start = req.seq.n_past
                chunk = req.prompt_ids[start:start + budget]
                entries.append((req, Entry(req.seq, chunk, start + len(chunk) == len(req.prompt_ids))))
                budget -= len(chunk)
        return entries

    def _run(self, work: list[tuple[Request, Entry]]) -> None:
        """Evaluate entries in one step and sample the next token of each entry that wants logits (the grammar
        masks of the constrained ones computed meanwhile, in one call)."""
        constrained = [req for req, entry in work if entry.logits and req.constraint is not None]
        masks = self.model.grammars.start_masks([r.constraint for r in constrained]) if constrained else None
        try:
            logits = self.batch.step([entry for _, entry in work])
            bits = dict(zip(map(id, constrained), masks.result())) if masks else {}
        except Exception as exc:  # a failed step fails its requests (all when the K/V is lost); the engine goes on
            for req in list(self.active) if isinstance(exc, CacheLost) else [req for req, _ in work]:
                self._finish(req, "error", f"{type(exc).__name__}: {exc}")
            return
        wanted = [(req, row) for (req, _), row in zip(work, logits) if row is not None]
        try:
            tokens = sample_batch([req.sampler for req, _ in wanted],
                                  [apply_mask(row, bits[id(req)]) if id(req) in bits else row for req, row in wanted],
                                  [req.prompt_ids + req.tokens if req.sampler.penalized else () for req, _ in wanted])
        except Exception as exc:  # a failed draw fails the requests drawn in this step
            for req, _ in wanted:
                self._finish(req, "error", f"{type(exc).__name__}: {exc}")
            return
        for (req, row), token in zip(wanted, tokens):
            try:
                self._accept(req, token, row)
            except Exception as exc:
                self._finish(req, "error", f"{type(exc).__name__}: {exc}")

    def _accept(self, req: Request, token: int, logits: np.ndarray) -> None:
        """Record a sampled token, emit its text, and finish the request when it is done."""
        req.timings.setdefault("first_token", time.perf_counter())
        req.tokens.append(token)
        if req.constraint is not None:
            req.constraint.accept(token)
        piece = req.pieces.feed(token)
        req.text += piece
        logprob = None if req.logprobs is None else token_logprob(logits, token, req.logprobs)
        req.events.put(Event(token, piece, logprob=logprob))
        if req.pieces.finish_reason:
            self._finish(req, req.pieces.finish_reason)
        elif req.constraint is not None and req.constraint.done:  # the grammar is complete
            self._finish(req, "stop", text=req.pieces.flush())
        elif len(req.tokens) >= req.max_tokens or len(req.prompt_ids) + len(req.tokens) >= self.n_ctx:
            self._finish(req, "length", text=req.pieces.flush())

    def _finish(self, req: Request, reason: str, error: str | None = None, text: str = "") -> None:
        """Take a request out of the batch, give its blocks back, and send its last event."""
        self.active.remove(req)
        self.cache.release(req.seq)
        req.finish_reason, req.error = reason, error
        req.text += text
        req.timings["finished"] = time.perf_counter()
        req.events.put(Event(None, text, reason, error))

    def start(self) -> None:
        """Step in a background thread until `shutdown`."""
        self._thread = threading.Thread(target=self._loop, name="pyggml-engine", daemon=True)
        self._thread.start()

    def drain(self, grace: float) -> None:
        """Admit nothing more (submit raises QueueFull), cancel what waits, and cancel what runs once grace
        seconds have passed (thread-safe; for a graceful shutdown)."""
        with self._wake:
            self._deadline = time.monotonic() + grace
            for req in self.waiting:
                req.cancel()
            self._wake.notify()

    def _loop(self) -> None:
        while not self._stopping:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                for req in self.active:
                    req.cancel()
            with self._wake:
                if not self.busy:
                    self._wake.wait(0.1)
            if self.busy:
                try:
                    self.step()
                except Exception as exc:  # the engine goes on; what was running fails
                    for req in list(self.active):
                        self._finish(req, "error", f"{type(exc).__name__}: {exc}")
                self._stepped()

    def _stepped(self) -> None:
        for hook in self.after_step:
            hook()

    def shutdown(self) -> None:
        """Stop the background thread and cancel what is left."""
        self._stopping = True
        with self._wake:
            self._wake.notify()
        if self._thread:
            self._thread.join()
        for req in list(self.waiting) + self.active:
            req.cancel()
        self.step()
        self._stepped()
