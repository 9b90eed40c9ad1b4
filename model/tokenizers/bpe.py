"""GPT-2 byte-level BPE (tokenizer.ggml.model "gpt2"), as llama.cpp's llm_tokenizer_bpe.

Text is split into words by the pre-tokenizer that tokenizer.ggml.pre names; each word's
UTF-8 bytes are mapped to printable characters (GPT-2's bytes_to_unicode) and merged by
rank, lowest first and leftmost on ties, exactly as llama.cpp's priority queue does.
"""
from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

from pyggml.model.tokenizers.pretokenizers import pretokenizer
from pyggml.model.tokenizers.tokenizer import Tokenizer


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> character table: printable bytes map to themselves, the rest to U+0100 onwards."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = iter(range(0x100, 0x200))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


BYTE_TO_CHAR = _bytes_to_unicode()
_ENCODE = str.maketrans({chr(b): c for b, c in enumerate(BYTE_TO_CHAR)})  # latin-1 char -> GPT-2 char
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}


def byte_encode(word: str) -> str:
    """A word's UTF-8 bytes as GPT-2 characters."""
    return word.encode("utf-8", errors="replace").decode("latin-1").translate(_ENCODE)


def byte_decode(text: str) -> bytes:
    """The bytes GPT-2 characters stand for (llama.cpp's llama_decode_text, unmappable characters marked)."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in text)
    except KeyError:
        return b"".join(bytes((CHAR_TO_BYTE[c],)) if c in CHAR_TO_BYTE
                        else b"[UNK_BYTE_0x" + c.encode().hex().encode() + text.encode() + b"]" for c in text)


def merge(word: str, ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """Symbols of word after BPE: repeatedly merge the lowest-ranked adjacent pair, leftmost first."""
    symbols = list(word)
    following = [*range(1, len(symbols)), -1]
    preceding = [*range(-1, len(symbols) - 1)]
    queue = [(ranks[a, b], i, i + 1, a + b) for i, (a, b) in enumerate(zip(symbols, symbols[1:])) if (a, b) in ranks]
    heapq.heapify(queue)
    while queue:
        _, left, right, text = heapq.heappop(queue)
        if not symbols[left] or not symbols[right] or symbols[left] + symbols[right] != text:
            continue  # stale: one side was merged since
        symbols[left], symbols[right] = text, ""
        following[left] = after = following[right]
        if after >= 0:
            preceding[after] = left
        for a, b in ((preceding[left], left), (left, after)):
            if a >= 0 and b >= 0 and (symbols[a], symbols[b]) in ranks:
                heapq.heappush(queue, (ranks[symbols[a], symbols[b]], a, b, symbols[a] + symbols[b]))
    return [s for s in symbols if s]


class BPETokenizer(Tokenizer):
    """Byte-level BPE from tokens and merges, with the pre-tokenizer of tokenizer.ggml.pre."""

    default_ids = {"bos_id": 11, "eos_id": 11}
    clean_spaces = True

    def __init__(self, metadata: Mapping[str, Any]) -> None:
        """Read merges (rank = position in tokenizer.ggml.merges) and the pre-tokenizer."""
        self.pre = pretokenizer(metadata.get("tokenizer.ggml.pre") or None)
        self.add_bos, self.clean_spaces = self.pre.add_bos, self.pre.clean_spaces
        super().__init__(metadata)
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, text in enumerate(metadata.get("tokenizer.ggml.merges", [])):
            cut = text.find(" ", 1)
            self.ranks.setdefault((text[:cut], text[cut + 1:]) if cut > 0 else ("", ""), rank)
        self._cache: dict[str, tuple[int, ...]] = {}

    def _encode_fragments(self, fragments: Sequence[str | int]) -> list[int]:
        """Special tokens as they are; raw text pre-tokenized, then each word through BPE."""
        ids: list[int] = []
        for fragment in fragments:
            if isinstance(fragment, int):
                ids.append(fragment)
            else:
                for word in self.pre.split(fragment):
                    ids += self._word_ids(byte_encode(word))
        return ids

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """Token ids of one byte-encoded word (cached)."""
        ids = self._cache.get(word)
        if ids is None:
            whole = self.token_to_id.get(word) if self.pre.ignore_merges else None
            symbols = [word] if whole is not None else merge(word, self.ranks)
            ids = self._cache[word] = tuple(i for s in symbols for i in self._symbol_ids(s))
        return ids

    def _symbol_ids(self, symbol: str) -> list[int]:
        """A merged symbol's id, or its single ASCII bytes' ids when it is not a token (llama.cpp's fallback)."""
        token_id = self.token_to_id.get(symbol)
        if token_id is not None:
            return [token_id]
        return [self.token_to_id[chr(b)] for b in symbol.encode() if b < 0x80 and chr(b) in self.token_to_id]

    def _normal_piece(self, text: str) -> bytes:
        """A NORMAL token's GPT-2 characters back to bytes."""
        return byte_decode(text)
