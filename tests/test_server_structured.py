"""Structured outputs and tool calls through `pyggml serve`, driven by the official openai client: every answer
validated by jsonschema against its schema (streamed and not), chat.completions.parse with a pydantic model,
llama-server's GBNF grammar and json_schema fields, each tool_choice, and a two-turn tool conversation."""
from __future__ import annotations

import json
import re
from typing import Annotated, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from chat_llama import write_chat_llama
from pyggml.model.model import Model
from test_server import call, serving

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0,
                                                                         "maximum": 999},
                                                                   "b": {"type": "integer", "minimum": 0,
                                                                         "maximum": 999}},
                                  "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class Answer(BaseModel):
    city: Annotated[str, Field(max_length=10)]
    sunny: bool
    unit: Literal["C", "F"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = Model(write_chat_llama(tmp_path_factory.mktemp("structured") / "chat-llama.gguf", n_ctx=2048),
                  n_ctx=2048)
    with serving(model, n_parallel=4, n_ctx=2048) as (url, engine):
        yield url, openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)


def chat(client: openai.OpenAI, stream: bool, **options):
    """(content, tool calls as (name, arguments), finish_reason) of one answer, streamed or not."""
    options = {"model": "test-model", "messages": ASK, "max_tokens": 120, "temperature": 0, **options}
    if not stream:
        choice = client.chat.completions.create(**options).choices[0]
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or ()]
        return choice.message.content, calls, choice.finish_reason
    content, calls, reason = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **options):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for c in delta.tool_calls or ():
            name, args = calls.get(c.index, ("", ""))
            calls[c.index] = (name + (c.function.name or ""), args + (c.function.arguments or ""))
            assert c.id is None or c.id.startswith("call")
        reason = chunk.choices[0].finish_reason or reason
    return content or None, [calls[i] for i in sorted(calls)], reason


def assert_calls(calls, tools, how_many=None) -> None:
    """Each call names one of the tools and its arguments are JSON that its parameters' schema accepts."""
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert calls and (how_many is None or len(calls) == how_many)
    for name, arguments in calls:
        jsonschema.validate(json.loads(arguments), schemas[name])


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_and_json_object(server, stream):
    _, client = server
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    content, calls, reason = chat(client, stream, response_format=fmt)
    assert reason == "stop" and not calls
    jsonschema.validate(json.loads(content), PERSON)
    content, _, reason = chat(client, stream, response_format={"type": "json_object"}, max_tokens=400)
    assert reason == "stop" and isinstance(json.loads(content), dict)


def test_parse_with_a_pydantic_model(server):
    _, client = server
    done = client.chat.completions.parse(model="test-model", messages=ASK, response_format=Answer, max_tokens=120,
                                         temperature=0.9, seed=1)
    message = done.choices[0].message
    assert isinstance(message.parsed, Answer)
    assert message.parsed == Answer.model_validate_json(message.content)


@pytest.mark.parametrize("stream", [False, True])
def test_llama_server_grammar_and_json_schema_fields(server, stream):
    _, client = server
    gbnf = 'root ::= "The answer is " [0-9]{1,3} "."'
    content, _, reason = chat(client, stream, extra_body={"grammar": gbnf})
    assert reason == "stop" and re.fullmatch(r"The answer is [0-9]{1,3}\.", content)
    url, _ = server
    status, body = call(url, "/v1/completions", {"prompt": "x", "max_tokens": 80, "json_schema": PERSON})
    assert status == 200 and body["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(body["choices"][0]["text"]), PERSON)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_required_named_and_single(server, stream):
    _, client = server
    content, calls, reason = chat(client, stream, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert reason == "tool_calls" and content is None
    assert_calls(calls, TOOLS, 1)
    _, calls, reason = chat(client, stream, tools=TOOLS, max_tokens=160,
                            tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert reason in ("tool_calls", "length") and {name for name, _ in calls} == {"get_weather"}
    assert_calls(calls, TOOLS)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_none_and_auto(server, stream):
    _, client = server
    content, calls, reason = chat(client, stream, tools=TOOLS, tool_choice="none", max_tokens=12)
    assert not calls and reason == "length" and content
    content, calls, reason = chat(client, stream, tools=TOOLS, max_tokens=40, temperature=1.0, seed=4)
    assert (reason == "tool_calls") == bool(calls)
    if calls:
        assert_calls(calls, TOOLS)


def test_two_turns_with_a_tool_result(server):
    _, client = server
    first = client.chat.completions.create(model="test-model", messages=ASK, tools=TOOLS, tool_choice="required",
                                           max_tokens=120, temperature=0)
    call_ = first.choices[0].message.tool_calls[0]
    history = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call_.id, "content": json.dumps({"celsius": 21})}]
    second = client.chat.completions.create(model="test-model", messages=history, tools=TOOLS, max_tokens=8,
                                            temperature=0, tool_choice="none")
    assert second.choices[0].message.content and second.usage.prompt_tokens > first.usage.prompt_tokens


BAD = [({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
        "response_format"),
       ({"response_format": {"type": "json_schema"}}, "response_format"),
       ({"response_format": {"type": "xml"}}, "response_format"),
       ({"grammar": "root ::= undefined_rule"}, "grammar"),
       ({"json_schema": {"type": "object", "properties": 5}}, "json_schema"),
       ({"grammar": 'root ::= "a"', "json_schema": PERSON}, "grammar"),
       ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
       ({"tool_choice": "required"}, "tool_choice"),
       ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
       ({"messages": [{"role": "assistant", "tool_calls": [{"type": "function", "function": {
           "name": "f", "arguments": "{not json"}}]}]}, "messages")]


def test_what_does_not_compile_gets_400_naming_the_field(server):
    url, _ = server
    for extra, param in BAD:
        status, body = call(url, "/v1/chat/completions", {"messages": ASK, "max_tokens": 4, **extra})
        assert status == 400 and body["error"]["param"] == param, (extra, body)
    status, _ = call(url, "/v1/chat/completions", {"messages": ASK, "max_tokens": 2})
    assert status == 200  # the server stays up
