"""Write a GGUF file with the shapes of a real model and random blocks, to measure memory and speed at real
sizes without downloading one (gguf.quantize is far too slow at this size; random blocks with scales that keep
activations bounded are enough for timing). The K-quant mixes give each tensor the type llama.cpp's quantizer
gives it (Q4_K_M: Q6_K for the output and for attn_v / ffn_down of the layers use_more_bits picks); the BPE
vocabulary carries merges, without which llama.cpp refuses the file. Not part of CI.

    python examples/synthetic_gguf.py llama-3.1-8b q4_0 /tmp/llama8b-q4_0.gguf
    python examples/synthetic_gguf.py qwen2.5-7b q4_k_m /tmp/qwen7b-q4_k_m.gguf
    pyggml bench /tmp/llama8b-q4_0.gguf -p 32 -n 16 -r 2
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from pyggml.graph.block_layouts import BLOCKS
from pyggml.model.tokenizers.bpe import BYTE_TO_CHAR

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
    arch: str = "llama"
    qkv_bias: bool = False
    rope_base: float = 500000.0


SHAPES = {
    "llama-3.2-1b": Shape(16, 2048, 8192, 32, 8, 128256, tied=True),
    "llama-3.1-8b": Shape(32, 4096, 14336, 32, 8, 128256, tied=False),
    "qwen2.5-7b": Shape(28, 3584, 18944, 28, 4, 152064, tied=False, arch="qwen2", qkv_bias=True, rope_base=1e6),
}


def _use_more_bits(il: int, n_layer: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v and ffn_down get more bits in the _M mixes."""
    return il < n_layer // 8 or il >= 7 * n_layer // 8 or (il - n_layer // 8) % 3 == 2


def _k_mix(base: Q) -> callable:
    """A _K_M mix: base everywhere, Q6_K for the output and for attn_v / ffn_down where _use_more_bits."""
    def type_of(name: str, il: int | None, n_layer: int) -> Q:
        more = name == "output.weight" or (il is not None and name.split(".")[2] in ("attn_v", "ffn_down")
                                           and _use_more_bits(il, n_layer))
        return Q.Q6_K if more else base
    return type_of


MIXES = {"q4_0": lambda *_: Q.Q4_0, "q8_0": lambda *_: Q.Q8_0, "q4_k_m": _k_mix(Q.Q4_K), "q5_k_m": _k_mix(Q.Q5_K),
         "q6_k": lambda *_: Q.Q6_K}


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


def _scales(dtype: Q, rng: np.random.Generator) -> tuple[float, float]:
    """(the values' std, the min's share) of random blocks of dtype with d = 1: a min of `share` (dmin = share · d)
    centres the values."""
    block, type_size = gguf.GGML_QUANT_SIZES[dtype]
    sample = np.frombuffer(rng.bytes(64 * type_size), np.uint8).reshape(64, type_size).copy()
    fields = BLOCKS[dtype].scalars()
    parts = []
    for d, dmin in ((1.0, 0.0), (0.0, 1.0)):
        for at, value in zip(fields, (d, dmin)):
            sample[:, at:at + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)
        parts.append(gguf.dequantize(sample, dtype).astype(np.float64))
    share = -parts[0].mean() / parts[1].mean() if len(fields) > 1 else 0.0
    return float((parts[0] + share * parts[1]).std()), float(share)


def random_blocks(dtype: Q, shape: tuple[int, int], rng: np.random.Generator,
                  scales: tuple[float, float]) -> np.ndarray:
    """(rows, bytes per row) random blocks of dtype whose d is 1 / (std·sqrt(cols)) (and dmin share · d)."""
    block, type_size = gguf.GGML_QUANT_SIZES[dtype]
    blocks = np.frombuffer(rng.bytes(shape[0] * shape[1] // block * type_size), np.uint8).reshape(-1, type_size).copy()
    d = 1.0 / (scales[0] * np.sqrt(shape[1]))
    for at, value in zip(BLOCKS[dtype].scalars(), (d, d * scales[1])):
        blocks[:, at:at + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)
    return blocks.reshape(shape[0], -1)


def vocabulary(n_vocab: int) -> tuple[list[str], list[str]]:
    """(tokens, merges): the 256 byte tokens, two-byte tokens with the merges that make them, fillers."""
    chars = list(BYTE_TO_CHAR)
    pairs = [(a, b) for a in chars for b in chars][:min(n_vocab - 257, 30000)]
    tokens = chars + [a + b for a, b in pairs]
    return tokens + [f"[filler{i}]" for i in range(n_vocab - len(tokens))], [f"{a} {b}" for a, b in pairs]


def _metadata(w: gguf.GGUFWriter, s: Shape) -> None:
    tokens, merges = vocabulary(s.n_vocab)
    for add, value in ((w.add_context_length, 8192), (w.add_embedding_length, s.n_embd), (w.add_block_count, s.n_layer),
                       (w.add_feed_forward_length, s.n_ff), (w.add_head_count, s.n_head),
                       (w.add_head_count_kv, s.n_head_kv), (w.add_rope_dimension_count, s.n_embd // s.n_head),
                       (w.add_rope_freq_base, s.rope_base), (w.add_layer_norm_rms_eps, 1e-5),
                       (w.add_tokenizer_model, "gpt2"), (w.add_tokenizer_pre, "llama-bpe"), (w.add_token_list, tokens),
                       (w.add_token_types, [gguf.TokenType.NORMAL] * len(tokens)), (w.add_token_merges, merges),
                       (w.add_eos_token_id, len(tokens) - 1)):
        add(value)


def vectors(s: Shape) -> list[tuple[str, int, float]]:
    """(name, length, value) of every F32 vector: the norms (ones) and Q/K/V biases (zeros) where the shape has
    them."""
    out = [(name, s.n_embd, 1.0) for name in norms(s)]
    if s.qkv_bias:
        kv = s.n_head_kv * (s.n_embd // s.n_head)
        out += [(f"blk.{il}.attn_{p}.bias", n, 0.0) for il in range(s.n_layer)
                for p, n in (("q", s.n_embd), ("k", kv), ("v", kv))]
    return out


def write(path: Path, s: Shape, mix: str, seed: int = 0) -> None:
    """Stream the file tensor by tensor (never more than one tensor in memory)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), s.arch)
    _metadata(w, s)
    typed = [(name, shape, MIXES[mix](name, int(name.split(".")[1]) if name.startswith("blk.") else None, s.n_layer))
             for name, shape in matrices(s)]
    for name, (rows, cols), dtype in typed:
        block, type_size = gguf.GGML_QUANT_SIZES[dtype]
        w.add_tensor_info(name, (rows, cols // block * type_size), np.dtype(np.uint8), rows * cols // block * type_size,
                          raw_dtype=dtype)
    for name, n, _ in vectors(s):
        w.add_tensor_info(name, (n,), np.dtype(np.float32), 4 * n)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    scales = {t: _scales(t, rng) for t in {dtype for *_, dtype in typed}}
    for _, shape, dtype in typed:
        w.write_tensor_data(random_blocks(dtype, shape, rng, scales[dtype]))
    for _, n, value in vectors(s):
        w.write_tensor_data(np.full(n, value, np.float32))
    w.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("type", choices=sorted(MIXES), help="a tensor type, or a llama.cpp mix (q4_k_m, q5_k_m)")
    parser.add_argument("path", type=Path)
    args = parser.parse_args()
    write(args.path, SHAPES[args.shape], args.type)
    print(f"{args.path}: {args.path.stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
