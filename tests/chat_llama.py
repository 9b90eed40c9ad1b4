"""A tiny random llama GGUF that can chat: a byte-level vocabulary (every byte a token) plus ChatML's markers."""
from __future__ import annotations

from pathlib import Path

import gguf

from pyggml.model.tokenizers.bpe import BYTE_TO_CHAR
from synthetic_llama import TinyLlama, make_weights, write_gguf

SPECIAL = ("<|im_start|>", "<|im_end|>")
CFG = TinyLlama(n_vocab=256 + len(SPECIAL), n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128)


def write_chat_llama(path: Path, n_ctx: int = 1024) -> Path:
    """Write the model (the chat template is left out: ChatML is the built-in fallback)."""
    types = [gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * len(SPECIAL)
    return write_gguf(path, CFG, make_weights(CFG), [*BYTE_TO_CHAR, *SPECIAL], types,
                      256 + SPECIAL.index("<|im_end|>"), n_ctx)
