"""Time to first token of a request whose long system prompt an earlier, finished request evaluated (automatic
prefix caching: it evaluates only its own question), against the first request's.

    python examples/prefix_cache_ttft.py [--model smollm2-135m] [--backend numba-q8] [--system-tokens 1500]
"""
from __future__ import annotations

import argparse

import pyggml
from pyggml.backends.registry import create
from pyggml.model.runtime.engine import Engine
from pyggml.model.runtime.sampling import SamplingParams

TEXT = ("You are a helpful assistant. Answer briefly and cite the relevant rule by its number. Rule {i}: requests "
        "about topic {i} are answered with the facts of section {i}, never with guesses. ")


def ttft(engine: Engine, prompt: list[int]) -> float:
    """Seconds from submitting a greedy request to its first token (the engine stepping in this thread)."""
    req = engine.submit(prompt, 4, SamplingParams(temperature=0))
    engine.run_until_idle()
    return req.timings["first_token"] - req.timings["submitted"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--backend", default="numba-q8")
    ap.add_argument("--system-tokens", type=int, default=1500)
    args = ap.parse_args()
    model = pyggml.load(args.model, n_ctx=2048, backend=create(args.backend))
    engine = Engine(model, n_parallel=2, n_ctx=2048)
    for start in (0, 1000):  # the first round compiles the plans (and numba loads its kernels); the second counts
        system = model.tokenize("".join(TEXT.format(i=i) for i in range(start, start + 200)))[:args.system_tokens]
        prompts = [system + model.tokenize(f" Question: what does rule {i} say?", add_special=False) for i in (7, 12)]
        first = ttft(engine, prompts[0])
        hits = engine.prefix_hits
        second = ttft(engine, prompts[1])
    print(f"{args.model} ({args.backend}), a {len(system)}-token system prompt: the first request ({len(prompts[0])} "
          f"tokens) {first * 1e3:.0f} ms to its first token, the second ({len(prompts[1])} tokens, "
          f"{engine.prefix_hits - hits} from the prefix cache) {second * 1e3:.0f} ms ({second / first:.3f}x)")


if __name__ == "__main__":
    main()
