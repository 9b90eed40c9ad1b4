"""Generate text with a GGUF model, streaming it to the terminal.

    python examples/generate.py "The capital of France is" --max-tokens 64
    python examples/generate.py --model gemma3-270m "Write a haiku about graphs"
    python examples/generate.py --backend numba "..."   (float32 products, as the float32 reference)
"""
from __future__ import annotations

import argparse
import sys

import pyggml
from pyggml.backends.registry import create

DEFAULT_PROMPT = "Quantum mechanics is a fundamental theory in physics that"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT)
    parser.add_argument("--model", default="smollm2-135m", help="a GGUF path or a known name (pulled on first use)")
    parser.add_argument("--max-tokens", "-n", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn of the chat template")
    parser.add_argument("--backend", default="numba-q8",
                        help="numba-q8 (the default and fastest CPU backend: llama.cpp's 8-bit activations), "
                             "numba (float32 products) or numpy; see `pyggml backends`")
    args = parser.parse_args()
    try:
        model = pyggml.load(args.model, backend=create(args.backend))
        options = dict(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed, stream=True)
        if args.chat:
            pieces = model.chat([{"role": "user", "content": args.prompt}], **options)
        else:
            sys.stdout.write(args.prompt)
            pieces = model.generate(args.prompt, **options)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    except pyggml.PyggmlError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
