"""Constrained decoding on llguidance: a request's grammar (JSON schema, Lark or GBNF, regex, a choice of strings)
compiled once per tokenizer and cached, a matcher per sequence, the masks of many sequences in one call, and the
masks applied to logits before the sampler chain."""
from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llguidance
import numpy as np
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask_par

from pyggml.graph.errors import PyggmlError

if TYPE_CHECKING:
    from ..tokenizers.tokenizer import Tokenizer

# JSON as json.dumps writes it: no free whitespace (a model could otherwise pad forever), ", " and ": "
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MAX_COMPILED = 256  # compiled grammars kept per tokenizer (least recently used dropped)


class GrammarError(PyggmlError):
    """A grammar that does not compile; `field` names the request field it came from."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class GrammarSpec:
    """What a request's output must match. kind: "json_schema" (a schema, as a dict or JSON text), "grammar"
    (Lark or GBNF), "lark", "regex", "choice" (a list of strings) or "llguidance" (its own grammar JSON); field: the
    request's field it came from, named in errors."""
    kind: str
    source: str
    field: str = ""

    @classmethod
    def of(cls, kind: str, value: Any, field: str | None = None) -> GrammarSpec:
        """A spec from a Python value (schemas and choices may be dicts and lists)."""
        if kind not in _COMPILERS:
            raise PyggmlError(f"unknown grammar kind {kind!r}; known: {', '.join(_COMPILERS)}")
        text = value if isinstance(value, str) else json.dumps(value)
        return cls(kind, text, field or kind)


def grammar_spec(json_schema: Any = None, grammar: str | None = None, regex: str | None = None,
                 choice: Sequence[str] | None = None) -> GrammarSpec | None:
    """The one spec that the Python API's keyword arguments give (None when none does)."""
    given = {k: v for k, v in (("json_schema", json_schema), ("grammar", grammar), ("regex", regex),
                               ("choice", choice)) if v is not None}
    if len(given) > 1:
        raise PyggmlError(f"give at most one of json_schema, grammar, regex and choice, not {', '.join(given)}")
    return GrammarSpec.of(*next(iter(given.items()))) if given else None


def _choice(source: str) -> str:
    options = json.loads(source)
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise ValueError("a choice is a non-empty list of strings")
    return llguidance.grammar_from("choice", options)


_COMPILERS = {  # kind -> its source text to llguidance's grammar JSON
    "json_schema": lambda s: llguidance.LLMatcher.grammar_from_json_schema(s, defaults=JSON_OPTIONS),
    "grammar": lambda s: llguidance.grammar_from("gbnf", s),  # Lark passes through, GBNF is converted
    "lark": llguidance.LLMatcher.grammar_from_lark,
    "regex": llguidance.LLMatcher.grammar_from_regex,
    "choice": _choice,
    "llguidance": lambda s: s,
}


class _Wrapper:
    """The tokenizer as llguidance reads one: every token's bytes, EOS/BOS, the special ids, and encode."""
    is_tokenizer_wrapper = True

    def __init__(self, tokenizer: Tokenizer):
        self.tokens = [tokenizer.token_to_piece(i, special=True) for i in range(tokenizer.n_vocab)]
        self.eos_token_id, self.bos_token_id = tokenizer.eos_id, tokenizer.bos_id
        self.special_token_ids = sorted(tokenizer.special_ids)
        self._encode = tokenizer.encode

    def __call__(self, text: str) -> list[int]:
        return self._encode(text, add_special=False)


class Grammars:
    """llguidance over one tokenizer: compiled grammars cached per spec, new matchers, and batched masks."""

    def __init__(self, tokenizer: Tokenizer):
        eos = sorted(tokenizer.eog_ids) or None
        self.lltokenizer = llguidance.LLTokenizer(_Wrapper(tokenizer), eos_token=eos)
        self.n_vocab = tokenizer.n_vocab
        self.executor = llguidance.LLExecutor()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pyggml-masks")
        self._compiled: OrderedDict[tuple[str, str], str] = OrderedDict()

    def compile(self, spec: GrammarSpec) -> str:
        """The spec's llguidance grammar, checked against the vocabulary (GrammarError naming its field)."""
        key = (spec.kind, spec.source)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        try:
            grammar = _COMPILERS[spec.kind](spec.source)
        except (ValueError, TypeError) as e:
            raise GrammarError(spec.field, str(e)) from None
        error = llguidance.LLMatcher.validate_grammar(grammar, self.lltokenizer)
        if error and not error.startswith("WARNING"):
            raise GrammarError(spec.field, error)
        self._compiled[key] = grammar
        if len(self._compiled) > MAX_COMPILED:
            self._compiled.popitem(last=False)
        return grammar

    def matcher(self, spec: GrammarSpec) -> Constraint:
        """A new sequence's constraint under the spec."""
        matcher = llguidance.LLMatcher(self.lltokenizer, self.compile(spec), log_level=0)
        if matcher.is_error():
            raise GrammarError(spec.field, matcher.get_error())
        return Constraint(matcher)

    def masks(self, constraints: Sequence[Constraint]) -> np.ndarray:
        """The allowed-token bitmasks (n, words) of the constraints' next tokens, computed in one call."""
        bits = allocate_token_bitmask(len(constraints), self.n_vocab)
        if constraints:
            fill_next_token_bitmask_par(self.executor, [(c.matcher, i) for i, c in enumerate(constraints)], bits)
        return bits

    def start_masks(self, constraints: Sequence[Constraint]) -> Future:
        """`masks` computed in a thread, to overlap a forward step (llguidance releases the GIL); a future."""
        return self._pool.submit(self.masks, list(constraints))


class Constraint:
    """One sequence's matcher: feed it each accepted token; `done` once the grammar allows nothing more."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self.matcher = matcher

    def accept(self, token: int) -> None:
        """Advance over a sampled token (one the mask allowed)."""
        if not self.matcher.consume_token(token):
            raise PyggmlError(f"grammar: token {token} was not allowed: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """Whether the grammar is complete and allows no further token."""
        return self.matcher.is_stopped()


_ADD = np.array([-np.inf, 0.0], np.float32)  # forbidden, allowed: added to a logit


def apply_mask(logits: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """logits with every token the bitmask row forbids at -inf (tokens past the mask's vocabulary too); by a
    lookup and an add (np.where's per-element branch took 2x as long)."""
    n = min(len(logits), 32 * len(bits))
    allowed = np.zeros(len(logits), np.uint8)
    allowed[:n] = np.unpackbits(bits.view(np.uint8), count=n, bitorder="little")
    return logits + _ADD.take(allowed)
