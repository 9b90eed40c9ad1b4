"""Prefill and decode of one model on several CPU backends, side by side in one run (repetitions interleaved
so that every backend sees the same machine state), next to the bare F32 mat-vec bound of the same weights.

    python examples/compare_backends.py smollm2-135m --backends numba-q8,numba -p 256 -n 64 -r 3
"""
from __future__ import annotations

import argparse
import platform

import numpy as np

import pyggml
from pyggml.backends import registry
from pyggml.model.tooling.bench import decode_tps, measure_bounds, prefill_tps


def cpu_name() -> str:
    """The processor's model name (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--backends", default="numba-q8,numba")
    parser.add_argument("-p", "--n-prompt", type=int, default=256)
    parser.add_argument("-n", "--n-gen", type=int, default=64)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    args = parser.parse_args()
    names = args.backends.split(",")
    models = {name: pyggml.load(args.model, backend=registry.create(name), n_ctx=args.n_prompt + args.n_gen + 8)
              for name in names}
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, models[names[0]].tokenizer.n_vocab, args.n_prompt).tolist()
    bounds = measure_bounds(models[names[-1]], args.repetitions)
    pp: dict[str, list[float]] = {n: [] for n in names}
    tg: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.repetitions + 1):  # the first round compiles plans and kernels: left out
        for name, model in models.items():
            p, t = prefill_tps(model, prompt), decode_tps(model, prompt[:args.n_gen])
            if rep:
                pp[name].append(p)
                tg[name].append(t)
    print(f"{args.model} on {cpu_name()}, {args.repetitions} repetitions (median tok/s)")
    print("| backend | pp%d | tg%d | pp vs %s | tg vs %s | tg vs bare F32 mat-vecs |" % (
        args.n_prompt, args.n_gen, names[-1], names[-1]))
    print("|---|---|---|---|---|---|")
    ref_pp, ref_tg = np.median(pp[names[-1]]), np.median(tg[names[-1]])
    for name in names:
        p, t = np.median(pp[name]), np.median(tg[name])
        print(f"| {name} | {p:.1f} | {t:.2f} | {p / ref_pp:.2f}x | {t / ref_tg:.2f}x | {t / bounds.matvec_tps:.2f}x |")
    print(f"bare bounds: {bounds.n_matvecs} F32 mat-vecs ({bounds.dense_bytes / 1e6:.1f} MB) = "
          f"{bounds.matvec_tps:.1f} tok/s; copy bandwidth {bounds.copy_gbps:.1f} GB/s")


if __name__ == "__main__":
    main()
