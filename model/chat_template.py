"""Chat templates: the GGUF's Jinja template rendered as Hugging Face does, or an architecture's built-in."""
from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime

import jinja2
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


def render_chat(template: str, messages: Sequence[Mapping[str, str]], bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    """The prompt text for a conversation, rendered in a sandbox with HF's helpers."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(template).render(messages=list(messages), bos_token=bos_token, eos_token=eos_token,
                                                add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError as e:
        raise PyggmlError(f"chat template failed to render: {e}") from None


def render_chat_segments(template: str, messages: Sequence[Mapping[str, str]], bos_token: str = "",
                         eos_token: str = "", add_generation_prompt: bool = True) -> list[tuple[str, bool]]:
    """The prompt as (text, is the template's own) segments, each message's content apart: rendered with every
    content between two marks no message can hold, then cut at the marks. A template that trims content is
    matched by trimming it first; the segments join to render_chat's text whenever the template keeps content
    whole."""
    plain = render_chat(template, messages, bos_token, eos_token, add_generation_prompt)
    mark = f"\ue000{secrets.randbelow(10**18):018d}\ue001"  # private-use characters around random digits
    tried = []
    for trim in (False, True):
        marked = [{**m, "content": f"{mark}{m['content'].strip() if trim else m['content']}{mark}"}
                  for m in messages]
        parts = render_chat(template, marked, bos_token, eos_token, add_generation_prompt).split(mark)
        if "".join(parts) == plain:
            break
        tried.append(parts)
    else:
        parts = tried[0]
    if len(parts) % 2 == 0:
        raise PyggmlError("chat template: it cuts message content apart, which cannot then be kept as text")
    return [(part, i % 2 == 0) for i, part in enumerate(parts) if part]
