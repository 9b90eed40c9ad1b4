"""Benchmark pyggml's dequantization against gguf.quants.dequantize (MB/s of float32 output per type) and
the time to open the reference models."""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import gguf
import numpy as np

from pyggml.backends import quants
from pyggml.graph.block_layouts import BLOCKS
from pyggml.graph.dtypes import DType
from pyggml.model.gguf_file import GGUFFile
from pyggml.model.tooling.pull import pull

RANDOM_TYPES = (DType.F16, DType.BF16, DType.Q4_0, DType.Q4_1, DType.Q5_0, DType.Q5_1, DType.Q8_0,
                DType.Q2_K, DType.Q3_K, DType.Q4_K, DType.Q5_K, DType.Q6_K)


def timed(fn) -> float:
    """Seconds one call takes (its result is dropped before returning, so memory is reused)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def random_tensor(dtype: DType, rows: int, row_len: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, bytes per row) of random blocks whose float16 scales are finite and moderate."""
    if dtype in (DType.F16, DType.BF16):
        values = rng.standard_normal((rows, row_len)).astype(np.float32)
        return (values.astype(np.float16) if dtype == DType.F16 else (values.view(np.uint32) >> 16).astype(np.uint16)).view(np.uint8)
    block_size, type_size = gguf.GGML_QUANT_SIZES[dtype]
    # quantize real numbers so that the scales are those of a real tensor
    values = rng.standard_normal((rows, row_len)).astype(np.float32)
    try:
        return gguf.quants.quantize(values, dtype)
    except NotImplementedError:  # K-quants: random bytes, then sane scales from a Q8_0 block pattern
        blocks = rng.integers(0, 256, (rows * row_len // block_size, type_size), dtype=np.uint8)
        for offset in BLOCKS[dtype].scalars():
            blocks[:, offset:offset + 2] = rng.uniform(-0.01, 0.01, (len(blocks), 1)).astype(np.float16).view(np.uint8)
        return blocks.reshape(rows, -1)


def measure(raw: np.ndarray, dtype: DType, shape: tuple[int, ...], repeats: int) -> tuple[float, float]:
    """(best seconds for ours, best seconds for gguf) to dequantize one tensor, timed alternately so that
    both see the same load on a shared machine."""
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(timed(lambda: quants.dequantize(raw, dtype, shape)))
        theirs.append(timed(lambda: gguf.quants.dequantize(raw.reshape(shape[:-1] + (-1,)), dtype)))
    return min(ours), min(theirs)


def report(title: str, totals: dict[DType, list[float]]) -> None:
    """Print one table row per type: output MB/s of ours and gguf's, and the ratio."""
    print(f"\n{title}\n{'type':6s} {'MB out':>8s} {'ours MB/s':>10s} {'gguf MB/s':>10s} {'ratio':>6s}")
    for dtype, (mb, ours, theirs) in totals.items():
        print(f"{dtype.name:6s} {mb:8.1f} {mb / ours:10.0f} {mb / theirs:10.0f} {theirs / ours:6.1f}")


def main() -> None:
    """Run the random-block and model-tensor benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1024, help="rows of each random tensor")
    parser.add_argument("--row-len", type=int, default=2048, help="elements per row of each random tensor")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (best is kept)")
    parser.add_argument("--model", action="append", default=None, help="model names (default smollm2-135m)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    totals: dict[DType, list[float]] = {}
    for dtype in RANDOM_TYPES:
        raw = random_tensor(dtype, args.rows, args.row_len, rng)
        ours, theirs = measure(raw, dtype, (args.rows, args.row_len), args.repeats)
        totals[dtype] = [args.rows * args.row_len * 4 / 1e6, ours, theirs]
    report(f"random blocks, {args.rows} x {args.row_len} per type", totals)

    for name in args.model or ["smollm2-135m"]:
        path = pull(name)
        print(f"\nopening {name}: {min(timed(lambda: GGUFFile(path)) for _ in range(args.repeats)):.3f} s "
              f"(best of {args.repeats}, metadata and tensor table, memory-mapped)")
        model = GGUFFile(path)
        per_type: dict[DType, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        for info in model.tensors.values():
            if info.dtype == DType.F32:
                continue
            ours, theirs = measure(model.tensor_data(info.name), info.dtype, info.shape, args.repeats)
            row = per_type[info.dtype]
            row[0] += info.n_elements * 4 / 1e6
            row[1] += ours
            row[2] += theirs
        report(f"all non-F32 tensors of {name}", dict(per_type))


if __name__ == "__main__":
    main()
