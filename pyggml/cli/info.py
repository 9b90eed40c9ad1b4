"""`pyggml info MODEL`: what a GGUF file holds: architecture, hyper-parameters, tokenizer, tensors, memory."""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import numpy as np
from gguf import Keys

from pyggml.graph.dtypes import DType
from pyggml.graph.errors import PyggmlError
from pyggml.model.runtime.chat_template import template_source
from pyggml.model.gguf_file import GGUFFile
from pyggml.model.hparams import HParams, load_hparams
from pyggml.model.runtime.kv_cache import cache_bytes
from pyggml.model.tooling.pull import resolve_model

HELP = "show a GGUF model's architecture, hyper-parameters, tokenizer, tensors and memory needs"
KV_TOKENS = 1000
KV_ELEMENT_BYTES = {"f16": 2, "f32": 4}
KV_LAYOUTS = {"ring": False, "swa_full": True}  # sliding-window layers as a ring, or as full caches


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL and the output format."""
    parser.add_argument("model", help="GGUF file or known model name (see `pyggml pull`)")
    parser.add_argument("--json", action="store_true", help="print everything as one JSON object")


def kv_cache_sizes(hp: HParams) -> dict[str, dict[str, dict[str, int]]]:
    """KV-cache bytes per 1,000 tokens and at the trained context, per element type and layout."""
    windows = [hp.sliding_window if hp.is_swa(il) else None for il in range(hp.n_layer)]
    width = hp.n_head_kv * (hp.head_dim + hp.head_dim_v)
    return {f"at {n_ctx} tokens": {f"{name} {layout}": cache_bytes(windows, n_ctx, width, size, swa_full=full)
                                   for name, size in KV_ELEMENT_BYTES.items() for layout, full in KV_LAYOUTS.items()}
            for n_ctx in dict.fromkeys((KV_TOKENS, hp.n_ctx_train))}


def weight_memory(model: GGUFFile) -> dict[str, int]:
    """Bytes of the weights as each CPU backend holds them: the numba backend keeps what its block kernels read
    as stored and dequantizes the rest to F32; the NumPy backend holds everything as F32."""
    from pyggml.backends.numba.backend import readable
    return {"numba": sum(t.nbytes if readable(t.shape, t.dtype) or t.dtype == DType.F32 else 4 * t.n_elements
                         for t in model.tensors.values()),
            "numpy": sum(4 * t.n_elements for t in model.tensors.values())}


def describe(model: GGUFFile) -> dict[str, Any]:
    """Everything `info` reports, as JSON-ready values."""
    meta = model.metadata
    try:
        hparams, hparams_error = load_hparams(meta, model.tensors), None
    except PyggmlError as e:
        hparams, hparams_error = None, str(e)
    tokens = meta.get(Keys.Tokenizer.LIST)
    tensors = [{"name": t.name, "type": t.dtype.name, "shape": list(t.shape), "nbytes": t.nbytes}
               for t in model.tensors.values()]
    return {
        "path": str(model.path),
        "file_bytes": model.path.stat().st_size,
        "gguf_version": model.version,
        "architecture": meta.get(Keys.General.ARCHITECTURE),
        "name": meta.get(Keys.General.NAME),
        "hparams": dataclasses.asdict(hparams) if hparams else None,
        "hparams_error": hparams_error,
        "tokenizer": {"model": meta.get(Keys.Tokenizer.MODEL), "pre": meta.get(Keys.Tokenizer.PRE),
                      "n_vocab": len(tokens) if tokens is not None else None},
        "chat_template": template_source(meta, meta.get(Keys.General.ARCHITECTURE))[1],
        "tensors": tensors,
        "total_bytes": sum(t.nbytes for t in model.tensors.values()),
        "f32_bytes": sum(t.n_elements * np.dtype(np.float32).itemsize for t in model.tensors.values()),
        "weight_memory": weight_memory(model),
        "kv_cache_bytes": kv_cache_sizes(hparams) if hparams else None,
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _print_text(info: dict[str, Any]) -> None:
    """The human-readable report."""
    print(f"file          {info['path']} ({_mb(info['file_bytes'])}, GGUF v{info['gguf_version']})")
    print(f"architecture  {info['architecture']}" + (f"  ({info['name']})" if info["name"] else ""))
    tok = info["tokenizer"]
    print(f"tokenizer     {tok['model']} (pre {tok['pre']}), {tok['n_vocab']} tokens")
    print(f"chat template {info['chat_template']}")
    if info["hparams"] is None:
        print(f"hyper-parameters unavailable: {info['hparams_error']}")
    else:
        print("hyper-parameters")
        for key, value in info["hparams"].items():
            print(f"  {key:20s} {value}")
    rows = [(t["name"], t["type"], "x".join(map(str, t["shape"])), f"{t['nbytes']:,}") for t in info["tensors"]]
    widths = [max([len(r[i]) for r in rows] + [len(h)]) for i, h in enumerate(("tensor", "type", "shape", "bytes"))]
    print(f"\n{'tensor':{widths[0]}}  {'type':{widths[1]}}  {'shape':{widths[2]}}  {'bytes':>{widths[3]}}")
    for row in rows:
        print(f"{row[0]:{widths[0]}}  {row[1]:{widths[1]}}  {row[2]:{widths[2]}}  {row[3]:>{widths[3]}}")
    print(f"\n{len(rows)} tensors, {info['total_bytes']:,} bytes ({_mb(info['total_bytes'])}); "
          f"dequantized to F32: {_mb(info['f32_bytes'])}")
    print("weights in memory: " + ", ".join(f"{_mb(n)} on the {name} backend"
                                            for name, n in info["weight_memory"].items()))
    for where, sizes in (info["kv_cache_bytes"] or {}).items():
        print(f"KV cache {where}: " + ", ".join(f"{k} {_mb(v)}" for k, v in sizes.items()))


def run(args: argparse.Namespace) -> int:
    """Open the model and print the report."""
    info = describe(GGUFFile(resolve_model(args.model)))
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
    else:
        _print_text(info)
    return 0
