"""Graph rewrites that fuse nodes for a backend (as ggml's backends fuse): each pass looks at one node whose
sources are already rewritten and returns an equivalent replacement, or None. `fuse` rebuilds a graph through
the passes; leafs (weights, inputs, caches) stay the same objects, so placement and input names are unchanged.
Model code never fuses: a backend lists the passes it wants (`Backend.fusions`).

The fused ops' NumPy kernels live here too, so that every backend inheriting them can run a fused graph.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from pyggml.graph.dtypes import DType
from pyggml.graph.errors import PyggmlError
from pyggml.graph.graph import Graph
from pyggml.graph.tensor import Tensor
from pyggml.ops import flash_attn_ext, reshape

from .numpy.kernels import f32_compute, kernel, mul_mat, rms_norm

Rewrite = Callable[[Tensor], "Tensor | None"]


def rms_norm_mul(node: Tensor) -> Tensor | None:
    """mul(rms_norm(x), w) with w one value per column -> rms_norm_mul(x, w)."""
    if node.op != "mul" or node.srcs[0].op != "rms_norm":
        return None
    norm, w = node.srcs
    if w.shape != norm.shape[-1:] or w.dtype != DType.F32:
        return None
    return Tensor(node.shape, node.dtype, op="rms_norm_mul", srcs=(norm.srcs[0], w), params=norm.params,
                  name=node.name, flags=node.flags)


def permuted_product(node: Tensor) -> Tensor | None:
    """cont(permute(mul_mat(a, b))) -> mul_mat_permuted(a, b): the product written in its final layout (the
    attention output kqv, (H, T, D) -> (T, H*D), without a copy)."""
    if node.op != "cont" or node.srcs[0].op != "permute" or node.srcs[0].srcs[0].op != "mul_mat":
        return None
    permute, product = node.srcs[0], node.srcs[0].srcs[0]
    return Tensor(node.shape, node.dtype, op="mul_mat_permuted", srcs=product.srcs,
                  params={"axes": permute.params["axes"], "product_shape": list(product.shape)},
                  name=node.name, flags=node.flags)


def attention(node: Tensor) -> Tensor | None:
    """mul_mat_permuted(transpose(v), soft_max_ext(mul_mat(k, q), mask)) with axes (1, 0, 2), the attention output
    as permuted_product leaves it -> flash_attn_ext(q, k, v, mask) seen as that output: one pass over each key
    and value row instead of three ops (scores, softmax and products of every head; soft-capped scores keep
    theirs)."""
    if node.op != "mul_mat_permuted" or list(node.params["axes"]) != [1, 0, 2]:
        return None
    vt, probs = node.srcs
    if vt.op != "permute" or vt.params["axes"] != [0, 2, 1] or probs.op != "soft_max_ext" \
            or probs.srcs[0].op != "mul_mat":
        return None
    (keys, q), mask = probs.srcs[0].srcs, (probs.srcs[1] if len(probs.srcs) > 1 else None)
    try:
        fused = flash_attn_ext(q, keys, vt.srcs[0], mask, probs.params["scale"], probs.params["max_bias"])
    except PyggmlError:  # not of that form (batched, other shapes): left as it is
        return None
    out = reshape(fused, node.shape)
    out.name, out.flags = node.name, node.flags
    return out


def one_row_gather(node: Tensor) -> Tensor | None:
    """get_rows of the only row of a contiguous one-row tensor (the last row of a decode step) -> that row."""
    table = node.srcs[0] if node.op == "get_rows" else None
    if table is None or table.ndim != 2 or table.shape[0] != 1 or node.shape != table.shape \
            or not table.is_contiguous or table.dtype != node.dtype:
        return None
    return table


FUSIONS: dict[str, Rewrite] = {"rms_norm_mul": rms_norm_mul, "permuted_product": permuted_product,
                               "attention": attention, "one_row_gather": one_row_gather}  # attention follows
# permuted_product: it matches what that pass makes of the attention output


def _rebuilt(node: Tensor, new: dict[Tensor, Tensor]) -> Tensor:
    """node itself if none of its sources changed, else a copy over the new sources."""
    srcs = tuple(new[s] for s in node.srcs)
    owner = new[node.view_src] if node.view_src is not None else None
    if srcs == node.srcs and owner is node.view_src:
        return node
    return Tensor(node.shape, node.dtype, op=node.op, srcs=srcs, params=node.params, name=node.name,
                  flags=node.flags, view_src=owner, view_offset=node.view_offset, strides=node.strides)


def fuse(graph: Graph, passes: Iterable[str], keep: Callable[[str, Tensor], bool] = lambda name, fused: True) -> Graph:
    """The graph with every node offered to the named passes in order (the graph itself if none applies); a
    rewrite is taken where keep(pass name, fused node) holds."""
    rewrites = [(name, FUSIONS[name]) for name in passes]
    if not rewrites:
        return graph
    new: dict[Tensor, Tensor] = {leaf: leaf for leaf in graph.leafs}
    for node in graph.nodes:
        node_now = _rebuilt(node, new)
        for name, rewrite in rewrites:
            fused = rewrite(node_now)
            if fused is not None and keep(name, fused):
                node_now = fused
        new[node] = node_now
    if all(new[n] is n for n in graph.nodes):
        return graph
    return Graph.build([new[t] for t in graph.outputs])


# rms_norm_mul: x (..., C) F32, w (C,) F32 -> (..., C) = rms_norm(x) * w
@kernel("rms_norm_mul")
@f32_compute
def rms_norm_mul_kernel(node: Tensor, out: np.ndarray, x: np.ndarray, w: np.ndarray):
    norm = rms_norm(node, out, x)
    return lambda: (norm(), np.multiply(out, w, out=out))


# mul_mat_permuted: a, b as mul_mat -> the product (params product_shape) permuted by axes, contiguous
@kernel("mul_mat_permuted")
def mul_mat_permuted_kernel(node: Tensor, out: np.ndarray, a: np.ndarray, b: np.ndarray):
    axes = node.params["axes"]
    permuted_shape = [node.params["product_shape"][i] for i in axes]
    product_view = np.transpose(out.reshape(permuted_shape), np.argsort(axes))  # the product's layout, in place
    return mul_mat(node, product_view, a, b)
