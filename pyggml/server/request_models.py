"""The request bodies of the OpenAI API as pydantic models, one per endpoint: OpenAI's field names and bounds
(and vLLM's and llama.cpp's top_k, min_p and repetition penalty), unknown fields ignored as OpenAI does, NaN
and infinities refused, types strict (no "8" for 8)."""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

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
    "tools": lambda v: bool(v),  # on /v1/completions
}


def refuse_unsupported(value: Any, info: ValidationInfo) -> Any:
    """An error for a value that asks for what is not implemented (rather than an answer that ignores it)."""
    if UNSUPPORTED[info.field_name](value):
        raise ValueError(f"'{info.field_name}' with value {value!r} is not supported by this server")
    return value


def as_batch(value: str | list) -> list[str | list[int]]:
    """A prompt field as a batch: a string or a list of token ids is a batch of one."""
    batch = isinstance(value, list) and isinstance(value[0], (str, list))
    return value if batch else [value]


class Body(BaseModel):
    """What every request model shares: strict types, finite numbers, unknown fields ignored."""
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StreamOptions(Body):
    include_usage: bool = False


class JsonSchemaFormat(Body):
    """response_format's json_schema: the schema the reply must follow."""
    name: str = "response"
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(Body):
    """response_format: free text, any JSON object, or JSON under a schema."""
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("'json_schema' is required when type is 'json_schema'")
        return self


class Function(Body):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class Tool(Body):
    type: Literal["function"]
    function: Function


class FunctionName(Body):
    name: str


class NamedToolChoice(Body):
    type: Literal["function"]
    function: FunctionName


class CalledFunction(Body):
    name: str
    arguments: str

    @field_validator("arguments")
    @classmethod
    def json_arguments(cls, arguments: str) -> str:
        try:
            json.loads(arguments or "{}")
        except ValueError:
            raise ValueError("a tool call's arguments must be JSON text") from None
        return arguments


class ToolCallItem(Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


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
    # structured outputs: OpenAI's response_format, llama-server's grammar (GBNF) and json_schema
    response_format: ResponseFormat | None = None
    grammar: str | None = None
    json_schema: dict | None = None
    # refused when they ask for something (UNSUPPORTED)
    best_of: int | None = None

    @field_validator("best_of", "echo", "suffix", check_fields=False)
    @classmethod
    def refuse_unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_unsupported(value, info)

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
    tools: list | None = None

    @field_validator("tools")
    @classmethod
    def no_tools(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_unsupported(value, info)

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
    tool_calls: list[ToolCallItem] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool's result: the call it answers

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
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool = True

    @field_validator("tool_choice")
    @classmethod
    def tool_choice_names_a_tool(cls, choice: Any, info: ValidationInfo) -> Any:
        tools = info.data.get("tools")
        if choice not in (None, "none") and not tools:
            raise ValueError("'tool_choice' needs 'tools'")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {t.function.name for t in tools}:
            raise ValueError(f"'tool_choice' names {choice.function.name!r}, which is not in 'tools'")
        return choice

    @property
    def tool_mode(self) -> str:
        """"none", "auto", "required" or the function tool_choice names (OpenAI's default: auto with tools)."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or ("auto" if self.tools else "none")

    @field_validator("top_logprobs")
    @classmethod
    def needs_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top is not None and not info.data.get("logprobs"):
            raise ValueError("'top_logprobs' needs 'logprobs': true")
        return top

    @property
    def chat_messages(self) -> list[dict[str, Any]]:
        """The messages as the chat template takes them (tool calls and the ids of tool results kept)."""
        return [{"role": m.role, "content": m.text, **m.model_dump(include={"name", "tool_calls", "tool_call_id"},
                                                                  exclude_none=True)} for m in self.messages]


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
