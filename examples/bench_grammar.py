"""What constrained decoding costs: the grammar masks per step at each batch size (computed in a thread while the
forward step runs; how long the step then still waits for them), applying them, aggregate decode of constrained
sequences against unconstrained ones, and compiling a new JSON schema against a cached one.

    python examples/bench_grammar.py [--model smollm2-135m] [--batches 1 8] [--tokens 64] [--backend numba-q8]
        [--sync]   (the masks computed before the step instead of during it, to see what the overlap saves)
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import Future

import pyggml
from pyggml.model.runtime import engine as engine_module
from pyggml.model.runtime.engine import Engine
from pyggml.model.runtime.grammar import GrammarSpec
from pyggml.model.runtime.sampling import SamplingParams

PROMPTS = ["List some people as JSON.", "People and their ages, as JSON:", "Write JSON about a family.",
           "Give a JSON list of users.", "JSON of the team:", "Characters of a story in JSON:",
           "Customers, as JSON:", "Staff list (JSON):"]
ITEM = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                         "city": {"type": "string", "maxLength": 16}},
        "required": ["name", "age", "city"], "additionalProperties": False}
LONG = {"type": "array", "items": ITEM, "minItems": 1000}  # never complete within the tokens asked for


class Timings:
    """Wraps a model's grammar calls to time them: masks (in the worker thread), the wait for them after the
    step, and applying them to logits."""

    def __init__(self, model, sync: bool):
        self.compute = self.compute_cpu = self.wait = self.apply = 0.0
        self.steps = 0
        grammars, masks, start = model.grammars, model.grammars.masks, model.grammars.start_masks
        apply = engine_module.apply_mask

        def timed_masks(constraints):
            t0, c0 = time.perf_counter(), time.process_time()
            out = masks(constraints)
            self.compute += time.perf_counter() - t0
            self.compute_cpu += time.process_time() - c0  # this process's, all threads (--sync: the masks')
            return out

        def timed_start(constraints):
            self.steps += 1
            if not sync:
                return Waited(start(constraints), self)
            done = Future()
            done.set_result(timed_masks(constraints))
            return done

        def timed_apply(logits, bits):
            t0 = time.perf_counter()
            out = apply(logits, bits)
            self.apply += time.perf_counter() - t0
            return out

        grammars.masks, grammars.start_masks, engine_module.apply_mask = timed_masks, timed_start, timed_apply


class Waited:
    def __init__(self, future, timings: Timings):
        self.future, self.timings = future, timings

    def result(self):
        t0 = time.perf_counter()
        out = self.future.result()
        self.timings.wait += time.perf_counter() - t0
        return out


def run(engine: Engine, n: int, tokens: int, grammar: GrammarSpec | None) -> tuple[float, float, int]:
    """(wall seconds, this process's CPU seconds, tokens) of n sequences decoding `tokens` tokens each together
    (end tokens banned): the CPU time is less inflated by a machine shared with other jobs."""
    model = engine.model
    no_end = {t: -100.0 for t in model.tokenizer.eog_ids}
    sampling = SamplingParams(temperature=0, logit_bias=no_end)
    prompts = [model.prompt_ids(model.apply_chat_template([{"role": "user", "content": p}])) for p in PROMPTS[:n]]
    t0, c0 = time.perf_counter(), time.process_time()
    requests = [engine.submit(p, tokens, sampling, grammar=grammar) for p in prompts]
    engine.run_until_idle()
    return time.perf_counter() - t0, time.process_time() - c0, sum(len(r.tokens) for r in requests)


def compile_times(model) -> tuple[float, float, float]:
    """ms to compile a schema never seen, to compile it again (cached), and to start a sequence's matcher."""
    schema = {**ITEM, "properties": {**ITEM["properties"], f"field_{time.time_ns()}": {"type": "boolean"}}}
    spec = GrammarSpec.of("json_schema", schema)
    t0 = time.perf_counter()
    model.grammars.compile(spec)
    t1 = time.perf_counter()
    model.grammars.compile(spec)
    t2 = time.perf_counter()
    model.grammars.matcher(spec)
    t3 = time.perf_counter()
    return 1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--sync", action="store_true", help="compute the masks before the step, not during it")
    args = parser.parse_args()
    model = pyggml.load(args.model, n_ctx=512, **({"backend": args.backend} if args.backend else {}))
    t0 = time.perf_counter()
    model.grammars  # noqa: B018 (built on first use: llguidance's tokenizer over the vocabulary)
    print(f"{args.model}: vocabulary {model.tokenizer.n_vocab}, llguidance tokenizer built in "
          f"{time.perf_counter() - t0:.2f} s")
    print("compile a new schema %.2f ms, cached %.3f ms, a matcher %.2f ms" % compile_times(model))
    timings, spec = Timings(model, args.sync), GrammarSpec.of("json_schema", LONG)
    for n in args.batches:
        engine = Engine(model, n_parallel=n, n_ctx=512)
        run(engine, n, args.tokens, None)  # compiles the plans of every shape the runs step through
        free_s, free_cpu, free_tokens = run(engine, n, args.tokens, None)
        timings.__dict__.update(compute=0.0, compute_cpu=0.0, wait=0.0, apply=0.0, steps=0)
        held_s, held_cpu, held_tokens = run(engine, n, args.tokens, spec)
        steps = max(timings.steps, 1)
        step_ms, step_cpu = 1e3 * held_s / steps, 1e3 * held_cpu / steps
        print(f"{n} sequences: unconstrained {free_tokens / free_s:.1f} tok/s (CPU time: "
              f"{free_tokens / free_cpu:.1f}), constrained {held_tokens / held_s:.1f} tok/s (CPU time: "
              f"{held_tokens / held_cpu:.1f}), {free_s / held_s * held_tokens / free_tokens:.2f}x "
              f"({free_cpu / held_cpu * held_tokens / free_tokens:.2f}x by CPU time); "
              f"masks {1e3 * timings.compute / steps:.2f} ms a step ({1e3 * timings.compute_cpu / steps:.2f} ms "
              f"of CPU time; still waited for after the step: "
              f"{1e3 * timings.wait / steps:.2f} ms), applied {1e3 * timings.apply / steps:.2f} ms a step; "
              f"a step {step_ms:.1f} ms ({step_cpu:.1f} ms of CPU time); per token: masks {1e3 * timings.compute / held_tokens:.3f} ms, "
              f"waited + applied {1e3 * (timings.wait + timings.apply) / held_tokens:.3f} ms")


if __name__ == "__main__":
    main()
