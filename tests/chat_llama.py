"""A tiny random llama GGUF that can chat: a byte-level vocabulary (every byte a token) plus ChatML's markers."""
from __future__ import annotations

from pathlib import Path

import gguf

from pyggml.model.tokenizer_bpe import BYTE_TO_CHAR
from synthetic_llama import TinyLlama, make_weights

SPECIAL = ("<|im_start|>", "<|im_end|>")
CFG = TinyLlama(n_vocab=256 + len(SPECIAL), n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128)


def write_chat_llama(path: Path, n_ctx: int = 1024) -> Path:
    """Write the model (the chat template is left out: ChatML is the built-in fallback)."""
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((w.add_context_length, n_ctx), (w.add_embedding_length, CFG.n_embd),
                       (w.add_block_count, CFG.n_layer), (w.add_feed_forward_length, CFG.n_ff),
                       (w.add_head_count, CFG.n_head), (w.add_head_count_kv, CFG.n_head_kv),
                       (w.add_rope_dimension_count, CFG.head_dim), (w.add_rope_freq_base, CFG.rope_base),
                       (w.add_layer_norm_rms_eps, CFG.eps), (w.add_tokenizer_model, "gpt2"),
                       (w.add_tokenizer_pre, "gpt-2"), (w.add_token_list, [*BYTE_TO_CHAR, *SPECIAL]),
                       (w.add_token_types, [gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * len(SPECIAL)),
                       (w.add_token_merges, []), (w.add_eos_token_id, 256 + SPECIAL.index("<|im_end|>"))):
        add(value)
    for name, value in make_weights(CFG).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
