"""`pyggml tokenize MODEL TEXT`: the token ids and pieces of a text under a model's tokenizer."""
from __future__ import annotations

import argparse
import json

from pyggml.model.gguf_file import GGUFFile
from pyggml.model.tooling.pull import resolve_model
from pyggml.model.tokenizers.tokenizer import load_tokenizer

HELP = "print the token ids and pieces of TEXT under MODEL's tokenizer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, TEXT and the output and tokenization switches."""
    parser.add_argument("model", help="GGUF file or known model name (see `pyggml pull`)")
    parser.add_argument("text", help="text to tokenize")
    parser.add_argument("--json", action="store_true", help="print {ids, pieces} as JSON")
    parser.add_argument("--no-bos", action="store_true", help="add no BOS/EOS even where the model asks for them")
    parser.add_argument("--parse-special", action="store_true",
                        help="read control tokens such as <|im_start|> in TEXT as tokens")


def _shown(piece: bytes) -> str:
    """A piece as a Python literal: str when it is whole UTF-8, bytes when it is part of a character."""
    try:
        return repr(piece.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(piece)


def run(args: argparse.Namespace) -> int:
    """Tokenize and print a table (id, piece) or JSON."""
    tokenizer = load_tokenizer(GGUFFile(resolve_model(args.model)).metadata)
    ids = tokenizer.encode(args.text, add_special=not args.no_bos, parse_special=args.parse_special)
    pieces = [tokenizer.token_to_piece(i, special=True) for i in ids]
    if args.json:
        texts = [p.decode("utf-8", errors="backslashreplace") for p in pieces]
        print(json.dumps({"ids": ids, "pieces": texts}, ensure_ascii=False))
        return 0
    width = max([len(str(i)) for i in ids] + [2])
    print(f"{'id':>{width}}  piece")
    for token_id, piece in zip(ids, pieces):
        print(f"{token_id:>{width}}  {_shown(piece)}")
    print(f"{len(ids)} tokens")
    return 0
