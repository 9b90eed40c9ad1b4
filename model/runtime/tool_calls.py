"""Tool calls: the formats models write them in (Hermes/Qwen, Llama 3.x JSON, Mistral), found from the chat
template; the conversation prepared for the template (a built-in Hermes prompt where the template knows no
tools); the grammar that keeps a reply to a call; and the calls parsed out of a reply."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llguidance import StructTag

from pyggml.graph.errors import PyggmlError

from .generation import held_back
from .grammar import JSON_OPTIONS, GrammarSpec


@dataclass(frozen=True)
class ToolFormat:
    """How a model writes its calls: an opening marker (the lazy grammar's trigger), each call a JSON object
    {"name", args_key}, a closing marker; `array`: one marker, then a JSON array of calls."""
    name: str
    open: str
    close: str
    args_key: str
    array: bool = False


TOOL_FORMATS = {
    "hermes": ToolFormat("hermes", "<tool_call>\n", "\n</tool_call>", "arguments"),
    "llama3": ToolFormat("llama3", "", "", "parameters"),
    "mistral": ToolFormat("mistral", "[TOOL_CALLS]", "", "arguments", array=True),
}
_TEMPLATE_MARKS = (("[TOOL_CALLS]", "mistral"), ("<|python_tag|>", "llama3"), ("<tool_call>", "hermes"))

# The system prompt of the built-in format (Qwen 2.5's wording), for templates that take no tools
BUILTIN_TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>')


@dataclass
class ToolCall:
    """A call the model wrote: the function's name and its arguments as JSON text."""
    name: str
    arguments: str


def tool_format(template: str) -> ToolFormat:
    """The format the template's model writes calls in (Hermes where the template shows none)."""
    return TOOL_FORMATS[next((name for mark, name in _TEMPLATE_MARKS if mark in template), "hermes")]


def takes_tools(template: str) -> bool:
    """Whether the template renders `tools` itself."""
    return "tools" in template


def template_messages(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping] | None,
                      template: str) -> tuple[list[dict], list[Mapping] | None]:
    """(messages, tools) as the template is given them: call arguments as objects (as HF templates expect);
    where the template takes no tools, the built-in format's system prompt, calls and tool results as text."""
    messages = [_arguments_as_objects(dict(m)) for m in messages]
    if takes_tools(template):
        return messages, list(tools) if tools else None
    messages = [_as_text(m) for m in messages]
    if tools:
        prompt = BUILTIN_TOOLS_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}"}
        else:
            messages.insert(0, {"role": "system", "content": prompt})
    return messages, None


def _arguments_as_objects(message: dict) -> dict:
    calls = message.get("tool_calls")
    if calls:
        message["tool_calls"] = [_call_object(c) for c in calls]
    return message


def _call_object(call: Mapping) -> dict:
    function = dict(call.get("function", call))
    if isinstance(function.get("arguments"), str):
        function["arguments"] = json.loads(function["arguments"] or "{}")
    return {**call, "function": function}


def _as_text(message: dict) -> dict:
    """A message in the built-in format: calls as <tool_call> blocks, a tool's result as the user's."""
    fmt = TOOL_FORMATS["hermes"]
    if message["role"] == "tool":
        return {"role": "user", "content": f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"}
    calls = [c["function"] for c in message.pop("tool_calls", None) or ()]
    text = [message.get("content") or ""] + [
        fmt.open + json.dumps({"name": c["name"], "arguments": c["arguments"]}) + fmt.close for c in calls]
    return {**message, "content": "\n".join(t for t in text if t)}


def tool_grammar(tools: Sequence[Mapping], fmt: ToolFormat, choice: str, parallel: bool,
                 special: Mapping[str, int]) -> GrammarSpec | None:
    """The grammar of a reply under tool_choice: "none" (free text), "auto" (a call once one opens), "required"
    (a call from the first token) or a function's name (a call to it)."""
    if choice == "none" or not tools:
        return None
    if choice == "auto":
        return lazy_call_grammar(tools, fmt, special)
    if choice != "required":
        tools = [t for t in tools if _function(t)["name"] == choice]
        if not tools:
            raise PyggmlError(f"tool_choice names {choice!r}, which is not one of the tools")
    return call_grammar(tools, fmt, parallel, special, "tool_choice")


def _function(tool: Mapping) -> Mapping:
    return tool.get("function", tool)


def _schema(schema: Mapping | None) -> dict:
    """A schema with the compact JSON layout (JSON_OPTIONS) for llguidance's %json."""
    return {"x-guidance": JSON_OPTIONS, **(schema or {"type": "object"})}


def _call_schema(tools: Sequence[Mapping], fmt: ToolFormat) -> dict:
    """The JSON schema of one call to any of the tools."""
    options = [{"type": "object", "properties": {"name": {"const": f["name"]}, fmt.args_key: f.get("parameters")
                                                 or {"type": "object"}},
                "required": ["name", fmt.args_key], "additionalProperties": False}
               for f in map(_function, tools)]
    return _schema(options[0] if len(options) == 1 else {"anyOf": options})


def _literal(text: str, special: Mapping[str, int]) -> str:
    """A Lark terminal for text: the special token of that text where the vocabulary has one."""
    return f"<[{special[text]}]>" if text in special else json.dumps(text)


def call_grammar(tools: Sequence[Mapping], fmt: ToolFormat, parallel: bool, special: Mapping[str, int],
                 field: str = "tools") -> GrammarSpec:
    """A grammar for a reply that is one call (or, parallel, one or more) to the tools, from its first token."""
    schema = _call_schema(tools, fmt)
    if fmt.array:
        array = _schema({"type": "array", "items": schema, "minItems": 1, **({} if parallel else {"maxItems": 1})})
        body = f"{_literal(fmt.open, special)} %json {json.dumps(array)}"
        return GrammarSpec("lark", f"start: {body}\n", field)
    marker = fmt.open.rstrip()  # "<tool_call>" of "<tool_call>\n": a special token in some vocabularies
    opener = f"{_literal(marker, special)} {json.dumps(fmt.open[len(marker):])}" if fmt.open else ""
    call = f"{opener} %json {json.dumps(schema)} {json.dumps(fmt.close) if fmt.close else ''}"
    start = "call (\"\\n\" call)*" if parallel else "call"
    return GrammarSpec("lark", f"start: {start}\ncall: {call}\n", field)


def lazy_call_grammar(tools: Sequence[Mapping], fmt: ToolFormat, special: Mapping[str, int],
                      field: str = "tools") -> GrammarSpec:
    """A grammar that leaves text free until the model opens a call, then keeps the call to the tools (as
    llama.cpp's lazy grammars); formats without an opening marker open with '{"name": '."""
    schema = _call_schema(tools, fmt)
    if fmt.open:
        trigger = fmt.open.strip()
        tag = StructTag(trigger=trigger, begin=fmt.open, end=fmt.close,
                        grammar=_schema({"type": "array", "items": schema, "minItems": 1}) if fmt.array else schema)
        return GrammarSpec("llguidance", _as_llguidance(StructTag.to_grammar([tag], assume_special=trigger in special)),
                           field)
    names = " | ".join(json.dumps(json.dumps(f["name"]) + f', "{fmt.args_key}": ') + " %json "
                       + json.dumps(_schema(f.get("parameters"))) for f in map(_function, tools))
    tag = StructTag(trigger='{"name": ', begin='{"name": ', end="}", grammar=f"start: {names}\n")
    return GrammarSpec("llguidance", _as_llguidance(StructTag.to_grammar([tag], assume_special=False)), field)


def _as_llguidance(grammar: str) -> str:
    """StructTag's output (Lark text or llguidance JSON) as llguidance grammar JSON."""
    return grammar if grammar.startswith("{") else json.dumps({"grammars": [{"lark_grammar": grammar}]})


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_tool_calls(text: str, fmt: ToolFormat) -> tuple[str | None, list[ToolCall]]:
    """(the text around the calls, or None when there is none; the calls) of a reply; text that does not parse
    as calls stays text."""
    if fmt.name == "hermes":
        calls = [_call(json.loads(m.group(1)), fmt) for m in _HERMES.finditer(text) if _is_json(m.group(1))]
        if not calls or not all(calls):
            return text.strip() or None, []
        return _HERMES.sub("", text).strip() or None, calls
    if fmt.open:
        start = text.find(fmt.open)
        before, rest = (text[:start], text[start + len(fmt.open):]) if start >= 0 else (text, "")
    else:  # Llama 3.x: the whole reply is the calls, after an optional <|python_tag|>
        before, rest = "", text.strip().removeprefix("<|python_tag|>")
    values = _json_values(rest) if rest.lstrip().startswith(("{", "[")) else []
    items = values[0] if fmt.array and len(values) == 1 and isinstance(values[0], list) else values
    calls = [_call(v, fmt) for v in items]
    if not calls or not all(calls):
        return text.strip() or None, []
    return before.strip() or None, calls


def _call(obj: Any, fmt: ToolFormat) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(fmt.args_key, obj.get("arguments", obj.get("parameters", {})))
    return ToolCall(obj["name"], args if isinstance(args, str) else json.dumps(args))


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def _json_values(text: str) -> list:
    """The JSON values text holds one after another (separated by whitespace or ';'); [] if any part is not."""
    decoder, values, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i] in " \t\r\n;":
            i += 1
        if i == len(text):
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except ValueError:
            return []
        values.append(value)


class CallStream:
    """A streamed reply split into text to show now and calls: text before a call passes through (a possible
    start of the opening marker held back); from the call's opening on, the rest is held and parsed at the end.
    forced: the reply is a call from its first token."""

    def __init__(self, fmt: ToolFormat, forced: bool = False):
        self.fmt, self.held, self.in_call = fmt, "", forced
        self.marker = fmt.open.strip()

    def feed(self, text: str) -> str:
        """The part of text that can be shown as content now."""
        self.held += text
        if self.in_call:
            return ""
        if not self.marker:  # Llama 3.x: a reply that opens with JSON (or <|python_tag|>) is a call
            start = self.held.lstrip()
            if not start:
                return ""
            self.in_call = start.startswith(("{", "<|python_tag|>")) or "<|python_tag|>".startswith(start)
            return "" if self.in_call else self._take(len(self.held))
        at = self.held.find(self.marker)
        if at >= 0:
            self.in_call = True
            return self._take(at)
        return self._take(len(self.held) - held_back(self.held, [self.marker]))

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(the text left to show, the calls) at the end of the reply."""
        content, calls = parse_tool_calls(self.held, self.fmt) if self.in_call else (self.held, [])
        self.held = ""
        return content or "", calls

    def _take(self, n: int) -> str:
        piece, self.held = self.held[:n], self.held[n:]
        return piece
