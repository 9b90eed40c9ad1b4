"""The OpenAI API's request fields, checked, and its response and error bodies (no HTTP here)."""
from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyggml.model.engine import TokenLogprob
from pyggml.model.sampling import SamplingParams

MAX_STOPS = 4
MAX_BIAS = 100.0  # OpenAI's bound on a logit_bias value
MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs
MAX_N = 128  # OpenAI's bound on n, choices per prompt


class APIError(Exception):
    """An error answered as OpenAI does: an HTTP status and {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Params:
    """What a completion request asks for, checked: n choices for each prompt."""
    prompts: list[str | list[int]]
    max_tokens: int
    sampling: SamplingParams
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # None: none asked; else each token's log-probability and this many top ones
    n: int = 1


def _get(body: Mapping, name: str, kinds: type | tuple, default: Any = None, low: float | None = None,
         high: float | None = None) -> Any:
    """body[name] checked against types and bounds (bool is not a number), or default when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
        names = " or ".join(k.__name__ for k in _tuple(kinds))
        raise APIError(400, f"'{name}' must be of type {names}, not {type(value).__name__}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise APIError(400, f"'{name}' must be between {low} and {high}, not {value}", name)
    return value


def _tuple(kinds: type | tuple) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _stop(body: Mapping) -> list[str]:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) for s in stops):
        raise APIError(400, f"'stop' must be a string or a list of at most {MAX_STOPS} strings", "stop")
    return stops


def _logit_bias(body: Mapping, n_vocab: int) -> dict[int, float]:
    """logit_bias: {"token id": bias in [-100, 100]}, ids in the vocabulary."""
    bias = _get(body, "logit_bias", dict, {})
    try:
        parsed = {int(k): v for k, v in bias.items()}
    except ValueError:
        raise APIError(400, "'logit_bias' keys must be token ids", "logit_bias") from None
    if any(not 0 <= t < n_vocab for t in parsed):
        raise APIError(400, f"'logit_bias' token ids must be in [0, {n_vocab})", "logit_bias")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and -MAX_BIAS <= v <= MAX_BIAS
               for v in parsed.values()):
        raise APIError(400, f"'logit_bias' must map token ids to numbers in [-{MAX_BIAS:g}, {MAX_BIAS:g}]",
                       "logit_bias")
    return {t: float(v) for t, v in parsed.items()}


def _logprobs(body: Mapping, chat: bool) -> int | None:
    """How many top log-probabilities a token's entry holds, or None when none are asked: completions' logprobs
    (an integer), chat's logprobs (true) with top_logprobs."""
    if not chat:
        return _get(body, "logprobs", int, None, 0, MAX_TOP_LOGPROBS)
    top = _get(body, "top_logprobs", int, None, 0, MAX_TOP_LOGPROBS)
    if not _get(body, "logprobs", bool, False):
        if top is not None:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
        return None
    return top or 0


UNSUPPORTED = {  # a field -> when a request's value of it asks for what this server does not do
    "echo": lambda v: v is True,
    "suffix": lambda v: bool(v),
    "best_of": lambda v: v not in (None, 1),
    "tools": lambda v: bool(v),
    "response_format": lambda v: isinstance(v, Mapping) and v.get("type") not in (None, "text"),
}


def _refuse_unsupported(body: Mapping) -> None:
    """A 400 for a field whose asked-for behaviour is not implemented (rather than an answer that ignores it)."""
    for name, asks in UNSUPPORTED.items():
        if asks(body.get(name)):
            raise APIError(400, f"'{name}' with value {body.get(name)!r} is not supported by this server", name)


def parse_params(body: Any, prompts: list[str | list[int]], n_vocab: int,
                 max_tokens_names: tuple[str, ...] = ("max_tokens",), default_max_tokens: int = 16,
                 chat: bool = False) -> Params:
    """Sampling and streaming fields common to both endpoints (token ids checked against n_vocab)."""
    n = _get(body, "n", int, 1, 1, MAX_N)
    _refuse_unsupported(body)
    max_tokens = default_max_tokens
    for name in max_tokens_names:
        max_tokens = _get(body, name, int, max_tokens, low=1)
    number = (int, float)
    # top_k, min_p and the repetition penalty are not OpenAI's: vLLM's and llama.cpp's servers take them
    repeat = _get(body, "repetition_penalty", number, _get(body, "repeat_penalty", number, 1.0, 0.01, 10), 0.01, 10)
    sampling = SamplingParams(temperature=_get(body, "temperature", number, 1.0, 0, 2),
                              top_p=_get(body, "top_p", number, 1.0, 0, 1),
                              top_k=max(_get(body, "top_k", int, 0, -1), 0),
                              min_p=_get(body, "min_p", number, 0.0, 0, 1), repeat_penalty=repeat,
                              frequency_penalty=_get(body, "frequency_penalty", number, 0.0, -2, 2),
                              presence_penalty=_get(body, "presence_penalty", number, 0.0, -2, 2),
                              seed=_get(body, "seed", int), logit_bias=_logit_bias(body, n_vocab))
    options = _get(body, "stream_options", dict, {})
    return Params(prompts, max_tokens, sampling, _stop(body), _get(body, "stream", bool, False),
                  bool(options.get("include_usage")), _logprobs(body, chat), n)


def need_object(body: Any) -> Mapping:
    if not isinstance(body, Mapping):
        raise APIError(400, "the request body must be a JSON object")
    return body


def completion_prompts(body: Mapping) -> list[str | list[int]]:
    """The prompts of /v1/completions: a string, a list of token ids, or a list of either (a batch of prompts)."""
    prompt = body.get("prompt")
    batch = prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) else [prompt]
    if not all(_one_prompt(p) for p in batch):
        raise APIError(400, "'prompt' must be a non-empty string or list of token ids, or a list of those", "prompt")
    return batch


def _one_prompt(prompt: Any) -> bool:
    """Whether prompt is a non-empty string or a non-empty list of token ids."""
    if isinstance(prompt, str):
        return bool(prompt)
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(t, int) and not isinstance(t, bool)
                                                             for t in prompt)


def chat_messages(body: Mapping) -> list[dict[str, str]]:
    """The messages of /v1/chat/completions as {role, content} with text content."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(content, list):  # content parts: only text
            if not all(isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise APIError(400, f"messages[{i}]: only text content parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(content, str):
            raise APIError(400, f"messages[{i}] needs a string 'role' and text 'content'", "messages")
        out.append({"role": m["role"], "content": content})
    return out


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(rid: str, obj: str, model: str, choices: list[dict], use: dict | None = None) -> dict:
    """A response or stream chunk around its choices (usage when given)."""
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body


def text_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def message_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
            "finish_reason": finish_reason}


def delta_choice(index: int, delta: dict, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


Piece = Callable[[int], bytes]  # a token id's bytes


def token_text(piece: Piece, token: int) -> str:
    """A token's text (bytes that are not whole UTF-8 characters become U+FFFD)."""
    return piece(token).decode("utf-8", errors="replace")


def completion_logprobs(entries: list[TokenLogprob], piece: Piece, offset: int = 0) -> dict:
    """/v1/completions' logprobs: tokens, their log-probabilities, the top ones as {token: logprob}, and each
    token's offset in the text (from `offset`)."""
    tokens = [token_text(piece, e.token) for e in entries]
    offsets = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=offset))[:len(tokens)]
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{token_text(piece, i): lp for i, lp in e.top} for e in entries], "text_offset": offsets}


def chat_logprobs(entries: list[TokenLogprob], piece: Piece, offset: int = 0) -> dict:
    """/v1/chat/completions' logprobs: per token its text, log-probability, bytes and top alternatives (offset:
    unused, chat gives none)."""
    def item(token: int, logprob: float) -> dict:
        return {"token": token_text(piece, token), "logprob": logprob, "bytes": list(piece(token))}
    return {"content": [{**item(e.token, e.logprob), "top_logprobs": [item(i, lp) for i, lp in e.top]}
                        for e in entries], "refusal": None}
