"""SentencePiece-style tokenizer (tokenizer.ggml.model "llama") through the sentencepiece library.

The GGUF vocabulary becomes a SentencePiece BPE ModelProto, serialised here with a minimal
protobuf writer (no protobuf package needed). llama.cpp's SPM tokenizer merges the
highest-scoring adjacent pair among all vocabulary entries, which is sentencepiece's BPE
algorithm when every piece but the byte and unknown pieces is NORMAL; the normalizer is the
identity with spaces escaped to U+2581. The space prefix and special tokens are handled as
llama.cpp does, outside sentencepiece.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sentencepiece import SentencePieceProcessor

from pyggml.model.tokenizers.tokenizer import Tokenizer, TokenType

_BPE = 2  # TrainerSpec.ModelType
_PIECE_NORMAL, _PIECE_UNKNOWN, _PIECE_BYTE = 1, 2, 6  # ModelProto.SentencePiece.Type


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(number: int, data: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _int_field(number: int, value: int) -> bytes:
    """A varint field (wire type 0): int32, bool or enum."""
    return _varint(number << 3) + _varint(value)


def _varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes in the varint of each value (< 2**28)."""
    return 1 + (values >= 1 << 7) + (values >= 1 << 14) + (values >= 1 << 21)


def _put_varints(out: np.ndarray, at: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Write the varint of each value at its offset; the offsets just past them."""
    sizes = _varint_sizes(values)
    for k in range(4):
        more = sizes > k
        out[at[more] + k] = (values[more] >> 7 * k) & 0x7F | np.where(sizes[more] > k + 1, 0x80, 0)
    return at + sizes


def _pieces(tokens: Sequence[str], scores: np.ndarray, types: np.ndarray) -> bytes:
    """The repeated ModelProto.pieces field, vectorised over all tokens.

    Each piece is 0x0A varint(body) and a body of: 0x0A varint(n) text (piece = 1),
    0x15 float32 (score = 2), and 0x18 type (type = 3) when not NORMAL.
    """
    texts = [t.encode() for t in tokens]
    length = np.fromiter(map(len, texts), np.int64, len(texts))
    tail = np.where(types != _PIECE_NORMAL, 2, 0)
    body = 1 + _varint_sizes(length) + length + 5 + tail
    size = 1 + _varint_sizes(body) + body
    start = np.cumsum(size) - size
    out = np.empty(int(size.sum()), np.uint8)
    out[start] = 0x0A
    at = _put_varints(out, start + 1, body)
    out[at] = 0x0A
    at = _put_varints(out, at + 1, length)
    text_at = np.repeat(at - (np.cumsum(length) - length), length) + np.arange(length.sum())
    out[text_at] = np.frombuffer(b"".join(texts), np.uint8)
    at += length
    out[at] = 0x15
    out[at[:, None] + np.arange(1, 5)] = np.frombuffer(scores.astype("<f4").tobytes(), np.uint8).reshape(-1, 4)
    typed = tail > 0
    out[at[typed] + 5] = 0x18
    out[at[typed] + 6] = types[typed]
    return out.tobytes()


def model_proto(tokens: Sequence[str], scores: np.ndarray, types: np.ndarray, unk_id: int) -> bytes:
    """A serialised SentencePiece BPE ModelProto that tokenizes as llama.cpp's SPM tokenizer."""
    piece_types = np.where(types == TokenType.BYTE, _PIECE_BYTE, _PIECE_NORMAL)
    piece_types[unk_id] = _PIECE_UNKNOWN
    trainer = (_int_field(3, _BPE) + _int_field(4, len(tokens))
               + _int_field(35, int((types == TokenType.BYTE).any())) + _int_field(40, unk_id))
    normalizer = (_len_field(1, b"identity") + _int_field(3, 0)  # add_dummy_prefix: done outside
                  + _int_field(4, 0) + _int_field(5, 1))  # remove_extra_whitespaces, escape_whitespaces
    return _pieces(tokens, scores, piece_types) + _len_field(2, trainer) + _len_field(3, normalizer)


class SPMTokenizer(Tokenizer):
    """llama.cpp's SPM tokenizer: BOS added, a space prefix before text that starts or follows a special token."""

    default_ids = {"bos_id": 1, "eos_id": 2, "unk_id": 0}
    add_bos = True
    add_space_prefix = True

    def __init__(self, metadata: Mapping[str, Any]) -> None:
        """Build the sentencepiece model from the GGUF vocabulary."""
        super().__init__(metadata)
        self.add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", self.add_space_prefix))
        scores = metadata.get("tokenizer.ggml.scores")
        scores = np.zeros(self.n_vocab, np.float32) if scores is None else np.asarray(scores[:self.n_vocab])
        unk_id = self.unk_id if self.unk_id is not None else 0
        self._sp = SentencePieceProcessor(model_proto=model_proto(self.tokens, scores, self._types, unk_id))

    def _encode_fragments(self, fragments: Sequence[str | int]) -> list[int]:
        """sentencepiece on each raw fragment, with llama.cpp's space prefix rule."""
        ids: list[int] = []
        after_special = True
        for fragment in fragments:
            if isinstance(fragment, int):
                ids.append(fragment)
            else:
                text = " " + fragment if self.add_space_prefix and after_special else fragment
                ids += self._sp.encode(text)
            after_special = isinstance(fragment, int)
        return ids

    def _normal_piece(self, text: str) -> bytes:
        """U+2581 stands for a space."""
        return text.replace("\u2581", " ").encode()
