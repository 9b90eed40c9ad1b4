"""What an OpenAI API request asks for, and its response and error bodies (no HTTP here)."""
from __future__ import annotations

import base64
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pyggml.model.runtime.engine import TokenLogprob
from pyggml.model.runtime.grammar import GrammarSpec
from pyggml.model.runtime.sampling import SamplingParams
from pyggml.model.runtime.tool_calls import ToolCall

from .request_models import ChatRequest, Sampling

ToolGrammar = Callable[[list[dict], str, bool], "GrammarSpec | None"]  # (tools, tool_choice, parallel) -> grammar


RETRY_AFTER = 1  # seconds a client told the server is busy waits before it retries


class APIError(Exception):
    """An error answered as OpenAI does: an HTTP status and {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", retry: bool = False):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = {"Retry-After": str(RETRY_AFTER)} if retry else None  # a 503 says when to come back

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Params:
    """What a completion request asks for: n choices for each prompt."""
    max_tokens: int
    sampling: SamplingParams
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # None: none asked; else each token's log-probability and this many top ones
    n: int = 1
    grammar: GrammarSpec | None = None  # what the output must follow
    tools: str | None = None  # the tool_choice when replies may hold tool calls ("auto", "required", a name)


def params(req: Sampling, n_vocab: int, default_max_tokens: int, tool_grammar: ToolGrammar | None = None) -> Params:
    """What a validated request asks for (its logit_bias token ids checked against n_vocab; tool_grammar: the
    grammar of a reply under tools and tool_choice)."""
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens or default_max_tokens
    repeat = req.repetition_penalty or req.repeat_penalty or 1.0
    sampling = SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=max(req.top_k, 0),
                              min_p=req.min_p, repeat_penalty=repeat, frequency_penalty=req.frequency_penalty,
                              presence_penalty=req.presence_penalty, seed=req.seed,
                              logit_bias=_logit_bias(req.logit_bias or {}, n_vocab))
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    tools = req.tool_mode if isinstance(req, ChatRequest) and req.tool_mode != "none" else None
    grammars = _grammars(req) + ([("tools", tool_grammar(tool_list(req), tools, req.parallel_tool_calls))]
                                 if tools and tool_grammar else [])
    grammars = [(name, g) for name, g in grammars if g is not None]
    if len(grammars) > 1:
        raise APIError(400, f"only one of {', '.join(n for n, _ in grammars)} may constrain the output",
                       grammars[1][0])
    return Params(max_tokens, sampling, req.stops, req.stream, include_usage, _logprobs(req), req.n,
                  grammars[0][1] if grammars else None, tools)


def tool_list(req: ChatRequest) -> list[dict] | None:
    """The request's tools as the chat template takes them (OpenAI's dicts)."""
    return [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None


def _grammars(req: Sampling) -> list[tuple[str, GrammarSpec]]:
    """The grammars that response_format and llama-server's grammar and json_schema fields ask for."""
    out, fmt = [], req.response_format
    if fmt is not None and fmt.type == "json_object":
        out.append(("response_format", GrammarSpec.of("json_schema", {"type": "object"}, "response_format")))
    elif fmt is not None and fmt.type == "json_schema":
        out.append(("response_format", GrammarSpec.of("json_schema", fmt.json_schema.schema_, "response_format")))
    if req.json_schema is not None:
        out.append(("json_schema", GrammarSpec.of("json_schema", req.json_schema)))
    if req.grammar is not None:
        out.append(("grammar", GrammarSpec.of("grammar", req.grammar)))
    return out


def _logit_bias(bias: dict[str, float], n_vocab: int) -> dict[int, float]:
    parsed = {int(k): v for k, v in bias.items()}
    if any(not 0 <= t < n_vocab for t in parsed):
        raise APIError(400, f"'logit_bias' token ids must be in [0, {n_vocab})", "logit_bias")
    return parsed


def _logprobs(req: Sampling) -> int | None:
    """How many top log-probabilities a token's entry holds, or None when none are asked: completions' logprobs
    (an integer), chat's logprobs (true) with top_logprobs."""
    if isinstance(req, ChatRequest):
        return (req.top_logprobs or 0) if req.logprobs else None
    return req.logprobs


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """An embedding as OpenAI sends it: a list of floats, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def envelope(rid: str, obj: str, model: str, choices: list[dict], use: dict | None = None) -> dict:
    """A response or stream chunk around its choices (usage when given)."""
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body


def text_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def message_choice(index: int, text: str | None, finish_reason: str | None, logprobs: dict | None = None,
                   calls: list[ToolCall] = ()) -> dict:
    """A chat choice; with tool calls, message.tool_calls and finish_reason tool_calls."""
    message = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = tool_calls_json(calls)
        finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}


def tool_calls_json(calls: list[ToolCall], with_index: bool = False) -> list[dict]:
    """OpenAI's tool_calls entries (a stream's deltas carry each one's index)."""
    return [{**({"index": i} if with_index else {}), "id": new_id("call"), "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for i, c in enumerate(calls)]


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
