"""Per-token cost of pipeline stages on Ray against one process (docs/benchmarks.md): decode ms per token in one
process, N stages in this process, and N stages as Ray actors on a local cluster of N nodes, their steps as a
compiled graph and as plain actor calls; the bytes a decode step moves and the time to pickle them; a bare hop
between two actors on two nodes, as plain actor calls and as a compiled graph, bare and shaped as a decode step
(no compute).

    python examples/bench_stages.py --model smollm2-135m --stages 2 -n 64
"""
from __future__ import annotations

import argparse
import pickle
import statistics
import time

import numpy as np
import ray
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pyggml.backends.registry import create
from pyggml.model.runtime.batch import Entry
from pyggml.model.model import Model
from pyggml.model.runtime.ray_stages import RayPipeline

PROMPT = "The history of the printing press begins"


def decode_times(contexts: dict, prompt: list[int], rounds: int, steps: int = 8) -> dict[str, list[float]]:
    """Seconds of one-token decode steps (greedy after the prompt) of each context, the contexts taking turns
    for `steps` steps a round, so that a loaded machine weighs on them alike; the first round is a warm-up."""
    times = {name: [] for name in contexts}
    tokens = {}
    for name, context in contexts.items():
        context.reset()
        tokens[name] = int(np.argmax(context.eval_prompt(prompt)[-1]))
    for r in range(rounds + 1):
        for name, context in contexts.items():
            for _ in range(steps):
                t0 = time.perf_counter()
                logits = context.eval([tokens[name]])
                if r:
                    times[name].append(time.perf_counter() - t0)
                tokens[name] = int(np.argmax(logits[-1]))
    return times


def decode_step(model: Model, prompt: list[int]):
    """A decode step's inputs after the prompt (one sequence)."""
    bc = model.batch_context(-(-(len(prompt) + 1) // 16) + 1)
    seq = bc.cache.new_sequence()
    bc.step([Entry(seq, prompt)])
    return bc.prepare([Entry(seq, [1])])[0]


def step_bytes_moved(model: Model, prompt: list[int]) -> dict[str, tuple[int, float]]:
    """Pickled bytes of one decode step's inputs (sent to every stage), of the hidden rows between two stages,
    and of the logits back, each with the µs pickle takes for it (median of 200)."""
    arrays = decode_step(model, prompt)
    hidden = np.zeros((len(arrays.tokens), model.hparams.n_embd), np.float32)
    logits = np.zeros((1, model.hparams.n_vocab), np.float32)
    def pickled(x) -> tuple[int, float]:
        samples = []
        for _ in range(200):
            t0 = time.perf_counter()
            n = len(pickle.dumps(x, protocol=5))
            samples.append(time.perf_counter() - t0)
        return n, round(statistics.median(samples) * 1e6, 1)
    return {name: pickled(x) for name, x in (("step inputs", arrays), ("hidden rows", hidden), ("logits", logits))}


def bytes_per_token(moved: dict[str, tuple[int, float]], n_stages: int) -> dict[str, int]:
    """Bytes a decode token sends over Ray on each path: plain calls send the inputs in every stage's call and
    each stage's rows back to the driver, which sends them on; a compiled graph writes the inputs once (Ray
    pushes them to each other node that reads them) and each stage's rows straight to the next."""
    inputs, hidden, logits = (moved[k][0] for k in ("step inputs", "hidden rows", "logits"))
    return {"plain calls": n_stages * inputs + 2 * (n_stages - 1) * hidden + logits,
            "compiled graph": inputs + (n_stages - 1) * hidden + logits}


class Echo:
    """An actor that hands its argument back, or as a stage does, takes (key, step, rows) and gives n floats."""

    def f(self, x):
        return x

    def stage(self, key, step, hidden, n: int):
        return np.zeros(n, np.float32)


def bare_hops_us(n_embd: int, n_vocab: int, step, n: int = 300) -> dict[str, float]:
    """Median µs of driver -> a -> b -> driver with n_embd floats, a and b on two nodes: plain calls and a
    compiled graph; and of the same hops shaped as a step with no compute (the step's inputs to both, n_embd
    floats a -> b, n_vocab floats back)."""
    group = placement_group([{"CPU": 1}] * 2, strategy="STRICT_SPREAD")
    ray.get(group.ready())
    a, b = (ray.remote(Echo).options(num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(
        group, placement_group_bundle_index=i)).remote() for i in range(2))
    x = np.ones(n_embd, np.float32)

    def timed(call) -> float:
        for _ in range(20):
            call()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples) * 1e6

    out = {"plain chain": timed(lambda: ray.get(b.f.remote(a.f.remote(x)))),
           "plain one actor": timed(lambda: ray.get(a.f.remote(x)))}
    try:
        from ray.dag import InputNode
        with InputNode() as inp:
            dag = b.f.bind(a.f.bind(inp))
        compiled = dag.experimental_compile()
        out["compiled chain"] = timed(lambda: ray.get(compiled.execute(x)))
        compiled.teardown()
        with InputNode() as inp:
            dag = b.stage.bind(inp[0], inp[1], a.stage.bind(inp[0], inp[1], None, n_embd), n_vocab)
        compiled = dag.experimental_compile()
        out["compiled step-shaped"] = timed(lambda: np.array(ray.get(compiled.execute(0, step))))
        compiled.teardown()
    except Exception as e:  # compiled graphs are experimental: say why they did not run
        out["compiled chain"] = f"failed: {type(e).__name__}: {e}"
    out["plain step-shaped"] = timed(lambda: ray.get(b.stage.remote(0, step, a.stage.remote(0, step, None, n_embd),
                                                                     n_vocab)))
    for actor in (a, b):
        ray.kill(actor)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("-n", type=int, default=64, help="decode steps timed per configuration")
    p.add_argument("--backend", default="numba-q8")
    p.add_argument("--address", default=None, help="an existing cluster (default: a local one of --stages nodes)")
    args = p.parse_args()
    cluster = None
    if args.address is None:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
        for _ in range(args.stages - 1):
            cluster.add_node(num_cpus=2)
        args.address = cluster.address
    ray.init(address=args.address, log_to_driver=False)
    one = Model(args.model, backend=create(args.backend), n_ctx=512)
    local = Model(args.model, backend=create(args.backend), n_ctx=512, stages=args.stages)
    staged = Model(args.model, backend=create(args.backend), n_ctx=512, stages=args.stages, ray=args.address)
    plain = Model(args.model, backend=create(args.backend), n_ctx=512)
    plain.pipeline = RayPipeline(args.address, plain.gguf, plain.hparams, staged.pipeline.ranges, plain.backend,
                                 compiled=False)
    plain.context = plain.make_context(512)
    prompt = one.tokenize(PROMPT)
    where = f"{staged.pipeline.strategy}, {staged.pipeline.describe()}"
    contexts = {"one process": one.context,
                f"{args.stages} stages in one process": local.context,
                f"{args.stages} stages on Ray, {staged.pipeline.calls} ({where})": staged.context,
                f"{args.stages} stages on Ray, {plain.pipeline.calls} ({where})": plain.context}
    for name, times in decode_times(contexts, prompt, args.n // 8).items():
        print(f"{name}: best {min(times) * 1e6:.0f} µs, median {statistics.median(times) * 1e6:.0f} µs per token")
    staged.close()
    plain.close()
    moved = step_bytes_moved(one, prompt)
    print("pickled bytes and µs per decode step:", moved)
    print("bytes per decode token over Ray:", bytes_per_token(moved, args.stages))
    print("bare hops, µs:", bare_hops_us(one.hparams.n_embd, one.hparams.n_vocab, decode_step(one, prompt)))
    ray.shutdown()
    if cluster:
        cluster.shutdown()


if __name__ == "__main__":
    main()
