"""The Gemma 3 graph, as llama.cpp's llm_build_gemma3: scaled embedding, QK-norm, NEOX rope with a local base
on sliding-window layers, post-attention and post-FFN norms, GeGLU, output tied to the embedding."""
from __future__ import annotations

from gguf import MODEL_TENSOR as T

from pyggml import ops
from pyggml.graph.tensor import Tensor

from .hparams import HParams
from .kv_cache import KVCache
from .layers import AttentionSpec, StepInputs, attention, ffn_glu, named, qkv, rms_norm_w
from .weights import Weights


def attention_spec(hp: HParams, il: int) -> AttentionSpec:
    """Sliding layers: the local rope base, no rope scaling, the window; global layers: the file's rope."""
    swa = hp.is_swa(il)
    return AttentionSpec(hp.rope_dim, ops.ROPE_NEOX, hp.rope_base(il),
                         1.0 if swa else hp.rope_freq_scale, scale=hp.attention_scale,
                         window=hp.sliding_window if swa else None)


def build_gemma3(w: Weights, hp: HParams, inp: StepInputs, cache: KVCache | None) -> Tensor:
    """Logits (n_out, n_vocab) for the step's tokens."""
    x = named(ops.scale(ops.get_rows(w.get(T.TOKEN_EMBD), inp.tokens), hp.embedding_scale), "inp_scaled")
    for il in range(hp.n_layer):
        cur = named(rms_norm_w(x, w.get(T.ATTN_NORM, il), hp.rms_eps), "attn_norm", il)
        q, k, v = qkv(w, hp, cur, il)
        q = named(rms_norm_w(q, w.get(T.ATTN_Q_NORM, il), hp.rms_eps), "Qcur_normed", il)
        k = named(rms_norm_w(k, w.get(T.ATTN_K_NORM, il), hp.rms_eps), "Kcur_normed", il)
        cur = attention(q, k, v, attention_spec(hp, il), inp, cache, il)
        cur = ops.mul_mat(w.get(T.ATTN_OUT, il), cur)
        cur = named(rms_norm_w(cur, w.get(T.ATTN_POST_NORM, il), hp.rms_eps), "attn_post_norm", il)
        if il == hp.n_layer - 1:  # only the rows whose logits are wanted go on
            cur, x = ops.get_rows(cur, inp.out_ids), ops.get_rows(x, inp.out_ids)
        x = named(ops.add(cur, x), "sa_out", il)
        cur = named(rms_norm_w(x, w.get(T.FFN_NORM, il), hp.rms_eps), "ffn_norm", il)
        cur = ffn_glu(cur, w.get(T.FFN_GATE, il), w.get(T.FFN_UP, il), w.get(T.FFN_DOWN, il), ops.geglu, il)
        cur = named(rms_norm_w(cur, w.get(T.FFN_POST_NORM, il), hp.rms_eps), "ffn_post_norm", il)
        x = named(ops.add(cur, x), "l_out", il)
    x = named(rms_norm_w(x, w.get(T.OUTPUT_NORM), hp.rms_eps), "result_norm")
    return named(ops.mul_mat(w.get_optional(T.OUTPUT) or w.get(T.TOKEN_EMBD), x), "result_output")
