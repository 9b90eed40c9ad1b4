"""The llama-family graph (LLaMA, SmolLM, Mistral-style GQA), as llama.cpp's llm_build_llama."""
from __future__ import annotations

from gguf import MODEL_TENSOR as T

from pyggml import ops
from pyggml.graph.tensor import Tensor

from .hparams import HParams
from .kv_cache import KVCache
from .layers import AttentionSpec, StepInputs, attention, ffn_glu, named, qkv, rms_norm_w
from .weights import Weights


def attention_spec(hp: HParams, il: int) -> AttentionSpec:
    """Llama layers: NORMAL rope over rope_dim dims with the file's base and linear scale."""
    return AttentionSpec(hp.rope_dim, ops.ROPE_NORMAL, hp.rope_freq_base,
                         hp.rope_freq_scale, scale=hp.attention_scale)


def build_llama(w: Weights, hp: HParams, inp: StepInputs, cache: KVCache | None) -> Tensor:
    """Logits (n_out, n_vocab) for the step's tokens."""
    x = named(ops.get_rows(w.get(T.TOKEN_EMBD), inp.tokens), "inp_embd")
    for il in range(hp.n_layer):
        cur = named(rms_norm_w(x, w.get(T.ATTN_NORM, il), hp.rms_eps), "attn_norm", il)
        q, k, v = qkv(w, hp, cur, il)
        cur = attention(q, k, v, attention_spec(hp, il), inp, cache, il)
        cur = named(ops.mul_mat(w.get(T.ATTN_OUT, il), cur), "attn_out", il)
        if il == hp.n_layer - 1:  # only the rows whose logits are wanted go on
            cur, x = ops.get_rows(cur, inp.out_ids), ops.get_rows(x, inp.out_ids)
        x = named(ops.add(x, cur), "ffn_inp", il)
        cur = named(rms_norm_w(x, w.get(T.FFN_NORM, il), hp.rms_eps), "ffn_norm", il)
        cur = ffn_glu(cur, w.get(T.FFN_GATE, il), w.get(T.FFN_UP, il), w.get(T.FFN_DOWN, il), ops.swiglu, il)
        x = named(ops.add(x, cur), "l_out", il)
    x = named(rms_norm_w(x, w.get(T.OUTPUT_NORM), hp.rms_eps), "result_norm")
    head = w.get_optional(T.OUTPUT) or w.get(T.TOKEN_EMBD)
    return named(ops.mul_mat(head, x), "result_output")
