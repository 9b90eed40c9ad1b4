"""The decoder, written once for every architecture row (llama.cpp's llm_build_* graphs): embed, then per layer
norm -> Q/K/V (+bias, +QK-norm) -> attention -> output (+post-norm) -> residual -> norm -> gated FFN (+post-norm)
-> residual, then the output norm and head (+soft-cap)."""
from __future__ import annotations

from gguf import MODEL_TENSOR as T

from pyggml import ops
from pyggml.graph.tensor import Tensor

from .arch import ARCHITECTURES, Arch
from .hparams import HParams
from .runtime.paged_cache import PagedKVCache
from .runtime.step import StepInputs
from .layers import AttentionSpec, attention, ffn_glu, linear, named, qkv, rms_norm_w, softcap
from .weights import Weights


def attention_spec(w: Weights, hp: HParams, arch: Arch, il: int) -> AttentionSpec:
    """Layer il's rope (base and scale per layer kind, Llama 3's frequency factors), Q·K scale, window, soft-cap."""
    return AttentionSpec(hp.rope_dim, arch.rope_mode, hp.rope_base(il), hp.rope_scale(il), scale=hp.attention_scale,
                         window=hp.sliding_window if hp.is_swa(il) else None, softcap=hp.attn_logit_softcap,
                         freq_factors=w.get_optional(T.ROPE_FREQS), yarn=hp.yarn)


def _post_norm(w: Weights, hp: HParams, arch: Arch, x: Tensor, kind: T, il: int) -> Tensor:
    """x, RMS-normed by the layer's post-norm weight on architectures that have one."""
    return named(rms_norm_w(x, w.get(kind, il), hp.rms_eps), kind.name.lower(), il) if arch.post_norms else x


def _attention_block(w: Weights, hp: HParams, arch: Arch, x: Tensor, inp: StepInputs, cache: PagedKVCache | None,
                     il: int) -> Tensor:
    """The attention half of layer il, before the residual: (T, n_embd) -> (T, n_embd)."""
    cur = named(rms_norm_w(x, w.get(T.ATTN_NORM, il), hp.rms_eps), "attn_norm", il)
    q, k, v = qkv(w, hp, cur, il, arch.fused_qkv)
    if arch.qk_norm:
        q = named(rms_norm_w(q, w.get(T.ATTN_Q_NORM, il), hp.rms_eps), "Qcur_normed", il)
        k = named(rms_norm_w(k, w.get(T.ATTN_K_NORM, il), hp.rms_eps), "Kcur_normed", il)
    cur = attention(q, k, v, attention_spec(w, hp, arch, il), inp, cache, il)
    cur = named(linear(w, T.ATTN_OUT, cur, il), "attn_out", il)
    return _post_norm(w, hp, arch, cur, T.ATTN_POST_NORM, il)


def build_decoder(w: Weights, hp: HParams, inp: StepInputs, cache: PagedKVCache | None) -> Tensor:
    """Logits (n_out, n_vocab) for the step's tokens, as the model's architecture row says."""
    return build_layers(w, hp, inp, cache, range(hp.n_layer))


def build_hidden(w: Weights, hp: HParams, inp: StepInputs, cache: PagedKVCache | None) -> Tensor:
    """The output-normed hidden states (n_out, n_embd) of the step's wanted rows (what embeddings pool)."""
    return output_norm(w, hp, build_layers(w, hp, inp, cache, range(hp.n_layer), logits=False))


def build_layers(w: Weights, hp: HParams, inp: StepInputs, cache: PagedKVCache | None, layers: range,
                 logits: bool = True) -> Tensor:
    """A contiguous range of the decoder's layers (a pipeline stage): from the token embedding when the range
    starts at layer 0, else from inp.hidden (T, n_embd); to the logits when it ends at the last layer (and
    logits is set), else to the hidden states (T, n_embd) after its last layer."""
    arch = ARCHITECTURES[hp.arch]
    x = embed(w, hp, arch, inp) if layers.start == 0 else inp.hidden
    for il in layers:
        cur = _attention_block(w, hp, arch, x, inp, cache, il)
        if il == hp.n_layer - 1:  # only the rows whose logits are wanted go on
            cur, x = ops.get_rows(cur, inp.out_ids), ops.get_rows(x, inp.out_ids)
        x = named(ops.add(x, cur), "ffn_inp", il)
        cur = named(rms_norm_w(x, w.get(T.FFN_NORM, il), hp.rms_eps), "ffn_norm", il)
        cur = ffn_glu(w, cur, il, arch.glu, arch.fused_gate_up)
        x = named(ops.add(x, _post_norm(w, hp, arch, cur, T.FFN_POST_NORM, il)), "l_out", il)
    return head(w, hp, x) if logits and layers.stop == hp.n_layer else x


def embed(w: Weights, hp: HParams, arch: Arch, inp: StepInputs) -> Tensor:
    """The step's token embeddings (T, n_embd), scaled on architectures that scale them."""
    x = named(ops.get_rows(w.get(T.TOKEN_EMBD), inp.tokens), "inp_embd")
    return named(ops.scale(x, hp.embedding_scale), "inp_scaled") if arch.scale_embeddings else x


def output_norm(w: Weights, hp: HParams, x: Tensor) -> Tensor:
    """The hidden states after the last layer, RMS-normed by the output norm."""
    return named(rms_norm_w(x, w.get(T.OUTPUT_NORM), hp.rms_eps), "result_norm")


def head(w: Weights, hp: HParams, x: Tensor) -> Tensor:
    """The output norm and head (+soft-cap): logits of the rows of x."""
    x = output_norm(w, hp, x)
    logits = linear(w, T.OUTPUT, x) if w.has(T.OUTPUT) else ops.mul_mat(w.get(T.TOKEN_EMBD), x)
    if hp.final_logit_softcap:
        logits = softcap(logits, hp.final_logit_softcap)
    return named(logits, "result_output")
