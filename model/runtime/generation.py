"""Text streaming over generated tokens: whole UTF-8 characters only, stop strings held back and cut."""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

from .grammar import Constraint
from ..tokenizers.tokenizer import StreamDecoder


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that could be the start of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class TextPieces:
    """Turns generated tokens into text pieces: whole UTF-8 characters only, stop strings held back and cut;
    `finish_reason` becomes "stop" at an end-of-generation token or a stop string."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.decoder, self.pending, self.finish_reason = StreamDecoder(tokenizer), "", None

    def feed(self, token: int) -> str:
        """The text that can be shown after this token ("" while held back or after the end)."""
        if self.tokenizer.is_eog(token):
            self.finish_reason = "stop"
            return self._take(len(self.pending))
        self.pending += self.decoder.feed(token)
        cut = min((i for i in (self.pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.finish_reason = "stop"
            self.pending = self.pending[:cut]
            return self._take(cut)
        return self._take(len(self.pending) - held_back(self.pending, self.stop))

    def flush(self) -> str:
        """The rest of the text when generation ends for another reason (length): what stop strings held back,
        not an incomplete character."""
        return self._take(len(self.pending))

    def _take(self, n: int) -> str:
        piece, self.pending = self.pending[:n], self.pending[n:]
        return piece


class TextStream:
    """Iterates over the text pieces of one generation, given its (token, log-probability or None) steps as they
    are produced (a lazy iterator, so the timings start when iteration does); afterwards holds
    tokens, finish reason, timings."""

    def __init__(self, tokenizer, steps: Iterable[tuple[int, float | None]], n_prompt: int, stop: Sequence[str] = (),
                 constraint: Constraint | None = None):
        self.tokenizer, self.steps, self.n_prompt = tokenizer, steps, n_prompt
        self.stop, self.constraint = stop, constraint
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason = "length"
        self.timings: dict[str, float] = {}

    def __iter__(self) -> Iterator[str]:
        pieces = TextPieces(self.tokenizer, self.stop)
        t0 = time.perf_counter()
        t_first = None
        for token, logprob in self.steps:
            t_first = t_first or time.perf_counter()
            self.tokens.append(token)
            if logprob is not None:
                self.logprobs.append(logprob)
            piece = pieces.feed(token)
            if piece:
                yield piece
            if pieces.finish_reason:
                self.finish_reason = pieces.finish_reason
                break
        else:
            if self.constraint is not None and self.constraint.done:  # the grammar is complete
                self.finish_reason = "stop"
            piece = pieces.flush()
            if piece:
                yield piece
        self._record_timings(t0, t_first)

    def _record_timings(self, t0: float, t_first: float | None) -> None:
        t_end = time.perf_counter()
        t_first = t_first or t_end
        n_decode = max(len(self.tokens) - 1, 0)
        self.timings = {"prompt_tokens": self.n_prompt, "prompt_seconds": t_first - t0,
                        "prompt_tokens_per_second": self.n_prompt / max(t_first - t0, 1e-9),
                        "generated_tokens": len(self.tokens), "decode_seconds": t_end - t_first,
                        "decode_tokens_per_second": n_decode / max(t_end - t_first, 1e-9)}
