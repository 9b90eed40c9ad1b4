"""KV cache types against f16 (llama.cpp's default): memory of the cache and teacher-forced agreement, the argmax
at every generated position of the reference fixtures' prompts with a q8_0 / q4_0 cache against an f16 one.

    python examples/kv_cache_types.py [--model smollm2-135m] [--backend numba-q8]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import pyggml
from pyggml.backends.registry import create

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
FIXTURE = {"smollm2-135m": "smollm2-135m-q4_1.reference.json", "gemma3-270m": "gemma3-270m-q4_k_m.reference.json"}
TYPES = [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "q4_0")]


def argmaxes(model, cases: list[dict]) -> np.ndarray:
    """The argmax at every generated position of every case, teacher-forced on its greedy continuation."""
    out = []
    for case in cases:
        model.reset()
        logits = model.eval(case["prompt_ids"] + case["greedy_ids"], all_logits=True)
        out.append(logits[len(case["prompt_ids"]) - 1:-1].argmax(-1))
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(FIXTURE))
    ap.add_argument("--backend", default="numba-q8")
    args = ap.parse_args()
    cases = json.loads((FIXTURES / FIXTURE[args.model]).read_text())["generate"]
    print(f"| {args.model} ({args.backend}) K/V | KV bytes | vs f16 | teacher-forced argmax = f16's |\n|---|---|---|---|")
    base = None
    for type_k, type_v in TYPES:
        model = pyggml.load(args.model, n_ctx=1024, type_k=type_k, type_v=type_v, backend=create(args.backend))
        got = argmaxes(model, cases)
        base = base or (model.cache.nbytes, got)
        print(f"| {type_k}/{type_v} | {model.cache.nbytes:,} | {model.cache.nbytes / base[0]:.3f}x | "
              f"{np.mean(got == base[1]):.3f} ({len(got)} positions) |", flush=True)


if __name__ == "__main__":
    main()
