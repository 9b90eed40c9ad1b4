"""ggml's "simple" example in pyggml: two matrices, mul_mat, print the graph, compute, print the result.

    python examples/simple_mul_mat.py

As in ggml's examples/simple/simple-ctx.cpp, `mul_mat(a, b)` multiplies row by row: it is b @ a.T, the
transpose of the usual A x B^T product, so the printed result is C transposed:

    mul mat (4 x 3) (transposed result):
    [ 60.00 55.00 50.00 110.00
     90.00 54.00 54.00 126.00
     42.00 29.00 28.00 64.00 ]
"""
from __future__ import annotations

import numpy as np

import pyggml as pg

# matrix A (4 x 2) and matrix B (3 x 2), the values of ggml's example
MATRIX_A = np.array([[2, 8], [5, 1], [4, 2], [8, 6]], np.float32)
MATRIX_B = np.array([[10, 5], [9, 9], [5, 4]], np.float32)


def format_result(result: np.ndarray) -> str:
    """The result printed as ggml's example prints it: (cols x rows), then row by row with 2 decimals."""
    rows, cols = result.shape
    lines = [" ".join(f"{v:.2f}" for v in row) for row in result]
    return f"mul mat ({cols} x {rows}) (transposed result):\n[ " + "\n ".join(lines) + " ]"


def main() -> None:
    a = pg.from_numpy(MATRIX_A, name="a")
    b = pg.from_numpy(MATRIX_B, name="b")
    result = pg.mul_mat(a, b).set_name("result")  # records a node; nothing is computed yet

    graph = pg.Graph.build(result)
    print(graph.to_text())

    values = pg.compute(result)
    print(format_result(values))


if __name__ == "__main__":
    main()
