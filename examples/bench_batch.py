"""Aggregate decode tokens/s of batched decode at several concurrencies, and KV memory paged vs preallocated;
with --weights, a decode step's weight products alone at each batch size (how far they let batching scale).

    python examples/bench_batch.py [--model smollm2-135m] [--batches 1 2 4 8 16] [--tokens 128] [--repeats 4]
    python examples/bench_batch.py --weights [--batches 1 2 4 8 16]
    python examples/bench_batch.py --backend numba-q8 [-ctk q8_0 -ctv q8_0]   (llama.cpp's 8-bit activations;
        with a quantized KV cache; f16 by default, as llama.cpp)
    python examples/bench_batch.py --ops [--batches 8]   (where a step's time goes, op by op)
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import pyggml
from pyggml import DType, compile as compile_plan, input_tensor, mul_mat, view
from pyggml.backends.registry import create
from pyggml.cli.options import add_cache_type_options, cache_types
from pyggml.model.runtime.batch import BatchContext, Entry
from pyggml.model.tooling.profile import placed_weights, step_plan

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "The best way to learn is",
           "In 1492, Columbus", "Water boils at", "My favourite food is", "The theory of relativity"]


def decode_rate(bc: BatchContext, prompts: list[list[int]], n_tokens: int) -> tuple[float, float]:
    """Prefill the prompts, then n_tokens greedy decode steps of all of them together; tokens/s over the steps
    that replayed a plan (a step that compiled one is left out), by the wall clock and by this process's CPU
    time (which a machine shared with other jobs inflates less)."""
    seqs = [bc.cache.new_sequence() for _ in prompts]
    logits = bc.step([Entry(s, p) for s, p in zip(seqs, prompts)])
    wall, cpu, timed = 0.0, 0.0, 0
    for _ in range(n_tokens):
        compiled = bc.n_compiled
        t0, c0 = time.perf_counter(), time.process_time()
        logits = bc.step([Entry(s, [int(np.argmax(row))]) for s, row in zip(seqs, logits)])
        if bc.n_compiled == compiled:
            wall, cpu, timed = wall + time.perf_counter() - t0, cpu + time.process_time() - c0, timed + 1
    for s in seqs:
        bc.cache.release(s)
    return len(prompts) * timed / wall, len(prompts) * timed / cpu


def op_times(model, n_seqs: int, n_tokens: int) -> dict[str, float]:
    """ms a step per op (weight products apart) over n_tokens profiled greedy steps of n_seqs sequences."""
    bc = context(model, n_seqs, n_tokens)
    seqs = [bc.cache.new_sequence() for _ in range(n_seqs)]
    logits = bc.step([Entry(s, p) for s, p in zip(seqs, prompts(model, n_seqs))])
    totals: dict[str, float] = {}
    for _ in range(n_tokens):
        logits = bc.step([Entry(s, [int(np.argmax(row))]) for s, row in zip(seqs, logits)], profile=True)
        for node, t in bc.last_plan.last_profile:
            key = "weight products" if node.op == "mul_mat" and node.srcs[0].is_leaf else node.op
            totals[key] = totals.get(key, 0.0) + 1e3 * t / n_tokens
    for s in seqs:
        bc.cache.release(s)
    return totals


def print_op_times(model, batches: list[int], n_tokens: int) -> None:
    """Where a step's time goes at each batch size, next to one sequence (time per node, as profiled)."""
    runs = {b: op_times(model, b, n_tokens) for b in sorted({1, *batches})}
    ops = sorted(runs[max(runs)], key=lambda op: -runs[max(runs)][op])
    print("| op | " + " | ".join(f"{b} sequence{'s' * (b > 1)} (ms a step)" for b in runs) + " |\n|---|"
          + "---|" * len(runs))
    for op in [*ops, "all ops"]:
        cells = [sum(r.values()) if op == "all ops" else r.get(op, 0.0) for r in runs.values()]
        print(f"| {op} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


def paired_rates(model, b: int, n_tokens: int, second_first: bool) -> list[tuple[float, float]]:
    """[1-sequence rates, b-sequence rates], run in this order or (second_first) the other: pairs alternate the
    order, so that a drift of the machine's speed within a pair favours neither side (two runs in a row of the
    same thing differ by up to 20% on a shared machine)."""
    order = (b, 1) if second_first else (1, b)
    runs = [decode_rate(context(model, n, n_tokens), prompts(model, n), n_tokens) for n in order]
    return runs[::-1] if second_first else runs


def context(model, n_seqs: int, n_tokens: int) -> BatchContext:
    """A batch context with room for n_seqs sequences of a short prompt and n_tokens more."""
    return model.batch_context(n_seqs * -(-(n_tokens + 32) // 16))


def prompts(model, n_seqs: int) -> list[list[int]]:
    return [model.tokenize(PROMPTS[i % len(PROMPTS)]) for i in range(n_seqs)]


def kv_memory(model, bc: BatchContext, lengths: list[int]) -> tuple[int, int]:
    """Bytes of K/V held for sequences of these lengths: paged (blocks in use) and preallocated (n_ctx each)."""
    seqs = [bc.cache.new_sequence() for _ in lengths]
    for s, n in zip(seqs, lengths):
        bc.cache.reserve(s, n)
    paged = bc.cache.nbytes_used
    for s in seqs:
        bc.cache.release(s)
    return paged, len(lengths) * model.cache.nbytes


def weight_plan(model, n_rows: int):
    """A plan holding only a decode step's weight products, each with n_rows activation rows, on the model's
    backend (the kernels a batched step of n_rows sequences runs), and its input values. Each product's output
    is one element of it, so that a run downloads nothing big."""
    weights = list(placed_weights(step_plan(model.context, [0])))
    xs = {k: input_tensor((n_rows, k), DType.F32, f"x_{k}") for k in {w.shape[-1] for w in weights}}
    plan = compile_plan([view(mul_mat(w, xs[w.shape[-1]]), (1,)) for w in weights], model.backend)
    return plan, {x: np.ones(x.shape, np.float32) for x in xs.values()}


def print_weight_products(model, batches: list[int], repeats: int) -> None:
    """A decode step's weight products at each batch size, against one row (the step's ratio cannot pass it);
    the sizes take turns, so that a drift of the machine's speed reaches them all."""
    plans = {b: weight_plan(model, b) for b in sorted({1, *batches})}
    times = {b: [] for b in plans}
    for _ in range(repeats + 1):  # the first round loads the kernels
        for b, (plan, values) in plans.items():
            t0 = time.perf_counter()
            plan.run(values)
            times[b].append(time.perf_counter() - t0)
    one = float(np.median(times[1][1:]))
    print(f"| rows | weight products (ms, median of {repeats}) | vs 1 row | rows per 1-row time |\n|---|---|---|---|")
    for b in batches:
        t = float(np.median(times[b][1:]))
        print(f"| {b} | {t * 1e3:.2f} | {t / one:.2f}x | {b * one / t:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("-r", "--repeats", type=int, default=2,
                    help="pairs of runs per batch size, alternating which runs first (medians reported)")
    ap.add_argument("--weights", action="store_true", help="time the weight products alone instead")
    ap.add_argument("--ops", action="store_true", help="where a step's time goes, op by op, instead")
    add_cache_type_options(ap)
    ap.add_argument("--backend", default="numba-q8", help="backend name (see `pyggml backends`), e.g. numba")
    args = ap.parse_args()
    model = pyggml.load(args.model, n_ctx=args.ctx, backend=create(args.backend), **cache_types(args))
    if args.weights:
        return print_weight_products(model, args.batches, 10 * args.repeats)
    if args.ops:
        return print_op_times(model, args.batches, args.tokens)
    print("| sequences | aggregate decode tok/s (wall) | per sequence | 1 sequence next to it | ratio | "
          "ratio by CPU time |\n|---|---|---|---|---|---|")
    decode_rate(context(model, 1, 8), prompts(model, 1), 8)  # warm-up: numba loads its kernels
    for b in args.batches:  # each run is paired with a 1-sequence run made next to it, under the same load
        pairs = [paired_rates(model, b, args.tokens, r % 2 == 1) for r in range(args.repeats)]
        one, rate = (float(np.median([p[i][0] for p in pairs])) for i in (0, 1))
        ratio, cpu_ratio = (float(np.median([p[1][i] / p[0][i] for p in pairs])) for i in (0, 1))
        print(f"| {b} | {rate:.1f} | {rate / b:.1f} | {one:.1f} | {ratio:.2f}x | {cpu_ratio:.2f}x |", flush=True)
    lengths = np.random.default_rng(0).integers(16, args.ctx, 16).tolist()
    bc = model.batch_context(sum(-(-n // 16) for n in lengths))
    paged, full = kv_memory(model, bc, lengths)
    print(f"\nKV memory of 16 sequences of {sum(lengths)} tokens in all (lengths {min(lengths)}..{max(lengths)}), "
          f"n_ctx {model.n_ctx}: paged {paged / 2**20:.1f} MiB, preallocated {full / 2**20:.1f} MiB "
          f"({full / paged:.1f}x)")


if __name__ == "__main__":
    main()
