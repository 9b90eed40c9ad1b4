"""Pre-tokenizers for byte-level BPE: tokenizer.ggml.pre name -> llama.cpp's regex list and flags.

As in llama.cpp's unicode_regex_split, the patterns apply in order: each one splits every
piece the previous ones left, and text between matches stays a piece of its own. The
`regex` package gives the Unicode classes; its \\s is Unicode White_Space, as llama.cpp's.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import regex

from pyggml.graph.errors import PyggmlError

_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+"
           r"((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _CONTRACTIONS + r"?|"
          r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _CONTRACTIONS + r"?|"
          r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    """A pre-tokenizer: regexes applied in turn, and the vocabulary flags llama.cpp sets with it."""

    patterns: tuple[str, ...]
    clean_spaces: bool = True  # detokenizer removes spaces before punctuation and some contractions
    ignore_merges: bool = False  # a word that is a whole token is not merged
    add_bos: bool = False  # default for tokenizer.ggml.add_bos_token

    @cached_property
    def _compiled(self) -> tuple[regex.Pattern[str], ...]:
        """The patterns, compiled once."""
        return tuple(regex.compile(p) for p in self.patterns)

    def split(self, text: str) -> list[str]:
        """The words of text, in order; joined they give text back."""
        pieces = [text]
        for pattern in self._compiled:
            pieces = [word for piece in pieces for word in _split_one(pattern, piece)]
        return pieces


def _split_one(pattern: regex.Pattern[str], text: str) -> list[str]:
    """Matches of pattern in text, with the unmatched text between them kept as words."""
    words, end = [], 0
    for match in pattern.finditer(text):
        start, stop = match.span()
        words += [w for w in (text[end:start], text[start:stop]) if w]
        end = stop
    return words + [text[end:]] if end < len(text) else words


_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"))
_STARCODER = PreTokenizer((r"\p{N}", GPT2))
_LLAMA3 = PreTokenizer((LLAMA3,), ignore_merges=True, add_bos=True)

# (names llama.cpp accepts for tokenizer.ggml.pre, pre-tokenizer), as in llama-vocab.cpp
_TABLE: tuple[tuple[tuple[str, ...], PreTokenizer], ...] = (
    (("default",), _DEFAULT),
    (("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
      "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais", "exaone4"),
     PreTokenizer((GPT2,))),
    (("trillion", "granite-docling"), PreTokenizer((GPT2,), clean_spaces=False)),
    (("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"), _STARCODER),
    (("smollm", "command-r"), PreTokenizer(_STARCODER.patterns, clean_spaces=False)),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
     _LLAMA3),
    (("dbrx", "smaug-bpe"), PreTokenizer((LLAMA3,))),
    (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2"), PreTokenizer((QWEN2,), clean_spaces=False)),
    (("stablelm2", "megrez"), PreTokenizer((QWEN2,))),
    (("falcon",), PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"))),
    (("bloom", "gpt3-finnish"), PreTokenizer((_BLOOM,))),
    (("poro-chat",), PreTokenizer((_BLOOM,), clean_spaces=False)),
    (("viking",), PreTokenizer((_BLOOM, r"\p{N}"), clean_spaces=False)),
    (("tekken",), PreTokenizer((_TEKKEN,), clean_spaces=False, ignore_merges=True, add_bos=True)),
    (("gpt-4o", "llama4", "kanana2", "talkie"), PreTokenizer((_GPT4O,), clean_spaces=False)),
)
PRETOKENIZERS: dict[str, PreTokenizer] = {name: pre for names, pre in _TABLE for name in names}


def pretokenizer(name: str | None) -> PreTokenizer:
    """The pre-tokenizer tokenizer.ggml.pre names ('default' when absent, as llama.cpp)."""
    if name is None:
        return _DEFAULT
    if name not in PRETOKENIZERS:
        raise PyggmlError(f"unsupported pre-tokenizer {name!r} (tokenizer.ggml.pre); "
                          f"supported: {', '.join(sorted(PRETOKENIZERS))}")
    return PRETOKENIZERS[name]
