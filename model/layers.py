"""Graph pieces shared by the architectures, written with ops only: step inputs, norms, attention, FFNs."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from gguf import MODEL_TENSOR

from pyggml import ops
from pyggml.graph.dtypes import DType
from pyggml.graph.tensor import Tensor, input_tensor

from .hparams import HParams
from .kv_cache import KVCache
from .weights import Weights


@dataclass
class StepInputs:
    """The input tensors of one forward step; their values change per run, their shapes define the plan."""
    tokens: Tensor   # (T,) I32
    pos: Tensor      # (T,) I32
    out_ids: Tensor  # (n_out,) I32: the rows whose logits are computed
    kv_idx: dict[int | None, Tensor] = field(default_factory=dict)  # per cache kind: (T,) I64 rows to write
    kq_mask: dict[int | None, Tensor] = field(default_factory=dict)  # per cache kind: (T, n_kv) F32
    kv_gather: dict[int | None, Tensor] = field(default_factory=dict)  # per cache kind: (n_kv,) I32 rows read

    @classmethod
    def create(cls, n_tokens: int, n_out: int, n_kv: dict[int | None, int]) -> StepInputs:
        """Inputs for T tokens, n_out logit rows and, per cache kind, an attended length n_kv."""
        return cls(input_tensor((n_tokens,), DType.I32, "inp_tokens"), input_tensor((n_tokens,), DType.I32, "inp_pos"),
                   input_tensor((n_out,), DType.I32, "inp_out_ids"),
                   {w: input_tensor((n_tokens,), DType.I64, f"inp_kv_idx_{w or 'full'}") for w in n_kv},
                   {w: input_tensor((n_tokens, n), DType.F32, f"inp_kq_mask_{w or 'full'}") for w, n in n_kv.items()})


def named(t: Tensor, name: str, il: int | None = None) -> Tensor:
    """Name a tensor as llama.cpp does: `name-il` inside a layer."""
    return t.set_name(name if il is None else f"{name}-{il}")


def rms_norm_w(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """rms_norm(x) * weight."""
    return ops.mul(ops.rms_norm(x, eps), weight)


@dataclass
class AttentionSpec:
    """How a layer attends: rope settings, Q·K scale (default 1/sqrt(head_dim)), the cache kind (window) it reads;
    head counts and sizes come from the shapes of q, k and v."""
    rope_dims: int
    rope_mode: int
    rope_base: float
    rope_scale: float = 1.0
    scale: float | None = None
    window: int | None = None


def attention(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec, inp: StepInputs, cache: KVCache | None,
              il: int) -> Tensor:
    """Rope q and k, write k and v into the cache (if any), attend over it; (T, H, D) in, (T, H*D) out."""
    n_tokens, n_head, head_dim = q.shape
    rope = dict(n_dims=spec.rope_dims, mode=spec.rope_mode, freq_base=spec.rope_base, freq_scale=spec.rope_scale)
    q = named(ops.rope(q, inp.pos, **rope), "Qcur", il)
    k = named(ops.rope(k, inp.pos, **rope), "Kcur", il)
    if cache is None:  # no cache: attend over this step's own keys and values
        keys, values = ops.permute(k, 1, 0, 2), ops.permute(v, 1, 0, 2)
    else:
        keys, values = cache.kv_views(k, v, inp, il, spec.window)
    mask = inp.kq_mask[spec.window]
    scale = spec.scale if spec.scale is not None else 1.0 / math.sqrt(head_dim)
    kq = named(ops.mul_mat(keys, ops.permute(q, 1, 0, 2)), "kq", il)  # (H, T, n_kv)
    kq = named(ops.soft_max_ext(kq, mask, scale), "kq_soft_max", il)
    kqv = named(ops.mul_mat(ops.transpose(values), kq), "kqv", il)  # (H, T, Dv)
    return named(ops.cont(ops.permute(kqv, 1, 0, 2), (n_tokens, n_head * values.shape[-1])), "kqv_out", il)


def qkv(w: Weights, hp: HParams, x: Tensor, il: int) -> tuple[Tensor, Tensor, Tensor]:
    """Layer il's Q (T, H, D), K (T, Hkv, D) and V (T, Hkv, Dv) projections of x (T, n_embd)."""
    n_tokens = x.shape[0]
    q = ops.reshape(ops.mul_mat(w.get(MODEL_TENSOR.ATTN_Q, il), x), (n_tokens, hp.n_head, hp.head_dim))
    k = ops.reshape(ops.mul_mat(w.get(MODEL_TENSOR.ATTN_K, il), x), (n_tokens, hp.n_head_kv, hp.head_dim))
    v = ops.reshape(ops.mul_mat(w.get(MODEL_TENSOR.ATTN_V, il), x), (n_tokens, hp.n_head_kv, hp.head_dim_v))
    return q, k, v


def ffn_glu(x: Tensor, gate_w: Tensor, up_w: Tensor, down_w: Tensor, glu=ops.swiglu, il: int = 0) -> Tensor:
    """down(glu(gate(x), up(x))): SwiGLU or GeGLU feed-forward."""
    gate = named(ops.mul_mat(gate_w, x), "ffn_gate", il)
    up = named(ops.mul_mat(up_w, x), "ffn_up", il)
    return named(ops.mul_mat(down_w, named(glu(gate, up), "ffn_glu", il)), "ffn_out", il)
