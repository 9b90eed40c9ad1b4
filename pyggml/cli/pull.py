"""`pyggml pull NAME`: download a reference model into the cache (once) and print its path."""
from __future__ import annotations

import argparse

from pyggml.model.tooling.pull import MODELS, pull

HELP = "download a known model into the cache (if missing) and print its path"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """NAME and the progress switch."""
    parser.add_argument("name", help=f"model name: {', '.join(MODELS)}")
    parser.add_argument("--quiet", action="store_true", help="show no progress bars")


def run(args: argparse.Namespace) -> int:
    """Pull and print the cached path."""
    print(pull(args.name, progress=not args.quiet))
    return 0
