"""Decode speed against its bound, side by side: one decode step, then the bare F32 mat-vecs of the same
weights (F32 copies of what the plan reads), alternately, so that both see the same machine state.

    python examples/decode_vs_matvec.py smollm2-135m --steps 100
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import pyggml
from pyggml.model.tooling.bench import f32_weights
from pyggml.model.tooling.profile import placed_weights, step_plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    model = pyggml.load(args.model)
    weights = f32_weights(list(placed_weights(step_plan(model.context, [0]))))
    work = [(np.ones((1, w.shape[1]), np.float32), w.T, np.empty((1, w.shape[0]), np.float32)) for w in weights]
    model.reset()
    model.eval(list(range(8)))
    decode, bare = [], []
    for i in range(args.steps):
        t0 = time.perf_counter()
        model.eval([8 + i])
        t1 = time.perf_counter()
        for x, w_t, out in work:
            np.matmul(x, w_t, out=out)
        decode.append(t1 - t0)
        bare.append(time.perf_counter() - t1)
    d, b = np.median(decode), np.median(bare)
    print(f"{args.model}: decode step median {d * 1e3:.2f} ms (min {min(decode) * 1e3:.2f}), "
          f"{len(work)} bare mat-vecs median {b * 1e3:.2f} ms (min {min(bare) * 1e3:.2f}); "
          f"decode / bound = {b / d:.3f} on medians, {min(bare) / min(decode):.3f} on minima")


if __name__ == "__main__":
    main()
