"""The numba backend's three mul_mat paths per block type and activation rows, side by side in one run, next
to NumPy's F32 product on a dense copy of the same weight (the bare mat-vec bound) and its GB/s of blocks: the
register tiles (blocks decoded straight into the products), four rows dequantized once at a time, and panels
dequantized for BLAS.

    python examples/bench_matvec.py --rows 1 4 8 16 --shape 4096 4096
"""
from __future__ import annotations

import argparse
import time

import numba
import numpy as np
from bench_dequant import random_tensor
from compare_backends import cpu_name

from pyggml.backends import numba_quants, numba_tiles
from pyggml.backends.numba_backend import panel_product
from pyggml.backends.quants import dequantize
from pyggml.graph.dtypes import DType


def best_ms(fn, repeats: int) -> float:
    """The fastest of `repeats` calls after one warm-up, in milliseconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def paths(dtype: DType, w: np.ndarray, x: np.ndarray, dense: np.ndarray, out: np.ndarray) -> dict:
    """Name -> the call of each way to compute out = x @ W.T."""
    table = numba_quants.F16_TABLE
    threads = numba.get_num_threads()
    return {"register tiles": numba_tiles.tiled_product(dtype, w, x, out, threads),
            "dequantize once": lambda: numba_quants.MATMAT[dtype](w, x, out, table, numba_quants.N16, threads),
            "panel + BLAS": panel_product(dtype, w, x, out),
            "F32 copy": lambda: np.matmul(x, dense.T, out=out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="+", type=str.upper, choices=[t.name for t in numba_quants.BLOCK_TYPES],
                        default=[t.name for t in numba_quants.BLOCK_TYPES])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--shape", nargs=2, type=int, default=[4096, 4096], metavar=("M", "K"))
    parser.add_argument("-r", "--repeats", type=int, default=10)
    args = parser.parse_args()
    m, k = args.shape
    rng = np.random.default_rng(0)
    print(f"{m} x {k} weights on {cpu_name()}; ms per product (best of {args.repeats}), GB/s of blocks for the "
          "register tiles\n\n| type | rows | register tiles | dequantize once | panel + BLAS | F32 copy | tiles GB/s |\n"
          "|---|---|---|---|---|---|---|")
    for dtype in (DType[name] for name in args.types):
        w = random_tensor(dtype, m, k, rng).reshape(m, -1)
        dense = dequantize(w, dtype, (m, k))
        for rows in args.rows:
            x = rng.standard_normal((rows, k)).astype(np.float32)
            times = {name: best_ms(fn, args.repeats)
                     for name, fn in paths(dtype, w, x, dense, np.empty((rows, m), np.float32)).items()}
            print(f"| {dtype.name} | {rows} | " + " | ".join(f"{t:.3f}" for t in times.values())
                  + f" | {w.nbytes / times['register tiles'] / 1e6:.1f} |")


if __name__ == "__main__":
    main()
