"""Tokenizers built from GGUF metadata: the common interface, special tokens, and the factory.

This follows llama.cpp's llama-vocab.cpp: special ids and flags with per-model defaults,
end-of-generation tokens collected by text, special tokens split out of the text before
the model-specific tokenizer runs (tokenizer_st_partition), and detokenization rules.
"""
from __future__ import annotations

import codecs
import functools
import importlib
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum
from typing import Any

import numpy as np

from pyggml.graph.errors import PyggmlError

# tokenizer.ggml.model -> (module, class) implementing it
_MODELS: dict[str, tuple[str, str]] = {
    "llama": ("pyggml.model.tokenizers.spm", "SPMTokenizer"),
    "gpt2": ("pyggml.model.tokenizers.bpe", "BPETokenizer"),
}

# metadata key suffix (tokenizer.ggml.<key>) -> attribute holding that special id
_SPECIAL_KEYS: dict[str, str] = {
    "bos_token_id": "bos_id",
    "eos_token_id": "eos_id",
    "eot_token_id": "eot_id",
    "eom_token_id": "eom_id",
    "unknown_token_id": "unk_id",
    "padding_token_id": "pad_id",
    "fim_pad_token_id": "fim_pad_id",
    "fim_rep_token_id": "fim_rep_id",
    "fim_sep_token_id": "fim_sep_id",
}

# special ids found by token text when the metadata does not name them (llama.cpp's lists, in priority order)
_SPECIAL_TEXTS: dict[str, tuple[str, ...]] = {
    "eot_id": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
               "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"),
    "eom_id": ("<|eom_id|>",),
    "fim_pad_id": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep_id": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep_id": ("<|file_sep|>",),
}

# token texts that end generation wherever they are in the vocabulary
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))

# (texts that must all be end-of-generation tokens, text then dropped from them), as llama.cpp's workarounds
_EOG_EXCLUSIONS: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset(("<|return|>", "<|call|>")), "<|end|>"),
    (frozenset(("<|calls|>", "<|flush|>")), "<|end|>"),
    (frozenset(("<|tool_response>",)), "</s>"),
)

# llama.cpp's detokenizer clean-up (clean_up_tokenization_spaces), applied in order
_CLEAN_SPACES: tuple[tuple[re.Pattern[bytes], bytes], ...] = (
    (re.compile(rb" (?=[?!.,])"), b""),
    (re.compile(rb" ' "), b"'"),
    (re.compile(rb" (?='(?:[sm]|re|ve))"), b""),
)


class TokenType(IntEnum):
    """GGUF token types (tokenizer.ggml.token_type)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


_SPECIAL_TYPES = (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)  # split out of text first
_HIDDEN_TYPES = (TokenType.CONTROL, TokenType.UNKNOWN)  # rendered only when asked


def _key(metadata: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """The value of tokenizer.ggml.<name>, or default."""
    return metadata.get(f"tokenizer.ggml.{name}", default)


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary, with llama.cpp's special-token rules.

    Subclasses set the per-model defaults below and implement `_encode_fragments` and `_normal_piece`.
    """

    default_ids: dict[str, int | None] = {}  # special ids before the metadata speaks, by attribute
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None  # end of turn: <|im_end|>, <end_of_turn>, ...
    eom_id: int | None
    unk_id: int | None
    pad_id: int | None
    fim_pad_id: int | None
    fim_rep_id: int | None
    fim_sep_id: int | None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    clean_spaces: bool = False

    def __init__(self, metadata: Mapping[str, Any]) -> None:
        """Read the vocabulary, special ids and flags from GGUF metadata."""
        self.tokens: list[str] = [t or f"[EMPTY_{i}]" for i, t in enumerate(_key(metadata, "tokens", []))]
        if not self.tokens:
            raise PyggmlError("GGUF metadata has no tokenizer.ggml.tokens")
        types = _key(metadata, "token_type")
        n = len(self.tokens)
        self._types = np.full(n, TokenType.NORMAL, np.int32) if types is None else np.array(types[:n], np.int32)
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        if len(self.token_to_id) != n:
            twice = next(t for i, t in enumerate(self.tokens) if self.token_to_id[t] != i)
            raise PyggmlError(f"duplicate token {twice!r} in tokenizer.ggml.tokens")
        self._read_special_ids(metadata)
        self.add_bos = bool(_key(metadata, "add_bos_token", self.add_bos))
        self.add_eos = bool(_key(metadata, "add_eos_token", self.add_eos))
        for flag, special in (("add_bos", self.bos_id), ("add_eos", self.eos_id)):
            if getattr(self, flag) and special is None:
                raise PyggmlError(f"tokenizer.ggml.{flag}_token is true but the vocabulary has no such token")
        self.eog_ids = self._collect_eog()
        self._specials = self._special_cache()
        self._hidden = frozenset(np.flatnonzero(np.isin(self._types, _HIDDEN_TYPES)).tolist())
        self._pieces: dict[int, bytes] = {}

    # ---- vocabulary facts

    @property
    def n_vocab(self) -> int:
        """Number of tokens in the vocabulary."""
        return len(self.tokens)

    def token_type(self, token_id: int) -> TokenType:
        """The token's type, after llama.cpp's overrides (end-of-generation tokens are CONTROL)."""
        return TokenType(int(self._types[token_id]))

    @functools.cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids of tokens that stand for no text of the vocabulary's own: control and unknown ones, and user-defined
        ones written as <...> (llama.cpp's rule for grammars)."""
        marked = {i for i, t in enumerate(self.tokens) if self._types[i] == TokenType.USER_DEFINED
                  and t.startswith("<") and t.endswith(">")}
        return self._hidden | marked

    def is_eog(self, token_id: int) -> bool:
        """Whether generating this token ends generation."""
        return token_id in self.eog_ids

    def _read_special_ids(self, metadata: Mapping[str, Any]) -> None:
        """Special ids: per-model defaults, overridden by metadata keys, then found by token text."""
        valid = lambda i: i is not None and 0 <= int(i) < self.n_vocab  # noqa: E731
        for key, attr in _SPECIAL_KEYS.items():
            value, default = _key(metadata, key), self.default_ids.get(attr)
            setattr(self, attr, int(value) if valid(value) else default if valid(default) else None)
        for attr, texts in _SPECIAL_TEXTS.items():
            if getattr(self, attr) is None:
                found = [self.token_to_id[t] for t in texts if t in self.token_to_id]
                setattr(self, attr, found[0] if found else None)
                if found:
                    self._make_control(found[0])

    def _make_control(self, token_id: int) -> None:
        """Mark a control-looking token CONTROL, as llama.cpp does when the file says otherwise."""
        if self._types[token_id] != TokenType.CONTROL:
            self._types[token_id] = TokenType.CONTROL

    def _collect_eog(self) -> frozenset[int]:
        """End-of-generation ids: FIM pad/repo/sep, every EOG-looking text, EOS, EOT and EOM."""
        texts = {t for t in _EOG_TEXTS if t in self.token_to_id}
        for required, dropped in _EOG_EXCLUSIONS:
            if required <= texts and dropped in texts:
                texts.discard(dropped)
        ids = {self.token_to_id[t] for t in texts}
        for i in ids:
            self._make_control(i)
        ids |= {self.fim_pad_id, self.fim_rep_id, self.fim_sep_id, self.eos_id, self.eot_id, self.eom_id}
        return frozenset(i for i in ids if i is not None)

    def _special_cache(self) -> list[tuple[str, int, bool]]:
        """(text, id, is_user_defined) of CONTROL/USER_DEFINED/UNKNOWN tokens, longest text first."""
        ids = np.flatnonzero(np.isin(self._types, _SPECIAL_TYPES)).tolist()
        ids.sort(key=lambda i: -len(self.tokens[i].encode()))
        return [(self.tokens[i], i, bool(self._types[i] == TokenType.USER_DEFINED)) for i in ids]

    # ---- encoding

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of text; add_special adds BOS/EOS as the model says, parse_special reads control tokens."""
        return self.encode_segments([(text, parse_special)], add_special)

    def encode_segments(self, segments: Sequence[tuple[str, bool]], add_special: bool = True) -> list[int]:
        """Token ids of the segments' texts joined, each (text, parse_special): control tokens are read only in
        the segments that allow it (a chat template's own markers, not the messages' content)."""
        fragments: list[str | int] = []
        for text, parse_special in segments:
            for fragment in self._partition(text, parse_special):
                if isinstance(fragment, str) and fragments and isinstance(fragments[-1], str):
                    fragments[-1] += fragment  # text either side of a boundary is tokenized as one text
                else:
                    fragments.append(fragment)
        ids = [self.bos_id] if add_special and self.add_bos else []
        ids += self._encode_fragments(fragments)
        if add_special and self.add_eos:
            ids.append(self.eos_id)
        return ids

    @functools.cached_property
    def longest_token(self) -> int:
        """UTF-8 bytes of the longest token text: a text of n bytes has at least n / longest_token tokens."""
        return max(len(t.encode()) for t in self.tokens)

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split text on special tokens' literal text, longest first (llama.cpp's tokenizer_st_partition).

        User-defined tokens are always split out; control and unknown tokens only with parse_special.
        """
        fragments: list[str | int] = [text] if text else []
        for special, token_id, user_defined in self._specials:
            if (parse_special or user_defined) and special in text:
                fragments = [part for f in fragments for part in _split_on(f, special, token_id)]
        return fragments

    def _encode_fragments(self, fragments: Sequence[str | int]) -> list[int]:
        """Token ids for partitioned text: raw-text fragments (str) and special tokens (int)."""
        raise NotImplementedError

    # ---- decoding

    def token_to_piece(self, token_id: int, special: bool = False) -> bytes:
        """The bytes a token stands for; control and unknown tokens give their text only when special."""
        if not special and token_id in self._hidden:
            return b""
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self._piece(token_id, TokenType(int(self._types[token_id])))
        return piece

    def _piece(self, token_id: int, token_type: TokenType) -> bytes:
        """The bytes of a token, by its type (control tokens: their text)."""
        text = self.tokens[token_id]
        if token_type in _SPECIAL_TYPES:
            return text.encode()
        if token_type == TokenType.NORMAL:
            return self._normal_piece(text)
        if token_type == TokenType.BYTE:
            return bytes((int(text[3:5], 16),))
        return b""

    def _normal_piece(self, text: str) -> bytes:
        """The bytes a NORMAL token's text stands for."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ids as llama.cpp detokenizes; skip_special drops BOS/EOS and hides control tokens."""
        ids = [int(i) for i in ids]
        strip_space = self.add_space_prefix
        if skip_special and self.add_bos and ids and ids[0] == self.bos_id:
            strip_space = False
            ids = ids[1:]
        if skip_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        pieces = [self.token_to_piece(i, special=not skip_special) for i in ids]
        if strip_space and pieces and pieces[0].startswith(b" "):
            pieces[0] = pieces[0][1:]
        data = b"".join(pieces)
        if self.clean_spaces:
            for pattern, replacement in _CLEAN_SPACES:
                data = pattern.sub(replacement, data)
        return data.decode("utf-8", errors="replace")


def _split_on(fragment: str | int, special: str, token_id: int) -> list[str | int]:
    """A raw-text fragment split around every occurrence of special; tokens pass through."""
    if isinstance(fragment, int) or special not in fragment:
        return [fragment]
    parts: list[str | int] = []
    for i, part in enumerate(fragment.split(special)):
        if i:
            parts.append(token_id)
        if part:
            parts.append(part)
    return parts


class StreamDecoder:
    """Turns generated ids into text as they come, emitting only whole UTF-8 characters (an incomplete one left
    at the end is never shown, as llama-server holds it back: no U+FFFD where generation was cut)."""

    def __init__(self, tokenizer: Tokenizer, special: bool = False) -> None:
        """A decoder for tokenizer; special renders control tokens as their text."""
        self._tokenizer = tokenizer
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: int | Iterable[int]) -> str:
        """The text completed by these ids (possibly empty while a character is still partial)."""
        ids = ids if isinstance(ids, Iterable) else (ids,)  # one id: int or NumPy integer
        return "".join(self._utf8.decode(self._tokenizer.token_to_piece(i, self._special)) for i in ids)


def load_tokenizer(metadata: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer that tokenizer.ggml.model names, built from GGUF metadata."""
    model = _key(metadata, "model")
    if model not in _MODELS:
        raise PyggmlError(f"unsupported tokenizer model {model!r} (tokenizer.ggml.model); "
                          f"supported: {', '.join(sorted(_MODELS))}")
    module, cls = _MODELS[model]
    return getattr(importlib.import_module(module), cls)(metadata)
