"""Tokenizers against llama.cpp: the reference fixtures, ports of llama.cpp's algorithms, round trips."""
from __future__ import annotations

import heapq
import json
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import regex

from pyggml.cli import main
from conftest import load_reference
from pyggml.graph.errors import PyggmlError
from pyggml.model.gguf_file import GGUFFile
from pyggml.model.tokenizers.pretokenizers import PRETOKENIZERS, pretokenizer
from pyggml.model.tokenizers.tokenizer import StreamDecoder, Tokenizer, TokenType, load_tokenizer
from pyggml.model.tokenizers.bpe import BYTE_TO_CHAR, merge

REFERENCES = {"smollm2": "smollm2-135m-q4_1.reference.json", "gemma3": "gemma3-270m-q4_k_m.reference.json"}


@pytest.fixture(scope="session")
def smollm2_metadata(smollm2_path: Path) -> dict:
    """SmolLM2's GGUF metadata (gpt2 BPE, pre 'smollm')."""
    return dict(GGUFFile(smollm2_path).metadata)


@pytest.fixture(scope="session")
def gemma3_metadata(gemma3_path: Path) -> dict:
    """Gemma 3's GGUF metadata (SPM, 262144 tokens)."""
    return dict(GGUFFile(gemma3_path).metadata)


@pytest.fixture(scope="session")
def tokenizers(smollm2_metadata: dict, gemma3_metadata: dict) -> dict[str, Tokenizer]:
    """Both reference tokenizers by model key."""
    return {"smollm2": load_tokenizer(smollm2_metadata), "gemma3": load_tokenizer(gemma3_metadata)}


def reference(model: str) -> dict:
    """llama.cpp's output for one model."""
    return load_reference(REFERENCES[model])


# ---- llama.cpp's own results

@pytest.mark.parametrize("model", REFERENCES)
def test_fixture_texts_tokenize_as_llama_cpp(model: str, tokenizers: dict[str, Tokenizer]) -> None:
    tok, ref = tokenizers[model], reference(model)
    assert tok.add_bos == ref["add_bos"]
    for case in ref["tokenize"]:
        assert tok.encode(case["text"], add_special=False) == case["ids"], case["text"]
        assert tok.encode(case["text"]) == [tok.bos_id] * ref["add_bos"] + case["ids"], case["text"]
        assert tok.decode(case["ids"]) == case["text"]


@pytest.mark.parametrize("model", REFERENCES)
def test_fixture_prompts_tokenize_and_decode_as_llama_cpp(model: str, tokenizers: dict[str, Tokenizer]) -> None:
    tok, ref = tokenizers[model], reference(model)
    bos = tok.tokens[tok.bos_id] if ref["add_bos"] else ""
    for case in ref["generate"]:
        assert tok.encode(case["prompt"], parse_special=True) == case["prompt_ids"], case["prompt"]
        assert tok.decode(case["prompt_ids"]) == bos + case["prompt"]
        assert tok.decode(case["greedy_ids"]) == case["greedy_text"]


def test_chat_markup_is_text_unless_parse_special(tokenizers: dict[str, Tokenizer]) -> None:
    smollm2, gemma3 = tokenizers["smollm2"], tokenizers["gemma3"]
    assert smollm2.encode("<|im_end|>", parse_special=True) == [2]
    assert 2 not in smollm2.encode("<|im_end|>")
    assert gemma3.encode("<end_of_turn>", add_special=False, parse_special=True) == [106]
    assert 106 not in gemma3.encode("<end_of_turn>", add_special=False)
    assert gemma3.encode("a\n\nb", add_special=False) == [236746, 108, 236763]  # user-defined "\n\n" always split


def test_special_ids_and_end_of_generation(tokenizers: dict[str, Tokenizer]) -> None:
    smollm2, gemma3 = tokenizers["smollm2"], tokenizers["gemma3"]
    assert (smollm2.n_vocab, smollm2.bos_id, smollm2.eos_id, smollm2.eot_id) == (49152, 1, 2, 2)
    assert smollm2.eog_ids == {0, 2, 4}  # <|endoftext|>, <|im_end|>, <reponame> (FIM repo)
    assert (gemma3.n_vocab, gemma3.bos_id, gemma3.eos_id, gemma3.eot_id) == (262144, 2, 1, 106)
    assert {1, 106} <= gemma3.eog_ids and gemma3.is_eog(106) and not gemma3.is_eog(2)
    assert not smollm2.add_bos and gemma3.add_bos and not gemma3.add_space_prefix


def test_token_to_piece_follows_llama_cpp(tokenizers: dict[str, Tokenizer]) -> None:
    smollm2, gemma3 = tokenizers["smollm2"], tokenizers["gemma3"]
    assert gemma3.token_type(gemma3.token_to_id["<0x41>"]) == TokenType.BYTE
    assert gemma3.token_to_piece(gemma3.token_to_id["<0x41>"]) == b"A"
    assert gemma3.token_to_piece(gemma3.token_to_id["\u2581Hello"]) == b" Hello"
    assert gemma3.token_to_piece(2) == b"" and gemma3.token_to_piece(2, special=True) == b"<bos>"
    assert gemma3.token_to_piece(gemma3.token_to_id["\n"]) == b"\n"  # user-defined: always its text
    assert smollm2.token_to_piece(smollm2.token_to_id["\u0120the"]) == b" the"
    assert smollm2.token_to_piece(2) == b"" and smollm2.token_to_piece(2, special=True) == b"<|im_end|>"
    assert gemma3.decode([2, 9259, 1, 106], skip_special=True) == "Hello"


# ---- streaming

@pytest.mark.parametrize("model", REFERENCES)
@pytest.mark.parametrize("text", ["\U0001fae8 ok", "\U00013000\u0a6e\U0010fffd", "na\u00efve \U0001f916!"])
def test_stream_decoder_emits_only_whole_characters(model: str, text: str,
                                                     tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers[model]
    ids = tok.encode(text, add_special=False)
    decoder = StreamDecoder(tok)
    chunks = [decoder.feed(i) for i in ids]
    assert "".join(chunks) == text
    assert "\ufffd" not in "".join(chunks)
    if model == "gemma3" and text.startswith("\U0001fae8"):  # four byte tokens: nothing until the last
        assert [tok.token_type(i) for i in ids[:4]] == [TokenType.BYTE] * 4
        assert chunks[:4] == ["", "", "", "\U0001fae8"]


def test_stream_decoder_holds_back_a_cut_character(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["gemma3"]
    decoder = StreamDecoder(tok)
    ids = tok.encode("\U0001fae8", add_special=False)
    assert decoder.feed(np.int64(ids[0])) == "" and decoder.feed(ids[1:2]) == ""
    assert decoder.feed(ids[2:]) == "\U0001fae8"


# ---- SPM: sentencepiece against a port of llama.cpp's llm_tokenizer_spm

def spm_reference(tok: Tokenizer, scores: np.ndarray, text: str) -> list[int]:
    """llama.cpp's SPM on one escaped fragment: merge the best-scoring adjacent pair that is a token."""
    symbols, ids = list(text), tok.token_to_id
    following, preceding = [*range(1, len(symbols)), -1], [*range(-1, len(symbols) - 1)]
    queue: list[tuple[float, int, int, int]] = []

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0 and symbols[left] + symbols[right] in ids:
            pair = symbols[left] + symbols[right]
            heapq.heappush(queue, (-scores[ids[pair]], left, right, len(pair)))

    for i in range(1, len(symbols)):
        push(i - 1, i)
    while queue:
        _, left, right, size = heapq.heappop(queue)
        if not symbols[left] or not symbols[right] or len(symbols[left]) + len(symbols[right]) != size:
            continue
        symbols[left], symbols[right] = symbols[left] + symbols[right], ""
        following[left] = following[right]
        if following[right] >= 0:
            preceding[following[right]] = left
        push(preceding[left], left)
        push(left, following[left])
    return [i for s in symbols if s for i in
            ([ids[s]] if s in ids else [ids[f"<0x{b:02X}>"] for b in s.encode()])]


def spm_encode_reference(tok: Tokenizer, scores: np.ndarray, text: str, parse_special: bool) -> list[int]:
    """llama.cpp's SPM tokenize: special tokens split out, a space prefix after them, then spm_reference."""
    out, after_special = [], True
    for fragment in tok._partition(text, parse_special):
        if isinstance(fragment, int):
            out.append(fragment)
        else:
            fragment = " " + fragment if tok.add_space_prefix and after_special else fragment
            out += spm_reference(tok, scores, fragment.replace(" ", "\u2581"))
        after_special = isinstance(fragment, int)
    return out


SPM_POOL = (list("abcdefghijklmnopqrstuvwxyz ABCXYZ  \n\t.,;:'\"!?-_()[]{}<>/\\0123456789") +
            list("\u00e9\u00e8\u00fc\u00df\u00f8\u00f1\u00e7\u00c0\u4e2d\u6587\u65e5\u672c\ud55c\uad6d"
                 "\u041f\u0440\u0438\u03b1\u03b2\U0001f600\U0001f916\u2211\u221a\u200b\u00a0\u3000\U0001fae8") +
            ["<bos>", "<eos>", "<unk>", "<0x41>", "<unused5>", "</s>", "<start_of_turn>", "[multimodal]",
             "\u2581", "\u2581\u2581", "  ", "<mask>", "<pad>", "the", " the", "ing"])


@pytest.mark.parametrize("space_prefix", [False, True])
def test_spm_matches_llama_cpp_algorithm(space_prefix: bool, gemma3_metadata: dict) -> None:
    tok = load_tokenizer({**gemma3_metadata, "tokenizer.ggml.add_space_prefix": space_prefix})
    scores = gemma3_metadata["tokenizer.ggml.scores"]
    rng = random.Random(7)
    for _ in range(300):
        text = "".join(rng.choice(SPM_POOL) for _ in range(rng.randint(0, 24)))
        for parse_special in (False, True):
            assert (tok.encode(text, add_special=False, parse_special=parse_special)
                    == spm_encode_reference(tok, scores, text, parse_special)), text


def small_spm(**metadata: object) -> Tokenizer:
    """An SPM tokenizer over a made-up vocabulary: specials, 256 byte tokens, a few pieces, x up to 128 long."""
    pieces = {"\u2581": -1.0, "a": -2.0, "b": -2.0, "ab": -1.5, "\u2581ab": -0.5, **{"x" * 2**k: k for k in range(8)}}
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, *[TokenType.BYTE] * 256,
             *[TokenType.NORMAL] * len(pieces)]
    return load_tokenizer({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
                           "tokenizer.ggml.token_type": np.array(types, np.int32),
                           "tokenizer.ggml.scores": np.array([0.0] * 259 + [*pieces.values()], np.float32),
                           **metadata})


def test_spm_from_a_small_vocabulary() -> None:
    tok = small_spm()
    ab, long_x = tok.token_to_id["\u2581ab"], tok.token_to_id["x" * 128]
    assert tok.bos_id == 1 and tok.eos_id == 2 and tok.add_bos and tok.add_space_prefix  # llama.cpp's SPM defaults
    assert tok.encode("ab ab") == [1, ab, ab]
    assert tok.encode("x" * 128, add_special=False) == [tok.token_to_id["\u2581"], long_x]  # multi-byte varints
    assert tok.encode("\u00e9", add_special=False) == [tok.token_to_id["\u2581"], 3 + 0xC3, 3 + 0xA9]
    assert tok.decode(tok.encode("ab \u00e9b"), skip_special=True) == " ab \u00e9b"
    assert tok.decode(tok.encode("ab \u00e9b")[1:]) == "ab \u00e9b"
    assert small_spm(**{"tokenizer.ggml.add_eos_token": True}).encode("a") == [1, tok.token_to_id["\u2581"], 260, 2]


def test_spm_space_prefix_follows_special_tokens(gemma3_metadata: dict) -> None:
    tok = load_tokenizer({**gemma3_metadata, "tokenizer.ggml.add_space_prefix": True})
    plain = load_tokenizer(gemma3_metadata)
    ids = tok.encode("Hello<end_of_turn>world", parse_special=True)
    assert ids == [2, 26352, 106, plain.encode(" world", add_special=False)[0]]
    assert tok.decode(ids[1:]) == "Hello<end_of_turn> world"  # the prefix space of the first token is dropped
    assert tok.decode(ids, skip_special=True) == " Hello world"  # ... but not after a skipped BOS, as llama.cpp


# ---- pre-tokenizers: regexes against ports of llama.cpp's hand-written splitters

_WHITESPACE = {*range(9, 14), *range(0x2000, 0x200B), 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000}


def _classes(text: str, pos: int) -> tuple[bool, bool, bool, bool]:
    """(whitespace, letter, number, inside) of text[pos], as llama.cpp's codepoint flags."""
    if not 0 <= pos < len(text):
        return False, False, False, False
    category = unicodedata.category(text[pos])
    return ord(text[pos]) in _WHITESPACE, category[0] == "L", category[0] == "N", True


def gpt2_reference(text: str) -> list[str]:
    """Port of llama.cpp's unicode_regex_split_custom_gpt2."""
    words, pos, n = [], 0, len(text)
    while pos < n:
        start, c = pos, text[pos]
        ws, letter, number, inside = _classes(text, pos + 1 if c == " " else pos)
        if c == "'" and text[pos + 1:pos + 2] in ("s", "t", "m", "d"):
            pos += 2
        elif c == "'" and text[pos + 1:pos + 3] in ("re", "ve", "ll"):
            pos += 3
        elif letter or number or (inside and not ws):
            pos += c == " "
            while _classes(text, pos)[1:] == (letter, number, inside) and not _classes(text, pos)[0]:
                pos += 1
        else:
            run = 0
            while _classes(text, pos + run)[0]:
                run += 1
            pos += run - 1 if run > 1 and pos + run < n else max(run, 1)
        words.append(text[start:pos])
    return words


def llama3_reference(text: str) -> list[str]:
    """Port of llama.cpp's unicode_regex_split_custom_llama3 (contractions case-insensitive in ASCII)."""
    words, pos, n = [], 0, len(text)
    while pos < n:
        start, c = pos, text[pos]
        ws, letter, number, _ = _classes(text, pos)
        ws2, letter2, number2, inside2 = _classes(text, pos + 1 if c == " " else pos)
        if c == "'" and text[pos + 1:pos + 2].lower() in ("s", "t", "m", "d") and text[pos + 1:pos + 2].isascii():
            pos += 2
        elif c == "'" and text[pos + 1:pos + 3].lower() in ("re", "ve", "ll") and text[pos + 1:pos + 3].isascii():
            pos += 3
        elif c not in "\r\n" and not number and (letter or _classes(text, pos + 1)[1]):
            pos += 1
            while _classes(text, pos)[1]:
                pos += 1
        elif number:
            pos += 1
            while _classes(text, pos)[2] and pos - start < 3:
                pos += 1
        elif not (ws2 or letter2 or number2):
            pos += c == " "
            while _classes(text, pos)[3] and not any(_classes(text, pos)[:3]):
                pos += 1
            while text[pos:pos + 1] in ("\r", "\n") and pos < n:
                pos += 1
        else:
            run = 0
            while _classes(text, pos + run)[0]:
                run += 1
            newline = max((pos + i + 1 for i in range(run) if text[pos + i] in "\r\n"), default=0)
            pos = newline or pos + (run - 1 if run > 1 and pos + run < n else max(run, 1))
        words.append(text[start:pos])
    return words


def _agreeing_codepoints() -> list[str]:
    """Codepoints below U+3000 whose letter/number class is the same in unicodedata and `regex`."""
    letter, number = regex.compile(r"\p{L}"), regex.compile(r"\p{N}")
    return [c for c in map(chr, range(0x3000)) if unicodedata.category(c) not in ("Cs", "Cn")
            and bool(letter.match(c)) == unicodedata.category(c).startswith("L")
            and bool(number.match(c)) == unicodedata.category(c).startswith("N")]


PRE_POOL = list("abcXYZ  \n\r\t'sdmtlrev.,!?-0123456789\u00b2\u00bd\u0663\u00a0\u3000\u2028\u00e9\u4e2d\U0001f600")
PRE_POOL += ["'s", "'re", "'ll", "'ve", "'S", "'RE", "   ", "\n\n"]


def test_pretokenizers_match_llama_cpp_splitters() -> None:
    rng, others = random.Random(3), _agreeing_codepoints()
    smollm, gpt2, llama3 = PRETOKENIZERS["smollm"], PRETOKENIZERS["gpt-2"], PRETOKENIZERS["llama3"]
    digit = regex.compile(r"\p{N}")
    for _ in range(3000):
        text = "".join(rng.choice(PRE_POOL) if rng.random() < 0.8 else rng.choice(others)
                       for _ in range(rng.randint(0, 24)))
        assert gpt2.split(text) == gpt2_reference(text), text
        assert llama3.split(text) == llama3_reference(text), text
        pieces = regex.split(r"(\p{N})", text)  # smollm: digits first, then GPT-2 on each piece
        assert smollm.split(text) == [w for p in pieces if p for w in gpt2_reference(p)], text
        assert "".join(smollm.split(text)) == text and all(digit.fullmatch(w) or not digit.search(w)
                                                          for w in smollm.split(text))


@pytest.mark.parametrize("name, text, words", [
    ("smollm", "don't 42x  y\n", ["don", "'t", " ", "4", "2", "x", " ", " y", "\n"]),
    ("smollm", "I'm  \t\u00e9t\u00e9!?", ["I", "'m", "  ", "\t", "\u00e9t\u00e9", "!?"]),
    ("gpt-2", "abc 12345 !!", ["abc", " 12345", " !!"]),
    ("llama3", "Hello  world\n\n 123456", ["Hello", " ", " world", "\n\n", " ", "123", "456"]),
    ("llama3", "WE'RE ,x\r\n", ["WE", "'RE", " ,", "x", "\r\n"]),
    ("qwen2", "a1234 b", ["a", "1", "2", "3", "4", " b"]),
    ("default", "a+b=12345", ["a", "+", "b", "=", "123", "45"]),
])
def test_pretokenizer_examples(name: str, text: str, words: list[str]) -> None:
    assert PRETOKENIZERS[name].split(text) == words


# ---- BPE

def naive_merge(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE the slow way: merge the lowest-ranked adjacent pair, leftmost first, until none is left."""
    symbols = list(word)
    while True:
        candidates = [(ranks[p], i) for i, p in enumerate(zip(symbols, symbols[1:])) if p in ranks]
        if not candidates:
            return symbols
        _, i = min(candidates)
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]


def test_bpe_merge_matches_naive_merge(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["smollm2"]
    rng = random.Random(5)
    alphabet = "etaoinshrdlu \u0120\u010a" + "".join(c for c in "abcdefghijklmnopqrstuvwxyz")
    for _ in range(2000):
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        assert merge(word, tok.ranks) == naive_merge(word, tok.ranks), word
    assert merge("\u0120" * 400, tok.ranks) == naive_merge("\u0120" * 400, tok.ranks)
    assert "".join(merge("\u0120" * 20000, tok.ranks)) == "\u0120" * 20000  # a heap, not rescans: fast


def random_text(rng: random.Random, length: int) -> str:
    """Random text mixing ASCII, whitespace, marks, and codepoints from all planes."""
    chars = []
    for _ in range(length):
        kind = rng.random()
        if kind < 0.5:
            chars.append(rng.choice("abcXYZ019 ,.'!?\n\t  -_"))
        elif kind < 0.6:
            chars.append(rng.choice("\u0301\u0308\u00a0\u3000\u2028\u200d\ufe0f"))
        else:
            cp = rng.randrange(0x20, 0x110000)
            chars.append(chr(cp) if not 0xD800 <= cp < 0xE000 else "x")
    return "".join(chars)


@pytest.mark.parametrize("model", REFERENCES)
def test_random_unicode_round_trips(model: str, tokenizers: dict[str, Tokenizer]) -> None:
    tok, rng = tokenizers[model], random.Random(11)
    representable = {c for c in BYTE_TO_CHAR if c in tok.token_to_id} if model == "smollm2" else set(BYTE_TO_CHAR)
    for _ in range(400):
        text = "".join(c for c in random_text(rng, rng.randint(0, 40))
                       if {BYTE_TO_CHAR[b] for b in c.encode()} <= representable)
        ids = tok.encode(text, add_special=False)
        assert all(0 <= i < tok.n_vocab for i in ids)
        assert tok.decode(ids) == text, text


def test_bytes_missing_from_the_vocabulary_are_dropped_as_llama_cpp(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["smollm2"]  # has no token for the byte 0xF1, lead byte of U+50A51
    assert BYTE_TO_CHAR[0xF1] not in tok.token_to_id
    assert tok.encode("\U00050a51") == [tok.token_to_id[BYTE_TO_CHAR[b]] for b in "\U00050a51".encode()[1:]]


def test_clean_spaces_as_llama_cpp(smollm2_metadata: dict) -> None:
    tok = load_tokenizer({**smollm2_metadata, "tokenizer.ggml.pre": "gpt-2"})
    assert tok.clean_spaces and not load_tokenizer(smollm2_metadata).clean_spaces
    text = "Hello , world ! it 's a ' quote ' and don 't"
    assert tok.decode(tok.encode(text)) == "Hello, world! it's a'quote'and don 't"


def test_special_tokens_split_longest_first(smollm2_metadata: dict) -> None:
    tok = load_tokenizer(smollm2_metadata)
    text = "x<|im_start|><|im_end|>y<|endoftext|>"
    assert tok.encode(text, parse_special=True) == tok.encode("x") + [1, 2] + tok.encode("y") + [0]


# ---- metadata handling and errors

def test_bos_and_eos_follow_metadata(smollm2_metadata: dict) -> None:
    tok = load_tokenizer({**smollm2_metadata, "tokenizer.ggml.add_bos_token": True,
                          "tokenizer.ggml.add_eos_token": True})
    assert tok.encode("Hi") == [1, *tok.encode("Hi", add_special=False), 2]
    assert tok.decode(tok.encode("Hi"), skip_special=True) == "Hi"
    llama3 = load_tokenizer({k: v for k, v in smollm2_metadata.items() if k != "tokenizer.ggml.add_bos_token"}
                            | {"tokenizer.ggml.pre": "llama-bpe"})
    assert llama3.add_bos and llama3.pre.ignore_merges


def test_bad_vocabularies_are_named() -> None:
    with pytest.raises(PyggmlError, match="duplicate token 'ab'"):
        small_spm(**{"tokenizer.ggml.tokens": ["<unk>", "ab", "b", "ab"]})
    with pytest.raises(PyggmlError, match="no tokenizer.ggml.tokens"):
        load_tokenizer({"tokenizer.ggml.model": "llama"})


def test_unsupported_tokenizers_are_named(smollm2_metadata: dict) -> None:
    with pytest.raises(PyggmlError, match="'bert'"):
        load_tokenizer({**smollm2_metadata, "tokenizer.ggml.model": "bert"})
    with pytest.raises(PyggmlError, match="'nonesuch'"):
        load_tokenizer({**smollm2_metadata, "tokenizer.ggml.pre": "nonesuch"})
    assert pretokenizer(None) is PRETOKENIZERS["default"]


# ---- CLI

def test_cli_tokenize_json(smollm2_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokenize", str(smollm2_path), "<|im_start|>Hello world", "--json", "--parse-special"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ids": [1, 19556, 905],
                                                   "pieces": ["<|im_start|>", "Hello", " world"]}


def test_cli_tokenize_table(gemma3_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokenize", str(gemma3_path), "Hello world"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table == ["  id  piece", "   2  '<bos>'", "9259  'Hello'", "1902  ' world'", "3 tokens"]
    assert main(["tokenize", str(gemma3_path), "\U0001fae8", "--no-bos"]) == 0
    assert capsys.readouterr().out.splitlines()[1:3] == ["478  b'\\xf0'", "397  b'\\x9f'"]  # partial characters
    assert main(["tokenize", str(gemma3_path), "Hello", "--no-bos", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"] == [9259]
