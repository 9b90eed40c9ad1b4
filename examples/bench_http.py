"""What HTTP costs: N streams through `pyggml serve` (the openai client) against the same N requests on the
engine in-process, and against one stream; same prompts, sampling settings and token counts (end-of-generation
banned, so every request runs to max_tokens).

    python examples/bench_http.py [--model smollm2-135m] [--streams 8] [--tokens 64] [--backend numba-q8]

The engine runs first in this process, then the server in a subprocess on 127.0.0.1 (never both at once).
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from load_test import start_server

from pyggml.backends.registry import create
from pyggml.model.runtime.engine import Engine
from pyggml.model.model import Model
from pyggml.model.runtime.sampling import SamplingParams

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "The best way to learn is",
           "In 1492, Columbus", "Water boils at", "My favourite food is", "The theory of relativity"]
TEMPERATURE = 0.8


def in_process(model: Model, n: int, tokens: int, bias: dict[int, float]) -> tuple[float, float]:
    """(tokens/s, CPU seconds a token) of n requests through the engine in this process, after a warm-up round
    of the same lengths (which compiles the step plans of every length bucket)."""
    engine = Engine(model, n_parallel=n, n_ctx=512)
    sampling = SamplingParams(temperature=TEMPERATURE, top_k=0, top_p=1.0, min_p=0.0, logit_bias=bias)
    rate, cpu = 0.0, 0.0
    for _ in range(2):
        reqs = [engine.submit(model.tokenize(PROMPTS[i % len(PROMPTS)]), tokens, sampling) for i in range(n)]
        t0, c0 = time.perf_counter(), time.process_time()
        engine.run_until_idle()
        done = sum(len(r.tokens) for r in reqs)
        rate, cpu = done / (time.perf_counter() - t0), (time.process_time() - c0) / done
    return rate, cpu


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process so far (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_stream(client: openai.OpenAI, i: int, tokens: int, bias: dict[str, float]) -> int:
    """Completion tokens of one streamed completion."""
    n = 0
    for chunk in client.completions.create(model="m", prompt=PROMPTS[i % len(PROMPTS)], max_tokens=tokens,
                                           temperature=TEMPERATURE, logit_bias=bias, stream=True,
                                           stream_options={"include_usage": True}):
        n = chunk.usage.completion_tokens if chunk.usage else n
    return n


def through_http(url: str, pid: int, n: int, tokens: int, bias: dict[str, float]) -> tuple[float, float, float]:
    """(tokens/s, the server's and this client's CPU seconds a token) of n concurrent streams."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    with ThreadPoolExecutor(n) as pool:
        t0, c0, s0 = time.perf_counter(), time.process_time(), cpu_seconds(pid)
        total = sum(pool.map(lambda i: one_stream(client, i, tokens, bias), range(n)))
    return (total / (time.perf_counter() - t0), (cpu_seconds(pid) - s0) / total,
            (time.process_time() - c0) / total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--backend", default="numba-q8")
    args = ap.parse_args()
    model = Model(args.model, n_ctx=512, backend=create(args.backend))
    bias = {t: -100.0 for t in model.tokenizer.eog_ids}
    engine_rate, engine_cpu = in_process(model, args.streams, args.tokens, bias)
    del model
    proc, url = start_server(args.model, args.streams, 512, args.backend)
    try:
        http_bias = {str(t): b for t, b in bias.items()}
        through_http(url, proc.pid, args.streams, args.tokens, http_bias)  # warm-up: compiles the step plans
        one = through_http(url, proc.pid, 1, args.tokens, http_bias)
        many = through_http(url, proc.pid, args.streams, args.tokens, http_bias)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("| | tok/s | server (engine) CPU ms a token | client CPU ms a token |\n|---|---|---|---|")
    print(f"| {args.streams} requests, engine in-process | {engine_rate:.0f} | {engine_cpu * 1e3:.2f} | - |")
    for label, (rate, server_cpu, client_cpu) in (("1 stream", one), (f"{args.streams} streams", many)):
        print(f"| {label} through HTTP | {rate:.0f} | {server_cpu * 1e3:.2f} | {client_cpu * 1e3:.2f} |")
    print(f"{args.streams} streams through HTTP / in-process: {many[0] / engine_rate:.2f}x; "
          f"/ 1 stream: {many[0] / one[0]:.2f}x")


if __name__ == "__main__":
    main()
