"""Hyper-parameters per architecture, with llama.cpp's defaults."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pyggml.graph.dtypes import DType
from pyggml.graph.errors import PyggmlError
from pyggml.model.gguf_file import GGUFFile
from pyggml.model.hparams import YarnParams, load_hparams


def llama_metadata(**extra) -> dict:
    """The smallest llama metadata llama.cpp accepts."""
    meta = {"general.architecture": "llama", "llama.context_length": 2048, "llama.embedding_length": 512,
            "llama.block_count": 4, "llama.attention.head_count": 8,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "tokenizer.ggml.tokens": ["a", "b", "c"]}
    meta.update(extra)
    return meta


def test_smollm2(smollm2_path: Path) -> None:
    model = GGUFFile(smollm2_path)
    hp = load_hparams(model.metadata, model.tensors)
    assert (hp.arch, hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv) == ("llama", 30, 576, 9, 3)
    assert (hp.head_dim, hp.head_dim_v, hp.rope_dim, hp.n_ff, hp.n_vocab) == (64, 64, 64, 1536, 49152)
    assert hp.n_ctx_train == 8192 and hp.rope_freq_base == 100000.0 and hp.rope_freq_scale == 1.0
    assert hp.rms_eps == pytest.approx(1e-5) and hp.attention_scale == 1 / 8 and hp.embedding_scale == 1.0
    assert hp.tie_embeddings  # no output.weight: the Q8_0 embedding is the output projection
    assert not any(hp.is_swa(il) for il in range(hp.n_layer)) and hp.sliding_window == 0


def test_gemma3(gemma3_path: Path) -> None:
    model = GGUFFile(gemma3_path)
    hp = load_hparams(model.metadata, model.tensors)
    assert (hp.arch, hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv) == ("gemma3", 18, 640, 4, 1)
    assert (hp.head_dim, hp.head_dim_v, hp.n_vocab, hp.sliding_window) == (256, 256, 262144, 512)
    assert hp.rope_freq_base == 1e6 and hp.rope_freq_base_swa == 10000.0
    assert hp.rms_eps == pytest.approx(1e-6) and hp.attention_scale == 1 / 16
    assert hp.embedding_scale == math.sqrt(640) and hp.tie_embeddings
    # llama.cpp's LLM_ARCH_GEMMA3: every 6th layer (il % 6 == 5) is global, the others slide
    assert [il for il in range(18) if not hp.is_swa(il)] == [5, 11, 17]
    assert hp.rope_base(0) == 10000.0 and hp.rope_base(5) == 1e6
    assert hp.final_logit_softcap is None and hp.attn_logit_softcap is None


def test_llama_defaults() -> None:
    hp = load_hparams(llama_metadata())
    assert hp.n_head_kv == 8 and hp.head_dim == 64 and hp.head_dim_v == 64 and hp.rope_dim == 64
    assert hp.rope_freq_base == 10000.0 and hp.rope_freq_scale == 1.0 and hp.n_vocab == 3 and hp.n_ff == 0
    assert not hp.tie_embeddings  # unknown without the tensor names
    assert load_hparams(llama_metadata(), ["token_embd.weight"]).tie_embeddings
    assert not load_hparams(llama_metadata(), ["token_embd.weight", "output.weight"]).tie_embeddings


def test_rope_scaling() -> None:
    hp = load_hparams(llama_metadata(**{"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}))
    assert hp.rope_freq_scale == 0.25
    assert load_hparams(llama_metadata(**{"llama.rope.scale_linear": 2.0})).rope_freq_scale == 0.5
    yarn = load_hparams(llama_metadata(**{"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
                                          "llama.rope.scaling.original_context_length": 512}))
    assert yarn.rope_freq_scale == 0.25 and yarn.yarn == YarnParams(512)
    assert load_hparams(llama_metadata(**{"llama.rope.scaling.type": "yarn"})).yarn.n_ctx_orig == 2048
    assert load_hparams(llama_metadata()).yarn is None
    none = load_hparams(llama_metadata(**{"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 4.0}))
    assert none.rope_freq_scale == 1.0  # llama.cpp never scales when the type says none


@pytest.mark.parametrize("key,value,what", [
    ("llama.rope.scaling.type", "wobbly", "llama.rope.scaling.type = 'wobbly'"),
    ("llama.rope.scaling.yarn_log_multiplier", 0.1, "yarn_log_multiplier .YaRN log multiplier."),
    ("llama.rope.scaling.type", "longrope", "llama.rope.scaling.type = 'longrope'"),
    ("llama.expert_count", 8, "llama.expert_count .mixture of experts."),
    ("llama.logit_scale", 0.5, "llama.logit_scale .logit scaling."),
    ("llama.rope.dimension_sections", np.array([16, 24, 24, 0]), "llama.rope.dimension_sections"),
])
def test_keys_that_change_the_maths_are_refused_by_name(key, value, what) -> None:
    with pytest.raises(PyggmlError, match=what):
        load_hparams(llama_metadata(**{key: value}))


def test_neutral_values_and_longrope_tensors() -> None:
    assert load_hparams(llama_metadata(**{"llama.expert_count": 0, "llama.logit_scale": 1.0})).n_layer == 4
    with pytest.raises(PyggmlError, match="tensor rope_factors_long.weight .longrope"):
        load_hparams(llama_metadata(), ["token_embd.weight", "rope_factors_long.weight"])


def test_gemma2_softcaps_and_alternating_window() -> None:
    meta = {k.replace("llama.", "gemma2."): v for k, v in llama_metadata().items()}
    meta.update({"general.architecture": "gemma2", "gemma2.attention.sliding_window": 16})
    hp = load_hparams(meta)
    assert (hp.attn_logit_softcap, hp.final_logit_softcap) == (50.0, 30.0)  # llama.cpp's defaults
    assert [hp.is_swa(il) for il in range(4)] == [True, False, True, False]  # il % 2 == 0 slides
    assert hp.embedding_scale == math.sqrt(512) and hp.attention_scale == 1 / math.sqrt(64)
    hp = load_hparams({**meta, "gemma2.final_logit_softcapping": 10.0, "gemma2.block_count": 46,
                       "gemma2.attention.key_length": 128})
    assert hp.final_logit_softcap == 10.0 and hp.attention_scale == 1 / math.sqrt(512 / 8)


def test_explicit_keys_override_defaults() -> None:
    hp = load_hparams(llama_metadata(**{"llama.attention.head_count_kv": 2, "llama.attention.key_length": 128,
                                        "llama.attention.value_length": 96, "llama.rope.dimension_count": 32,
                                        "llama.vocab_size": 7, "llama.feed_forward_length": np.array([9, 9, 9, 9])}))
    assert (hp.n_head_kv, hp.head_dim, hp.head_dim_v, hp.rope_dim, hp.n_vocab, hp.n_ff) == (2, 128, 96, 32, 7, 9)
    assert hp.kv_bytes_per_token(DType.F16, DType.F16) == 4 * 2 * (128 + 96) * 2
    assert hp.kv_bytes_per_token(DType.Q8_0, DType.Q4_0, 1) == 4 * 1 * (128 // 32 * 34 + 96 // 32 * 18)


def test_errors() -> None:
    with pytest.raises(PyggmlError, match="'mamba'"):
        load_hparams({"general.architecture": "mamba"})
    with pytest.raises(PyggmlError, match="None"):
        load_hparams({})
    missing = llama_metadata()
    del missing["llama.block_count"]
    with pytest.raises(PyggmlError, match="llama.block_count"):
        load_hparams(missing)
    with pytest.raises(PyggmlError, match="layer_norm_rms_epsilon"):
        load_hparams({k: v for k, v in llama_metadata().items() if "epsilon" not in k})
    with pytest.raises(PyggmlError, match="per-layer"):
        load_hparams(llama_metadata(**{"llama.attention.head_count_kv": np.array([8, 4, 8, 8])}))
    with pytest.raises(PyggmlError, match="KV heads"):
        load_hparams(llama_metadata(**{"llama.attention.head_count_kv": 3}))
    with pytest.raises(PyggmlError, match="non-negative integer"):
        load_hparams(llama_metadata(**{"llama.block_count": "four"}))


def test_gemma3_without_sliding_window_and_27b_scale() -> None:
    meta = {k.replace("llama.", "gemma3."): v for k, v in llama_metadata().items()}
    meta["general.architecture"] = "gemma3"
    hp = load_hparams(meta)
    assert hp.sliding_window == 0 and not hp.is_swa(0) and hp.rope_base(0) == hp.rope_freq_base
    # llama.cpp: the 62-layer gemma3 (27B) scales queries by 1/sqrt(n_embd / n_head)
    big = load_hparams({**meta, "gemma3.block_count": 62, "gemma3.attention.key_length": 128})
    assert big.attention_scale == 1 / math.sqrt(512 / 8)
    assert load_hparams({**meta, "gemma3.attention.key_length": 128}).attention_scale == 1 / math.sqrt(128)
