"""Aggregate tokens/s of `serve --replicas` with 1 and with 2 replicas on a local Ray cluster of two nodes of
one CPU each (a replica per core), the same streamed chat requests as examples/load_test.py.

    python examples/bench_replicas.py [--model smollm2-135m] [--requests 24] [--concurrency 8] [--max-tokens 32]
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import ray
from ray import serve
from ray.cluster_utils import Cluster

from load_test import free_port, one_request
from pyggml.model.tooling.pull import resolve_model
from pyggml.server.replicas import deploy


def aggregate_tps(url: str, requests: int, concurrency: int, max_tokens: int) -> float:
    """Tokens of all requests over the wall time, requests `concurrency` at a time."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    one_request(client, 0, 4)  # warm-up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(n for _, _, n in pool.map(lambda i: one_request(client, i, max_tokens), range(requests)))
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--backend", default="numba-q8")
    args = ap.parse_args()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    path = str(resolve_model(args.model))
    try:
        for n in (1, 2):
            port = free_port()
            deploy(path, "m", n, "127.0.0.1", port, {"backend": [args.backend], "n_ctx": 512,
                                                    "parallel": args.concurrency})
            tps = aggregate_tps(f"http://127.0.0.1:{port}", args.requests, args.concurrency, args.max_tokens)
            print(f"{n} replica(s): {tps:.1f} tok/s aggregate ({args.requests} requests, concurrency "
                  f"{args.concurrency}, max_tokens {args.max_tokens})", flush=True)
            serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
