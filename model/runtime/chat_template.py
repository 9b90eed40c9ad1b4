"""Chat templates: the GGUF's Jinja template rendered as Hugging Face's render_jinja_template does (its sandbox,
loopcontrols, the {% generation %} tag, tojson without ASCII escapes, `tools` and `documents`), or an
architecture's built-in."""
from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox

from pyggml.graph.errors import PyggmlError

TEMPLATE_KEY = "tokenizer.chat_template"

# Built-in turn formats for files without a template, keyed by architecture (llama.cpp's fallbacks).
BUILTIN_TEMPLATES: dict[str, str] = {
    "gemma3": (
        "{{ bos_token }}"
        "{%- if messages[0]['role'] == 'system' -%}"
        "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
        "{%- for message in loop_messages -%}"
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
        "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
        "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
    ),
    "chatml": (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
    ),
}
DEFAULT_BUILTIN = "chatml"


def _raise(message: str) -> None:
    raise PyggmlError(f"chat template: {message}")


def template_source(metadata: Mapping, arch: str) -> tuple[str, str]:
    """(template text, where it came from): the file's own, else the architecture's built-in, else chatml."""
    if metadata.get(TEMPLATE_KEY):
        return metadata[TEMPLATE_KEY], "file"
    name = arch if arch in BUILTIN_TEMPLATES else DEFAULT_BUILTIN
    return BUILTIN_TEMPLATES[name], f"built-in {name}"


class GenerationTag(jinja2.ext.Extension):
    """HF's {% generation %}...{% endgeneration %}: it marks the assistant's tokens for training; rendering it gives
    its body."""
    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller: Any) -> str:
        return caller()


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """HF's tojson: json.dumps, non-ASCII kept and keys in their order (Jinja's own escapes HTML and sorts)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def _compiled(template: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(template)


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True, tools: Sequence[Mapping] | None = None,
                documents: Sequence[Mapping] | None = None) -> str:
    """The prompt text for a conversation (tools as JSON-schema function descriptions, as HF passes them)."""
    try:
        return _compiled(template).render(messages=list(messages), tools=tools, documents=documents,
                                          bos_token=bos_token, eos_token=eos_token,
                                          add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError as e:
        raise PyggmlError(f"chat template failed to render: {e}") from None


def render_chat_segments(template: str, messages: Sequence[Mapping[str, Any]], bos_token: str = "",
                         eos_token: str = "", add_generation_prompt: bool = True,
                         tools: Sequence[Mapping] | None = None) -> list[tuple[str, bool]]:
    """The prompt as (text, is the template's own) segments, each message's content apart: rendered with the
    content (less its outer whitespace, which a template may trim) between two marks no message can hold, then
    cut at the marks."""
    mark = f"\ue000{secrets.randbelow(10**18):018d}\ue001"  # private-use characters around random digits
    marked = [{**m, "content": _between(m["content"], mark)} if isinstance(m.get("content"), str) else m
              for m in messages]
    parts = render_chat(template, marked, bos_token, eos_token, add_generation_prompt, tools).split(mark)
    if len(parts) % 2 == 0:
        raise PyggmlError("chat template: it cuts message content apart, which cannot then be kept as text")
    return [(part, i % 2 == 0) for i, part in enumerate(parts) if part]


def _between(content: str, mark: str) -> str:
    """content with its non-blank core between two marks (whitespace alone holds no special token)."""
    core = content.strip()
    if not core:
        return content
    start = content.index(core)
    return f"{content[:start]}{mark}{core}{mark}{content[start + len(core):]}"
