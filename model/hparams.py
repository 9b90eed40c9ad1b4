"""Hyper-parameters of a GGUF model, read from its metadata with llama.cpp's defaults per architecture."""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import MODEL_TENSOR, TENSOR_NAMES, Keys, RopeScalingType

from pyggml.graph.dtypes import DType, nbytes
from pyggml.graph.errors import PyggmlError

from .arch import ARCHITECTURES

OUTPUT_WEIGHT = f"{TENSOR_NAMES[MODEL_TENSOR.OUTPUT]}.weight"
ROPE_SCALE_LINEAR = "{arch}.rope.scale_linear"  # the old name of rope.scaling.factor, still read by llama.cpp
DEFAULT_ROPE_FREQ_BASE = 10000.0


# Keys that change the maths and that no architecture here implements: refused unless neutral (key -> what it is,
# its neutral value).
UNSUPPORTED_KEYS: dict[str, tuple[str, float]] = {
    Keys.LLM.EXPERT_COUNT: ("mixture of experts", 0), Keys.LLM.LOGIT_SCALE: ("logit scaling", 1.0),
    Keys.LLM.RESIDUAL_SCALE: ("residual scaling", 1.0), Keys.LLM.EMBEDDING_SCALE: ("embedding scaling", 1.0),
    Keys.Attention.CLAMP_KQV: ("clamped Q/K/V", 0), Keys.Rope.DIMENSION_SECTIONS: ("multi-section rope", 0),
    Keys.Rope.SCALING_ATTN_FACTOR: ("rope attention factor", 1.0),
    Keys.Rope.SCALING_YARN_ATTN_FACTOR: ("YaRN attention factor", 1.0),
    Keys.Rope.SCALING_YARN_EXT_FACTOR: ("YaRN extrapolation mix", 1.0),
    Keys.Rope.SCALING_YARN_LOG_MUL: ("YaRN log multiplier", 0),
}
# Tensors whose maths no architecture here implements (tensor name -> what it is).
UNSUPPORTED_TENSORS: dict[str, str] = {f"{TENSOR_NAMES[kind]}.weight": "longrope rope scaling"
                                       for kind in (MODEL_TENSOR.ROPE_FACTORS_LONG, MODEL_TENSOR.ROPE_FACTORS_SHORT)}
SUPPORTED_ROPE_SCALING = (RopeScalingType.NONE.value, RopeScalingType.LINEAR.value, RopeScalingType.YARN.value)


@dataclass(frozen=True)
class YarnParams:
    """YaRN rope scaling, named as ops.rope's arguments (llama.cpp: ext_factor 1, its attention factor leaving
    ggml's own magnitude scale 1 + 0.1 ln(factor))."""

    n_ctx_orig: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    ext_factor: float = 1.0
    attn_factor: float = 1.0


@dataclass(frozen=True)
class HParams:
    """Model hyper-parameters, named as in llama.cpp's llama_hparams."""

    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int          # n_embd_head_k (attention.key_length)
    head_dim_v: int        # n_embd_head_v (attention.value_length)
    n_ff: int
    rms_eps: float
    rope_dim: int          # rope.dimension_count
    rope_freq_base: float
    rope_freq_scale: float  # 1 / rope.scaling.factor (linear scaling), 1 without scaling
    attention_scale: float  # the factor applied to Q·K
    embedding_scale: float  # the factor applied to token embeddings
    tie_embeddings: bool    # no output.weight: the output projection is the token embedding
    sliding_window: int = 0  # 0: no sliding-window attention
    swa_pattern: int = 0
    rope_freq_base_swa: float | None = None
    rope_freq_scale_swa: float | None = None
    yarn: YarnParams | None = None  # YaRN rope scaling (with rope_freq_scale)
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    pooling_type: int | None = None  # the GGUF's {arch}.pooling_type (llama.cpp's enum), None without one

    def is_swa(self, layer: int) -> bool:
        """Whether a layer uses sliding-window attention (llama.cpp: il % pattern < pattern - 1)."""
        return bool(self.sliding_window) and self.swa_pattern > 0 and layer % self.swa_pattern < self.swa_pattern - 1

    def rope_base(self, layer: int) -> float:
        """The rope frequency base of a layer (sliding-window layers may have their own)."""
        if self.is_swa(layer) and self.rope_freq_base_swa is not None:
            return self.rope_freq_base_swa
        return self.rope_freq_base

    def rope_scale(self, layer: int) -> float:
        """The rope frequency scale of a layer (sliding-window layers may have their own)."""
        if self.is_swa(layer) and self.rope_freq_scale_swa is not None:
            return self.rope_freq_scale_swa
        return self.rope_freq_scale

    def kv_bytes_per_token(self, type_k: DType, type_v: DType, n_kv_head: int | None = None) -> int:
        """Bytes of K and V cache of these types per token over all layers (with the model's KV heads, or n_kv_head
        of them)."""
        heads = self.n_head_kv if n_kv_head is None else n_kv_head
        return self.n_layer * heads * (nbytes((self.head_dim,), type_k) + nbytes((self.head_dim_v,), type_v))


class _Keys:
    """Typed look-ups of '{arch}.…' metadata keys with clear errors."""

    def __init__(self, metadata: Mapping[str, Any], arch: str) -> None:
        self.metadata, self.arch = metadata, arch

    def get(self, key: str, default: Any = None) -> Any:
        """The value of a key template, or default."""
        return self.metadata.get(key.format(arch=self.arch), default)

    def integer(self, key: str, default: int | None = None) -> int:
        """An integer value (a per-layer array must be uniform); required when default is None."""
        value = self.get(key, default)
        if value is None:
            raise PyggmlError(f"{self.arch} model: metadata key {key.format(arch=self.arch)} is missing")
        if isinstance(value, np.ndarray):
            if value.size == 0 or np.any(value != value.flat[0]):
                raise PyggmlError(f"{key.format(arch=self.arch)}: per-layer values {value.tolist()} are not supported")
            value = value.flat[0]
        if isinstance(value, (bool, float, str)) or int(value) < 0:
            raise PyggmlError(f"{key.format(arch=self.arch)} must be a non-negative integer, got {value!r}")
        return int(value)

    def refuse_unsupported(self) -> None:
        """An error naming the first key that changes the maths in a way no architecture here implements."""
        for key, (what, neutral) in UNSUPPORTED_KEYS.items():
            value = self.get(key)
            if value is not None and np.any(np.asarray(value) != neutral):
                raise PyggmlError(f"{self.arch} model: metadata key {key.format(arch=self.arch)} ({what}) "
                                  f"is not supported")
        scaling = self.get(Keys.Rope.SCALING_TYPE, RopeScalingType.LINEAR.value)
        if scaling not in SUPPORTED_ROPE_SCALING:
            raise PyggmlError(f"{self.arch} model: metadata key {Keys.Rope.SCALING_TYPE.format(arch=self.arch)} = "
                              f"{scaling!r}: only {' and '.join(SUPPORTED_ROPE_SCALING)} rope scaling are supported")

    def number(self, key: str, default: float | None = None, required: bool = False) -> float | None:
        """A float value, or default (an error when required and absent)."""
        value = self.get(key, default)
        if value is None and required:
            raise PyggmlError(f"{self.arch} model: metadata key {key.format(arch=self.arch)} is missing")
        if value is not None and (isinstance(value, (bool, str)) or not math.isfinite(float(value))):
            raise PyggmlError(f"{key.format(arch=self.arch)} must be a finite number, got {value!r}")
        return None if value is None else float(value)


def load_hparams(metadata: Mapping[str, Any], tensor_names: Collection[str] | None = None) -> HParams:
    """HParams of a model from its GGUF metadata (and tensor names, to tell tied embeddings)."""
    arch = metadata.get(Keys.General.ARCHITECTURE)
    if arch not in ARCHITECTURES:
        raise PyggmlError(f"architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    row, keys = ARCHITECTURES[arch], _Keys(metadata, arch)
    keys.refuse_unsupported()
    for name in set(tensor_names or ()) & UNSUPPORTED_TENSORS.keys():
        raise PyggmlError(f"{arch} model: tensor {name} ({UNSUPPORTED_TENSORS[name]}) is not supported")
    n_ctx_train = keys.integer(Keys.LLM.CONTEXT_LENGTH)
    n_embd, n_layer = keys.integer(Keys.LLM.EMBEDDING_LENGTH), keys.integer(Keys.LLM.BLOCK_COUNT)
    n_head = keys.integer(Keys.Attention.HEAD_COUNT)
    if n_head == 0 or (keys.get(Keys.Attention.KEY_LENGTH) is None and n_embd % n_head):
        raise PyggmlError(f"{arch} model: {n_head} heads do not divide n_embd {n_embd}")
    head_dim = keys.integer(Keys.Attention.KEY_LENGTH, n_embd // n_head)
    n_head_kv = keys.integer(Keys.Attention.HEAD_COUNT_KV, n_head)
    if n_head_kv == 0 or n_head % n_head_kv:
        raise PyggmlError(f"{arch} model: {n_head_kv} KV heads do not divide {n_head} heads")
    scaling_factor = keys.number(Keys.Rope.SCALING_FACTOR) or keys.number(ROPE_SCALE_LINEAR) or 0.0
    if keys.get(Keys.Rope.SCALING_TYPE) == RopeScalingType.NONE.value:
        scaling_factor = 0.0  # llama.cpp never scales when the type says none
    tokens = metadata.get(Keys.Tokenizer.LIST)
    attn_scale_dim = n_embd // n_head if n_layer in row.attn_scale_by_embd_layers else head_dim
    return HParams(
        arch=arch,
        n_vocab=keys.integer(Keys.LLM.VOCAB_SIZE, len(tokens) if tokens is not None else 0),
        n_ctx_train=n_ctx_train,
        n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
        head_dim=head_dim, head_dim_v=keys.integer(Keys.Attention.VALUE_LENGTH, head_dim),
        n_ff=keys.integer(Keys.LLM.FEED_FORWARD_LENGTH, 0),
        rms_eps=keys.number(Keys.Attention.LAYERNORM_RMS_EPS, required=True),
        rope_dim=keys.integer(Keys.Rope.DIMENSION_COUNT, head_dim),
        rope_freq_base=keys.number(Keys.Rope.FREQ_BASE, DEFAULT_ROPE_FREQ_BASE),
        rope_freq_scale=1.0 / scaling_factor if scaling_factor else 1.0,
        attention_scale=keys.number(Keys.Attention.SCALE) or 1.0 / math.sqrt(attn_scale_dim),
        embedding_scale=math.sqrt(n_embd) if row.scale_embeddings else 1.0,
        tie_embeddings=tensor_names is not None and OUTPUT_WEIGHT not in tensor_names,
        sliding_window=keys.integer(Keys.Attention.SLIDING_WINDOW, 0) if row.swa_pattern else 0,
        swa_pattern=row.swa_pattern,
        rope_freq_base_swa=row.rope_freq_base_swa,
        rope_freq_scale_swa=row.rope_freq_scale_swa,
        yarn=_yarn(keys, n_ctx_train) if keys.get(Keys.Rope.SCALING_TYPE) == RopeScalingType.YARN.value else None,
        attn_logit_softcap=keys.number(Keys.LLM.ATTN_LOGIT_SOFTCAPPING, row.attn_softcap) or None,
        final_logit_softcap=keys.number(Keys.LLM.FINAL_LOGIT_SOFTCAPPING, row.final_softcap) or None,
        pooling_type=keys.get(Keys.LLM.POOLING_TYPE),
    )


def _yarn(keys: _Keys, n_ctx_train: int) -> YarnParams:
    """YaRN's settings: the original context (default the trained one) and the ramp's betas."""
    return YarnParams(keys.integer(Keys.Rope.SCALING_ORIG_CTX_LEN, n_ctx_train),
                      keys.number(Keys.Rope.SCALING_YARN_BETA_FAST, 32.0),
                      keys.number(Keys.Rope.SCALING_YARN_BETA_SLOW, 1.0))
