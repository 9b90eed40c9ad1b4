"""Load test of `pyggml serve` through the openai client: N streamed requests at a given concurrency; time to
first token and tokens/s per request (median, p95), failures, and the KV blocks held afterwards.

    python examples/load_test.py [--model smollm2-135m] [--requests 200] [--concurrency 16] [--max-tokens 32]
        [--backend numba-q8]

Starts `pyggml serve` in a subprocess on 127.0.0.1 and a free port (or uses --url).
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai

TOPICS = ["the sea", "a robot", "autumn", "a small town", "coffee", "mountains", "a lost key", "the moon"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
        return json.loads(r.read())


def start_server(model: str, parallel: int, ctx: int, backend: str | None) -> tuple[subprocess.Popen, str]:
    """`pyggml serve` in a subprocess; returns it and its URL once /health answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pyggml", "serve", model, "--port", str(port), "--parallel",
                             str(parallel), "--ctx-size", str(ctx), "--queue", "256",
                             *(["--backend", backend] if backend else [])])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            health(url)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def one_request(client: openai.OpenAI, i: int, max_tokens: int) -> tuple[float, float, int]:
    """(time to first token, tokens/s after it, tokens) of one streamed chat request."""
    t0 = time.perf_counter()
    first, n = None, 0
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"Write a short poem about {TOPICS[i % len(TOPICS)]}."}],
        max_tokens=max_tokens, temperature=0.7, seed=i, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage:
            n = chunk.usage.completion_tokens
    end = time.perf_counter()
    first = first or end
    return first - t0, (n - 1) / max(end - first, 1e-9), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--url", default=None, help="a running server (default: start one)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--backend", default=None, help="the server's --backend, e.g. numba-q8 (default: its default)")
    args = ap.parse_args()
    proc, url = (None, args.url) if args.url else start_server(args.model, args.concurrency, args.ctx, args.backend)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            futures = [pool.submit(one_request, client, i, args.max_tokens) for i in range(args.requests)]
            results, failures = [], 0
            for f in futures:
                try:
                    results.append(f.result())
                except Exception as e:  # counted and shown
                    failures += 1
                    print("failure:", e, file=sys.stderr)
        wall = time.perf_counter() - t0
        ttft, rate, tokens = (np.array(x) for x in zip(*results)) if results else ([0], [0], [0])
        print(f"{args.requests} requests at concurrency {args.concurrency}, max_tokens {args.max_tokens}: "
              f"{wall:.1f} s, {np.sum(tokens)} tokens, {np.sum(tokens) / wall:.1f} tok/s aggregate, "
              f"{failures} failures")
        print(f"time to first token: median {np.median(ttft):.2f} s, p95 {np.percentile(ttft, 95):.2f} s")
        print(f"tokens/s per request: median {np.median(rate):.1f}, p95 (the slowest 5%: 5th percentile) "
              f"{np.percentile(rate, 5):.1f}")
        print(f"KV blocks held afterwards: {health(url)['kv_blocks_used']}")
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
