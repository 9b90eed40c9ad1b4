"""Write a GGUF file with the shapes of a real model and random blocks, to measure memory and speed at real
sizes without downloading one (gguf.quantize is far too slow at this size; random blocks with scales that keep
activations bounded are enough for timing). Not part of CI.

    python examples/synthetic_gguf.py llama-3.1-8b q4_0 /tmp/llama8b-q4_0.gguf
    pyggml bench /tmp/llama8b-q4_0.gguf -p 32 -n 16 -r 2
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from pyggml.model.tokenizer_bpe import BYTE_TO_CHAR

Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class Shape:
    """A llama-architecture model's sizes."""
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    tied: bool


SHAPES = {
    "llama-3.2-1b": Shape(16, 2048, 8192, 32, 8, 128256, tied=True),
    "llama-3.1-8b": Shape(32, 4096, 14336, 32, 8, 128256, tied=False),
}
# the float16 scale of a block type, chosen so that a row of random values has about unit norm per sqrt(K)
VALUE_STD = {Q.Q4_0: 4.6, Q.Q8_0: 74.0}


def matrices(s: Shape) -> list[tuple[str, tuple[int, int]]]:
    """(name, (rows, cols)) of every weight matrix, in file order."""
    hd = s.n_embd // s.n_head
    out = [("token_embd.weight", (s.n_vocab, s.n_embd))]
    for il in range(s.n_layer):
        p = f"blk.{il}."
        out += [(p + "attn_q.weight", (s.n_head * hd, s.n_embd)), (p + "attn_k.weight", (s.n_head_kv * hd, s.n_embd)),
                (p + "attn_v.weight", (s.n_head_kv * hd, s.n_embd)), (p + "attn_output.weight", (s.n_embd, s.n_embd)),
                (p + "ffn_gate.weight", (s.n_ff, s.n_embd)), (p + "ffn_up.weight", (s.n_ff, s.n_embd)),
                (p + "ffn_down.weight", (s.n_embd, s.n_ff))]
    return out + ([] if s.tied else [("output.weight", (s.n_vocab, s.n_embd))])


def norms(s: Shape) -> list[str]:
    return ["output_norm.weight"] + [f"blk.{il}.{n}.weight" for il in range(s.n_layer) for n in ("attn_norm", "ffn_norm")]


def random_blocks(dtype: Q, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(rows, bytes per row) random blocks of dtype whose scale (the leading float16) is 1 / (std·sqrt(cols))."""
    block, type_size = gguf.GGML_QUANT_SIZES[dtype]
    blocks = np.frombuffer(rng.bytes(shape[0] * shape[1] // block * type_size), np.uint8).reshape(-1, type_size).copy()
    blocks[:, :2] = np.frombuffer(np.float16(1.0 / (VALUE_STD[dtype] * np.sqrt(shape[1]))).tobytes(), np.uint8)
    return blocks.reshape(shape[0], -1)


def write(path: Path, s: Shape, dtype: Q, seed: int = 0) -> None:
    """Stream the file tensor by tensor (never more than one tensor in memory)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    tokens = [*BYTE_TO_CHAR] + [f"[filler{i}]" for i in range(s.n_vocab - 256)]
    for add, value in ((w.add_context_length, 8192), (w.add_embedding_length, s.n_embd), (w.add_block_count, s.n_layer),
                       (w.add_feed_forward_length, s.n_ff), (w.add_head_count, s.n_head),
                       (w.add_head_count_kv, s.n_head_kv), (w.add_rope_dimension_count, s.n_embd // s.n_head),
                       (w.add_rope_freq_base, 500000.0), (w.add_layer_norm_rms_eps, 1e-5),
                       (w.add_tokenizer_model, "gpt2"), (w.add_tokenizer_pre, "llama-bpe"), (w.add_token_list, tokens),
                       (w.add_token_types, [gguf.TokenType.NORMAL] * len(tokens)), (w.add_token_merges, []),
                       (w.add_eos_token_id, len(tokens) - 1)):
        add(value)
    block, type_size = gguf.GGML_QUANT_SIZES[dtype]
    for name, (rows, cols) in matrices(s):
        w.add_tensor_info(name, (rows, cols // block * type_size), np.dtype(np.uint8), rows * cols // block * type_size,
                          raw_dtype=dtype)
    for name in norms(s):
        w.add_tensor_info(name, (s.n_embd,), np.dtype(np.float32), 4 * s.n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, shape in matrices(s):
        w.write_tensor_data(random_blocks(dtype, shape, rng))
    for _ in norms(s):
        w.write_tensor_data(np.ones(s.n_embd, np.float32))
    w.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("type", choices=[t.name.lower() for t in VALUE_STD])
    parser.add_argument("path", type=Path)
    args = parser.parse_args()
    write(args.path, SHAPES[args.shape], Q[args.type.upper()])
    print(f"{args.path}: {args.path.stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
