"""Dump the graph of a small attention block as Graphviz DOT, and as SVG where Graphviz is installed.

    python examples/dump_graph.py [out.dot]        (default: graph.dot)

The block is one llama-style self-attention layer with grouped-query attention: rms_norm, the q/k/v
projections (mul_mat), rope on q and k, kq = mul_mat(k, q), soft_max_ext with a causal mask, and
kqv = mul_mat(v^T, kq) followed by the output projection. The SVG goes next to the DOT file
(same name, .svg suffix) when Graphviz `dot` is on the PATH; otherwise the script says so.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

import pyggml as pg

N_TOKENS, N_EMBD, N_HEAD, N_HEAD_KV = 4, 32, 4, 2
HEAD_DIM = N_EMBD // N_HEAD


def attention_block(rng: np.random.Generator) -> pg.Tensor:
    """One self-attention layer over N_TOKENS tokens; returns its output (N_TOKENS, N_EMBD)."""
    def weight(name: str, *shape: int) -> pg.Tensor:
        return pg.from_numpy((rng.standard_normal(shape) / math.sqrt(shape[-1])).astype(np.float32),
                             name=name, flags=pg.Flag.WEIGHT)

    x = pg.input_tensor((N_TOKENS, N_EMBD), name="x")
    pos = pg.input_tensor((N_TOKENS,), pg.DType.I32, name="pos")
    mask = pg.input_tensor((N_TOKENS, N_TOKENS), name="kq_mask")

    cur = pg.mul(pg.rms_norm(x, 1e-5), weight("attn_norm.weight", N_EMBD)).set_name("attn_norm")
    q = pg.reshape(pg.mul_mat(weight("wq", N_HEAD * HEAD_DIM, N_EMBD), cur).set_name("q"),
                   (N_TOKENS, N_HEAD, HEAD_DIM))
    k = pg.reshape(pg.mul_mat(weight("wk", N_HEAD_KV * HEAD_DIM, N_EMBD), cur).set_name("k"),
                   (N_TOKENS, N_HEAD_KV, HEAD_DIM))
    v = pg.reshape(pg.mul_mat(weight("wv", N_HEAD_KV * HEAD_DIM, N_EMBD), cur).set_name("v"),
                   (N_TOKENS, N_HEAD_KV, HEAD_DIM))
    q = pg.rope(q, pos, HEAD_DIM, pg.ROPE_NORMAL).set_name("q_rope")
    k = pg.rope(k, pos, HEAD_DIM, pg.ROPE_NORMAL).set_name("k_rope")

    q = pg.permute(q, 1, 0, 2)                              # (H, N, D)
    k = pg.permute(k, 1, 0, 2)                              # (Hkv, N, D)
    kq = pg.mul_mat(k, q).set_name("kq")                    # (H, N, N): K heads shared by head pairs
    kq = pg.soft_max_ext(kq, mask, 1.0 / math.sqrt(HEAD_DIM)).set_name("kq_soft_max")
    v_t = pg.cont(pg.permute(v, 1, 2, 0)).set_name("v_t")  # (Hkv, D, N)
    kqv = pg.mul_mat(v_t, kq).set_name("kqv")               # (H, N, D)
    merged = pg.reshape(pg.cont(pg.permute(kqv, 1, 0, 2)), (N_TOKENS, N_EMBD)).set_name("kqv_merged")
    return pg.mul_mat(weight("wo", N_EMBD, N_EMBD), merged).set_name("attn_out").set_flag(pg.Flag.OUTPUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="graph.dot", help="where to write the DOT (default graph.dot)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    out = attention_block(rng)
    graph = pg.Graph.build(out)
    print(graph.to_text())

    # the block runs: one plan, computed once here
    mask = np.triu(np.full((N_TOKENS, N_TOKENS), -np.inf, np.float32), 1)
    (values,) = pg.compile(out).run({"x": rng.standard_normal((N_TOKENS, N_EMBD)), "pos": np.arange(N_TOKENS),
                                     "kq_mask": mask})
    print(f"attn_out: shape {list(values.shape)}, first row " + " ".join(f"{v:.4f}" for v in values[0, :4]) + " ...")

    dot_path = Path(args.out)
    dot_path.write_text(graph.to_dot())
    print(f"wrote {dot_path} ({len(graph.nodes)} nodes, {len(graph.leafs)} leafs)")
    svg_path = dot_path.with_suffix(".svg")
    try:
        graph.render(str(svg_path))
    except pg.PyggmlError as e:
        print(f"SVG not written: {e}")
    else:
        print(f"wrote {svg_path}")


if __name__ == "__main__":
    main()
