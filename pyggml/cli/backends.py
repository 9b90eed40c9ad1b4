"""`pyggml backends`: the backends this machine can run, and why the others cannot."""
from __future__ import annotations

import argparse
import json

from pyggml.backends.registry import available, probe

HELP = "list the available backends (built-in and plugins) and why others are not available"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Only the output format."""
    parser.add_argument("--json", action="store_true", help="print {name: {target, available, reason}} as JSON")


def run(args: argparse.Namespace) -> int:
    """Print one line per backend: name, where it comes from, available or the reason not."""
    targets, reasons = available(), probe()
    if args.json:
        print(json.dumps({n: {"target": targets[n], "available": reasons[n] is None, "reason": reasons[n]}
                          for n in targets}, indent=2))
        return 0
    for name, target in targets.items():
        print(f"{name:12s} {'available' if reasons[name] is None else 'unavailable: ' + reasons[name]:50s} {target}")
    return 0
