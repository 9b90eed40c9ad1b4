"""`pyggml generate MODEL PROMPT`: stream a continuation to the terminal."""
from __future__ import annotations

import argparse
import resource
import sys

from .options import add_model_options, add_sampling_options, load_model, max_tokens, sampling_kwargs

HELP = "generate text from a prompt, streamed as it is produced"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("prompt")
    add_sampling_options(p)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step")
    p.add_argument("--stats", action="store_true", help="print load time, speeds and cache size at the end")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_stats(model, timings: dict, load_seconds: float) -> None:
    """The run's figures, on stderr."""
    first = load_seconds + timings.get("prompt_seconds", 0.0)
    sys.stderr.write(f"\nload: {load_seconds:.2f} s | load to first token: {first:.2f} s | peak RSS: "
                     f"{peak_rss_mib():.0f} MiB | prompt: {timings.get('prompt_tokens', 0)} tokens, "
                     f"{timings.get('prompt_tokens_per_second', 0):.1f} tok/s | generated: "
                     f"{timings.get('generated_tokens', 0)} tokens, {timings.get('decode_tokens_per_second', 0):.1f}"
                     f" tok/s | KV cache: {model.cache.nbytes / 2**20:.1f} MiB ({model.cache.dtype.name})\n")


def run(args: argparse.Namespace) -> int:
    model = load_model(args)
    stream = model.generate(args.prompt, max_tokens(args, model), stream=True, stop=args.stop, kv_cache=not args.no_cache,
                            **sampling_kwargs(args))
    sys.stdout.write(args.prompt)
    try:
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write("\n[interrupted]")
    sys.stdout.write("\n")
    if args.stats:
        print_stats(model, stream.timings, model.load_seconds)
    return 0
