"""The inputs of one forward step (their shapes define a plan), shared by the contexts, the caches and the graph
builders."""
from __future__ import annotations

from dataclasses import dataclass, field

from pyggml.graph.dtypes import DType
from pyggml.graph.tensor import Tensor, input_tensor


@dataclass
class StepInputs:
    """The input tensors of one forward step; their values change per run, their shapes define the plan."""
    tokens: Tensor   # (T,) I32
    pos: Tensor      # (T,) I32
    out_ids: Tensor  # (n_out,) I32: the rows whose logits are computed
    kv_idx: dict[int | None, Tensor] = field(default_factory=dict)  # per cache kind: (T,) I64 rows to write
    kq_mask: dict[int | None, Tensor] = field(default_factory=dict)  # per cache kind: (T, n_kv) F32
    kv_gather: dict[int | None, Tensor] = field(default_factory=dict)  # per cache kind: (n_kv,) I32 rows read
    kv_rows: dict[int | None, Tensor] = field(default_factory=dict)  # per cache kind: (T, L) I32 rows each token
    # reads (negative: none), for paged_attn instead of a mask over gathered rows
    hidden: Tensor | None = None  # (T, n_embd) F32: a pipeline stage's input, the previous stage's output

    @classmethod
    def create(cls, n_tokens: int, n_out: int, n_kv: dict[int | None, int], paged: bool = False) -> StepInputs:
        """Inputs for T tokens, n_out logit rows and, per cache kind, an attended length n_kv: a mask (T, n_kv),
        or (paged) the rows each token reads (T, n_kv)."""
        inp = cls(input_tensor((n_tokens,), DType.I32, "inp_tokens"), input_tensor((n_tokens,), DType.I32, "inp_pos"),
                  input_tensor((n_out,), DType.I32, "inp_out_ids"),
                  {w: input_tensor((n_tokens,), DType.I64, f"inp_kv_idx_{w or 'full'}") for w in n_kv})
        for w, n in n_kv.items():
            if paged:
                inp.kv_rows[w] = input_tensor((n_tokens, n), DType.I32, f"inp_kv_rows_{w or 'full'}")
            else:
                inp.kq_mask[w] = input_tensor((n_tokens, n), DType.F32, f"inp_kq_mask_{w or 'full'}")
        return inp

