"""Chat templates as transformers renders them ({% break %}, {% generation %}, tojson, tools), conversations with
tool calls and results, tool-call parsers of each format, the grammars that keep replies to calls (the lazy one
free until a call opens), and the streaming splitter."""
from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from chat_llama import write_chat_llama
from pyggml.graph.errors import PyggmlError
from pyggml.model.runtime.chat_template import render_chat
from pyggml.model.runtime.grammar import apply_mask
from pyggml.model.model import Model
from pyggml.model.runtime.tool_calls import TOOL_FORMATS, CallStream, ToolCall, parse_tool_calls, tool_format

ADD = {"type": "function", "function": {"name": "add", "description": "a + b", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                     "b": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["a", "b"], "additionalProperties": False}}}
ECHO = {"type": "function", "function": {"name": "echo", "parameters": {
    "type": "object", "properties": {"text": {"enum": ["hi", "yo"]}}, "required": ["text"]}}}
# a template in the style of Qwen 2.5's: tools in the system turn, calls and results as tags
QWEN_LIKE = (
    "{%- if tools %}<|im_start|>system\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|im_end|>\n"
    "{% endif %}{%- for m in messages %}{%- if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n"
    "{{ m.content }}\n</tool_response><|im_end|>{{ '\\n' }}{%- elif m.tool_calls %}<|im_start|>assistant\n"
    "{% for c in m.tool_calls %}<tool_call>\n{\"name\": \"{{ c.function.name }}\", \"arguments\": "
    "{{ c.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>{{ '\\n' }}{%- else %}<|im_start|>"
    "{{ m.role }}\n{{ m.content }}<|im_end|>{{ '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CALLED = [{"role": "user", "content": "1 + 2?"},
          {"role": "assistant", "content": None, "tool_calls": [
              {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
          {"role": "tool", "tool_call_id": "c1", "content": "3"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Model:
    return Model(write_chat_llama(tmp_path_factory.mktemp("tools") / "chat-llama.gguf", n_ctx=2048), n_ctx=2048)


def test_loopcontrols_generation_tag_and_tojson_as_transformers():
    template = ("{% for m in messages %}{% if m.role == 'stop' %}{% break %}{% endif %}{% if loop.index == 1 %}"
                "{% continue %}{% endif %}{% generation %}[{{ m.content | tojson }}]{% endgeneration %}{% endfor %}"
                "{{ tools | tojson(indent=1) }}")
    messages = [{"role": "user", "content": "skipped"}, {"role": "user", "content": "café <b>"},
                {"role": "stop", "content": "x"}, {"role": "user", "content": "never"}]
    tools = [{"z": 1, "a": 2}]
    assert render_chat(template, messages, tools=tools) == '["café <b>"]' + json.dumps(tools, indent=1)


def test_a_template_that_takes_tools_gets_them_and_the_calls_as_objects(tiny, monkeypatch):
    monkeypatch.setitem(tiny.gguf.metadata, "tokenizer.chat_template", QWEN_LIKE)
    text = tiny.apply_chat_template(CALLED, tools=[ADD])
    assert text == ("<|im_start|>system\n" + json.dumps(ADD) + "\n<|im_end|>\n<|im_start|>user\n1 + 2?<|im_end|>\n"
                    '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n'
                    "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert tiny.tool_format is TOOL_FORMATS["hermes"]


def test_a_template_without_tools_gets_the_built_in_format(tiny):
    text = tiny.apply_chat_template(CALLED, tools=[ADD])
    assert text.startswith("<|im_start|>system\n# Tools\n") and json.dumps(ADD) in text
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
            "<|im_end|>\n<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n") in text


@pytest.mark.parametrize("template, name", [("{{ '[TOOL_CALLS]' }}", "mistral"), ("<|python_tag|>", "llama3"),
                                            ("<tool_call>", "hermes"), ("plain", "hermes")])
def test_the_format_is_found_from_the_template(template, name):
    assert tool_format(template).name == name


@pytest.mark.parametrize("fmt, text, content, calls", [
    ("hermes", 'Sure.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>\n'
               '{"name": "echo", "arguments": {"text": "hi"}}\n</tool_call>', "Sure.",
     [ToolCall("add", '{"a": 1}'), ToolCall("echo", '{"text": "hi"}')]),
    ("hermes", '<tool_call>\n{"name": "add", "arguments": {"a": 1}}', None, [ToolCall("add", '{"a": 1}')]),
    ("hermes", "<tool_call>\n{broken", "<tool_call>\n{broken", []),
    ("llama3", '{"name": "add", "parameters": {"a": 1, "b": 2}}', None, [ToolCall("add", '{"a": 1, "b": 2}')]),
    ("llama3", '<|python_tag|>{"name": "add", "parameters": {}}; {"name": "echo", "parameters": {"text": "yo"}}',
     None, [ToolCall("add", "{}"), ToolCall("echo", '{"text": "yo"}')]),
    ("llama3", "The answer is {x}.", "The answer is {x}.", []),
    ("mistral", 'ok [TOOL_CALLS][{"name": "add", "arguments": {"a": 3}}, {"name": "echo", "arguments": {}}]', "ok",
     [ToolCall("add", '{"a": 3}'), ToolCall("echo", "{}")]),
    ("mistral", "no calls", "no calls", []),
])
def test_parsers_of_each_format(fmt, text, content, calls):
    assert parse_tool_calls(text, TOOL_FORMATS[fmt]) == (content, calls)


@pytest.mark.parametrize("fmt, choice", [("hermes", "required"), ("llama3", "required"), ("mistral", "required"),
                                         ("hermes", "add")])
def test_forced_calls_parse_and_follow_the_parameters(tiny, fmt, choice, monkeypatch):
    """A reply under required (or a named tool) is, from its first token, calls its format's parser reads back,
    with arguments the tool's schema accepts."""
    monkeypatch.setitem(tiny.gguf.metadata, "tokenizer.chat_template", {"hermes": "", "llama3": "<|python_tag|>",
                                                                         "mistral": "[TOOL_CALLS]"}[fmt] + "{{x}}")
    grammar = tiny.tool_grammar([ADD, ECHO], choice, parallel=False)
    done = tiny.generate([65, 66], max_tokens=200, temperature=1.0, seed=5, grammar=grammar)
    content, calls = tiny.parse_tool_calls(done.text)
    assert done.finish_reason == "stop" and content is None and len(calls) == 1
    tool = {"add": ADD, "echo": ECHO}[calls[0].name]
    assert choice == "required" or calls[0].name == choice
    jsonschema.validate(json.loads(calls[0].arguments), tool["function"]["parameters"])


def allowed_bytes(tiny: Model, constraint) -> set[int]:
    mask = apply_mask(np.zeros(tiny.tokenizer.n_vocab, np.float32), tiny.grammars.masks([constraint])[0])
    return set(np.flatnonzero(np.isfinite(mask[:256])).tolist())


@pytest.mark.parametrize("template, opening, then", [("", b"<tool_call>\n", b'{"name": "'),
                                                     ("[TOOL_CALLS]", b"[TOOL_CALLS]", b'[{"name": "'),
                                                     ("<|python_tag|>", b'{"name": ', b'"')])
def test_auto_is_free_until_a_call_opens(tiny, monkeypatch, template, opening, then):
    """Free text (any UTF-8) until the format's opening, then only what the call's schema allows, byte by byte."""
    monkeypatch.setitem(tiny.gguf.metadata, "tokenizer.chat_template", template + "{{x}}")
    constraint = tiny.constraint(tiny.tool_grammar([ADD], "auto"))
    utf8_starts = set(range(0x80)) | set(range(0xC2, 0xF5))  # the bytes that can begin a UTF-8 character
    for byte in b"Let me add. ":
        assert allowed_bytes(tiny, constraint) == utf8_starts  # free text
        constraint.accept(byte)
    for byte in opening:
        constraint.accept(byte)
    for byte in then + b"add":
        assert allowed_bytes(tiny, constraint) == {byte}  # the call is held to its schema from here
        constraint.accept(byte)


def test_the_stream_splitter_shows_text_and_holds_calls():
    for fmt, text in (("hermes", 'Hi <tool_c>! <tool_call>\n{"name": "add", "arguments": {}}\n</tool_call>'),
                      ("mistral", 'Hi [TOOL_C]! [TOOL_CALLS][{"name": "add", "arguments": {}}]')):
        stream = CallStream(TOOL_FORMATS[fmt])
        shown = [stream.feed(ch) for ch in text]
        rest, calls = stream.finish()
        assert "".join(shown) == text[:text.rindex("!") + 2] and rest == "" and calls == [ToolCall("add", "{}")]
        assert "".join(shown[:4]) == "Hi "  # the text before a possible marker passes at once
    stream = CallStream(TOOL_FORMATS["llama3"])
    assert stream.feed("  ") == "" and stream.feed('{"name": "add", "parameters": {}}') == ""
    assert stream.finish() == ("", [ToolCall("add", "{}")])
    stream = CallStream(TOOL_FORMATS["llama3"])
    assert stream.feed("Plain text") == "Plain text" and stream.finish() == ("", [])


def test_a_named_tool_that_is_not_there_is_named(tiny):
    with pytest.raises(PyggmlError, match="'nope'"):
        tiny.tool_grammar([ADD], "nope")
    assert tiny.tool_grammar([ADD], "none") is None and tiny.tool_grammar([], "required") is None
