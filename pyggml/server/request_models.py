"""The request bodies of the OpenAI API as pydantic models, one per endpoint: OpenAI's field names and bounds
(and vLLM's and llama.cpp's top_k, min_p and repetition penalty), unknown fields ignored as OpenAI does, NaN
and infinities refused, types strict (no "8" for 8)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

MAX_STOPS = 4
MAX_BIAS = 100.0  # OpenAI's bound on a logit_bias value
MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs
MAX_N = 128  # OpenAI's bound on n, choices per prompt
MAX_SEED = 2**63 - 1  # OpenAI's seed is an int64; NumPy's generators take no negative seed

Text = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
Stop = Union[str, Annotated[list[str], Field(max_length=MAX_STOPS)], None]
Penalty = Annotated[float, Field(ge=-2, le=2)]
Repetition = Annotated[float, Field(ge=0.01, le=10)]

UNSUPPORTED = {  # a field -> when a request's value of it asks for what this server does not do
    "echo": lambda v: v is True,
    "suffix": lambda v: bool(v),
    "best_of": lambda v: v not in (None, 1),
    "tools": lambda v: bool(v),
    "response_format": lambda v: isinstance(v, Mapping) and v.get("type") not in (None, "text"),
}


def as_batch(value: str | list) -> list[str | list[int]]:
    """A prompt field as a batch: a string or a list of token ids is a batch of one."""
    batch = isinstance(value, list) and isinstance(value[0], (str, list))
    return value if batch else [value]


class Body(BaseModel):
    """What every request model shares: strict types, finite numbers, unknown fields ignored."""
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StreamOptions(Body):
    include_usage: bool = False


class Sampling(Body):
    """The fields both endpoints share."""
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(ge=0, le=1)] = 1.0
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-MAX_BIAS, le=MAX_BIAS)]] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    user: str | None = None
    # not OpenAI's: vLLM's and llama.cpp's servers take them
    top_k: Annotated[int, Field(ge=-1)] = 0
    min_p: Annotated[float, Field(ge=0, le=1)] = 0.0
    repetition_penalty: Repetition | None = None
    repeat_penalty: Repetition | None = None
    # refused when they ask for something (UNSUPPORTED)
    best_of: int | None = None
    tools: list | None = None
    response_format: dict | None = None

    @field_validator("best_of", "tools", "response_format", "echo", "suffix", check_fields=False)
    @classmethod
    def refuse_unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        """An error for a value that asks for what is not implemented (rather than an answer that ignores it)."""
        if UNSUPPORTED[info.field_name](value):
            raise ValueError(f"'{info.field_name}' with value {value!r} is not supported by this server")
        return value

    @field_validator("logit_bias")
    @classmethod
    def token_id_keys(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias and not all(k.strip().isdigit() for k in bias):
            raise ValueError("'logit_bias' keys must be token ids")
        return bias

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else self.stop or []


class CompletionRequest(Sampling):
    """/v1/completions: a prompt (a string, token ids, or a batch of either)."""
    prompt: Union[Text, TokenIds, Annotated[list[Union[Text, TokenIds]], Field(min_length=1)]]
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool = False
    suffix: str | None = None

    @property
    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts (one for a string or a list of token ids)."""
        return as_batch(self.prompt)


class TextPart(Body):
    type: Literal["text"]
    text: str


class Message(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The content as text (text parts joined)."""
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(Sampling):
    """/v1/chat/completions: a conversation."""
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tool_choice: Any = None

    @field_validator("top_logprobs")
    @classmethod
    def needs_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top is not None and not info.data.get("logprobs"):
            raise ValueError("'top_logprobs' needs 'logprobs': true")
        return top

    @property
    def chat_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text} for m in self.messages]


class EmbeddingRequest(Body):
    """/v1/embeddings: an input (a string, token ids, or a batch of either)."""
    input: Union[Text, TokenIds, Annotated[list[Union[Text, TokenIds]], Field(min_length=1)]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None

    @property
    def inputs(self) -> list[str | list[int]]:
        """The batch of inputs (one for a string or a list of token ids)."""
        return as_batch(self.input)
