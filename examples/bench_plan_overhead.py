"""Plan overhead: a compiled plan of 1,000 small elementwise nodes vs the same NumPy ufunc calls in a loop.

    python examples/bench_plan_overhead.py [--nodes 1000] [--repeats 300]

Four chains of 250 nodes over arrays of 64, 128, 192 and 256 float32 elements cycle through
add/mul/sub by a constant, neg, tanh and square. The plan's time per run is compared with two
direct loops over the very same ufuncs and sizes: with preallocated output buffers passed positionally
(the cheapest way to call a ufunc from Python: the strict baseline) and allocating a new array per call (plain NumPy code).
Times are the best of `repeats` runs; the ratio is plan / strict baseline.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np

import pyggml as pg

SIZES = (64, 128, 192, 256)
# (graph op, the NumPy ufunc its kernel calls, takes the constant operand)
CYCLE: list[tuple[Callable, np.ufunc, bool]] = [
    (pg.add, np.add, True), (pg.tanh, np.tanh, False), (pg.mul, np.multiply, True), (pg.neg, np.negative, False),
    (pg.sub, np.subtract, True), (pg.sqr, np.square, False),
]


def build(n_nodes: int) -> tuple[list[pg.Tensor], list[tuple[np.ufunc, int, bool]]]:
    """The chains as graph outputs, and the list of (ufunc, chain, binary) calls in the plan's order."""
    per_chain = n_nodes // len(SIZES)
    outputs, calls = [], []
    for chain, size in enumerate(SIZES):
        t = pg.input_tensor((size,), name=f"x{chain}")
        c = pg.from_numpy(np.full(size, 0.5, np.float32), name=f"c{chain}")
        for i in range(per_chain):
            op, ufunc, binary = CYCLE[i % len(CYCLE)]
            t = op(t, c) if binary else op(t)
            calls.append((ufunc, chain, binary))
        outputs.append(t)
    return outputs, calls


def cpu_name() -> str:
    """The CPU model and count, as /proc/cpuinfo names it where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{os.cpu_count()} x {model}"


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """The fastest of `repeats` timed calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()

    outputs, calls = build(args.nodes)
    plan = pg.compile(outputs)
    inputs = {f"x{i}": np.linspace(-1, 1, size, dtype=np.float32) for i, size in enumerate(SIZES)}
    plan.set_inputs(inputs)
    assert len(plan.steps) == len(calls)

    consts = [np.full(size, 0.5, np.float32) for size in SIZES]
    bufs = [np.empty(size, np.float32) for size in SIZES]
    # the strict baseline: each call's operands and preallocated output bound beforehand, out positional
    bound = [(ufunc, (bufs[chain], consts[chain], bufs[chain]) if binary else (bufs[chain], bufs[chain]))
             for ufunc, chain, binary in calls]

    def direct_out() -> None:
        for ufunc, operands in bound:
            ufunc(*operands)

    def direct_alloc() -> None:
        values = [inputs[f"x{i}"] for i in range(len(SIZES))]
        for ufunc, chain, binary in calls:
            values[chain] = ufunc(values[chain], consts[chain]) if binary else ufunc(values[chain])

    def plan_steps() -> None:
        plan.run()

    # the plan computes what the direct loop computes
    for i, size in enumerate(SIZES):
        np.copyto(bufs[i], inputs[f"x{i}"])
    direct_out()
    for got, want in zip(plan.run(), bufs):
        np.testing.assert_allclose(got, want, rtol=1e-6)

    for fn in (direct_out, direct_alloc, plan_steps):  # warm up
        best_of(20, fn)
    t_out = best_of(args.repeats, direct_out)
    t_alloc = best_of(args.repeats, direct_alloc)
    t_plan = best_of(args.repeats, plan_steps)
    n = len(calls)
    print(f"machine: {cpu_name()}, Python {platform.python_version()}, "
          f"NumPy {np.__version__}")
    print(f"{n} elementwise nodes, arrays of {'/'.join(map(str, SIZES))} float32, best of {args.repeats} runs")
    print(f"direct NumPy loop, out buffers  : {t_out * 1e3:8.3f} ms  ({t_out / n * 1e9:6.0f} ns/call)")
    print(f"direct NumPy loop, allocating   : {t_alloc * 1e3:8.3f} ms  ({t_alloc / n * 1e9:6.0f} ns/call)")
    print(f"compiled plan (Plan.run)        : {t_plan * 1e3:8.3f} ms  ({t_plan / n * 1e9:6.0f} ns/node)")
    print(f"ratio plan / direct out buffers : {t_plan / t_out:8.2f}x  (target <= 1.5x)")
    print(f"ratio plan / direct allocating  : {t_plan / t_alloc:8.2f}x")


if __name__ == "__main__":
    main()
