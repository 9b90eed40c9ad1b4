"""The `pyggml` command: one module per sub-command, each with `add_parser(sub)` and `run(args) -> int`."""
from __future__ import annotations

import argparse
import importlib
import sys

from pyggml.graph.errors import PyggmlError

# sub-command name -> module under pyggml.cli (each defines HELP, add_arguments(parser) and run(args))
COMMANDS: dict[str, str] = {
    "tokenize": "tokenize",
    "generate": "generate",
    "chat": "chat",
    "bench": "bench",
    "profile": "profile",
    "pull": "pull",
    "info": "info",
    "backends": "backends",
    "serve": "serve",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The parser with every sub-command registered from COMMANDS."""
    parser = _Parser(prog="pyggml", description="Run ggml-style graphs and GGUF models in Python.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"pyggml.cli.{module_name}")
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn pyggml errors into one line and exit code 1."""
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"pyggml.cli.{COMMANDS[args.command]}")
    try:
        return int(module.run(args) or 0)
    except PyggmlError as e:
        sys.stderr.write(f"pyggml {args.command}: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
