"""The numba backend's three mul_mat paths per block type and activation rows, side by side in one run, next
to NumPy's F32 product on a dense copy of the same weight (the bare mat-vec bound) and its GB/s of blocks: the
register tiles (blocks decoded straight into the products), four rows dequantized once at a time, and panels
dequantized for BLAS; and numba-q8's integer tiles (activations rounded to Q8_0, weights repacked) for its types.

    python examples/bench_matvec.py --rows 1 4 8 16 --shape 4096 4096
"""
from __future__ import annotations

import argparse
import time

import numba
import numpy as np
from bench_dequant import random_tensor
from compare_backends import cpu_name

from pyggml.backends.numba import q8 as numba_q8, quants as numba_quants, tiles as numba_tiles
from pyggml.backends.numba.backend import panel_product, q8_step
from pyggml.backends.quants import dequantize
from pyggml.graph.dtypes import DType


BLAS_IDLE_S = 0.3  # OpenBLAS's threads spin this long after a call before they sleep (numba's wait on them)


def best_ms(fn, repeats: int) -> float:
    """The fastest of `repeats` calls after one warm-up, in milliseconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def paths(dtype: DType, w: np.ndarray, tiled: np.ndarray | None, x: np.ndarray, dense: np.ndarray,
          out: np.ndarray) -> dict:
    """Name -> the call of each way to compute out = x @ W.T (None where the type has no such path)."""
    table = numba_quants.F16_TABLE
    threads = numba.get_num_threads()
    return {"register tiles": numba_tiles.tiled_product(dtype, w, x, out, threads),
            "int8 tiles (numba-q8)": None if tiled is None else q8_step(dtype, tiled, x, out),
            "dequantize once": lambda: numba_quants.MATMAT[dtype](w, x, out, table, numba_quants.N16, threads),
            "panel + BLAS": panel_product(dtype, w, x, out),
            "F32 copy": lambda: np.matmul(x, dense.T, out=out)}


@numba.njit(fastmath=True, parallel=True)
def _fma_tiles(w, x, n_repeats, sums):
    """A 2 x 4 tile of multiply-adds over rows in L1, n_repeats times on each thread."""
    for task in numba.prange(sums.shape[0]):
        total = np.float32(0)
        for _ in range(n_repeats):
            w0, w1, x0, x1, x2, x3 = w[0], w[1], x[0], x[1], x[2], x[3]
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0)
            for i in range(w.shape[1]):
                p, q = w0[i], w1[i]
                a0 += p * x0[i]
                a1 += p * x1[i]
                a2 += p * x2[i]
                a3 += p * x3[i]
                b0 += q * x0[i]
                b1 += q * x1[i]
                b2 += q * x2[i]
                b3 += q * x3[i]
            total += a0 + a1 + a2 + a3 + b0 + b1 + b2 + b3
        sums[task] = total


def fma_peak(repeats: int, n_tiles: int = 2000) -> float:
    """G multiply-adds/s of a register tile from L1 on every thread (the best of `repeats` runs): the FP32 peak the
    products can reach, measured next to them (the machine's speed drifts)."""
    w, x = np.ones((2, 512), np.float32), np.ones((4, 512), np.float32)
    sums = np.empty(numba.get_num_threads(), np.float32)
    return 8 * 512 * n_tiles * len(sums) / best_ms(lambda: _fma_tiles(w, x, n_tiles, sums), repeats) / 1e6


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
    print(f"{m} x {k} weights on {cpu_name()}; ms per product (best of {args.repeats}); for the register tiles, GB/s "
          f"of blocks and G multiply-adds/s against the FP32 peak of {numba.get_num_threads()} threads (a register "
          "tile from L1, measured before each row)\n\n| type | rows | register tiles | int8 tiles (numba-q8) | "
          "dequantize once | panel + BLAS | F32 copy | tiles GB/s | tiles G multiply-adds/s (of the peak) |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for dtype in (DType[name] for name in args.types):
        w = random_tensor(dtype, m, k, rng).reshape(m, -1)
        dense = dequantize(w, dtype, (m, k))
        tiled = numba_q8.repack(dtype, w) if dtype in numba_q8.TILE_LAYOUTS else None
        for rows in args.rows:
            x = rng.standard_normal((rows, k)).astype(np.float32)
            time.sleep(BLAS_IDLE_S)  # BLAS's threads spin after the last row's BLAS columns, starving numba's
            peak = fma_peak(args.repeats)
            times = {name: fn and best_ms(fn, args.repeats)
                     for name, fn in paths(dtype, w, tiled, x, dense, np.empty((rows, m), np.float32)).items()}
            tiles = times["register tiles"]
            print(f"| {dtype.name} | {rows} | " + " | ".join("-" if t is None else f"{t:.3f}" for t in times.values())
                  + f" | {w.nbytes / tiles / 1e6:.1f} | {m * k * rows / tiles / 1e6:.1f} "
                  f"({m * k * rows / tiles / 1e6 / peak:.0%} of {peak:.1f}) |")


if __name__ == "__main__":
    main()
