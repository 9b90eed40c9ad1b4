"""Tokenizers built from a GGUF vocabulary: SentencePiece and byte-level BPE with their pre-tokenizers."""
