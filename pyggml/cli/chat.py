"""`pyggml chat MODEL`: a conversation through the model's chat template, the KV cache kept between turns."""
from __future__ import annotations

import argparse
import sys

from .options import add_model_options, add_sampling_options, load_model, max_tokens, sampling_kwargs

HELP = "talk with a model through its chat template (Ctrl-C stops a reply; /exit or end of input quits)"
EXIT_COMMANDS = frozenset({"/exit", "/quit"})


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    add_sampling_options(p)
    p.add_argument("--system", help="a system message that opens the conversation")


def read_line(prompt: str) -> str | None:
    """The user's next line (prompted on a terminal), or None at the end of input or on Ctrl-C."""
    try:
        if sys.stdin.isatty():
            return input(prompt)
        line = sys.stdin.readline()
        return line.rstrip("\r\n") if line else None
    except (EOFError, KeyboardInterrupt):
        return None


def reply(model, messages: list[dict], args: argparse.Namespace) -> str:
    """Stream the assistant's answer to the conversation; Ctrl-C keeps what was said so far."""
    stream = model.chat(messages, max_tokens=max_tokens(args, model), stream=True, **sampling_kwargs(args))
    pieces: list[str] = []
    try:
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
            pieces.append(piece)
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(pieces)


def run(args: argparse.Namespace) -> int:
    model = load_model(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    while (line := read_line("> ")) is not None and line.strip() not in EXIT_COMMANDS:
        if line.strip():
            messages.append({"role": "user", "content": line})
            messages.append({"role": "assistant", "content": reply(model, messages, args)})
    return 0
