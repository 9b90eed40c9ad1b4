"""Embeddings: the output-normed hidden states of every input token, pooled into one vector per input (mean, the
last token, the first (CLS) or none) and normalized, as llama.cpp's embedding mode and llama-server do."""
from __future__ import annotations

import numpy as np

from pyggml.graph.errors import PyggmlError

from ..hparams import HParams

# llama.cpp's enum llama_pooling_type (the GGUF's {arch}.pooling_type) -> pooling name; RANK is not supported
POOLING_TYPES = {0: "none", 1: "mean", 2: "cls", 3: "last"}
POOLINGS = tuple(POOLING_TYPES.values())
# a causal decoder without a pooling_type: llama.cpp would give per-token embeddings (none), which the OpenAI
# endpoint cannot return; its last token is the one that sees the whole input (Qwen3-Embedding, e5-mistral)
DEFAULT_POOLING = "last"


def model_pooling(hp: HParams) -> str:
    """The pooling the model's GGUF names, else DEFAULT_POOLING."""
    if hp.pooling_type is None:
        return DEFAULT_POOLING
    if hp.pooling_type not in POOLING_TYPES:
        raise PyggmlError(f"{hp.arch} model: pooling_type {hp.pooling_type} is not supported "
                          f"(supported: {', '.join(f'{k} ({v})' for k, v in POOLING_TYPES.items())})")
    return POOLING_TYPES[hp.pooling_type]


def pool(hidden: np.ndarray, pooling: str) -> np.ndarray:
    """One input's (n_tokens, n_embd) hidden states pooled: (n_embd,), or (n_tokens, n_embd) for none."""
    if pooling not in POOLINGS:
        raise PyggmlError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    if pooling == "mean":
        return hidden.mean(axis=0, dtype=np.float64).astype(np.float32)
    return {"none": hidden, "cls": hidden[0], "last": hidden[-1]}[pooling]


def normalize(x: np.ndarray, norm: int = 2) -> np.ndarray:
    """x scaled per row as llama.cpp's common_embd_normalize: -1 none, 0 max-abs to int16 range, 1 taxicab,
    2 Euclidean (the default), p > 2 the p-norm; a zero row stays zero."""
    x64 = np.asarray(x, np.float64)
    if norm < 0:
        return np.asarray(x, np.float32)
    if norm == 0:
        total = np.abs(x64).max(axis=-1, keepdims=True) / 32760.0
    else:
        total = (np.abs(x64) ** norm).sum(axis=-1, keepdims=True) ** (1.0 / norm)
    return (x64 * np.where(total > 0, 1.0 / np.where(total > 0, total, 1.0), 0.0)).astype(np.float32)
