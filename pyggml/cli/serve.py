"""`pyggml serve MODEL`: an OpenAI-compatible HTTP server (completions, chat, models, health)."""
from __future__ import annotations

import argparse
import sys

from pyggml.graph.errors import PyggmlError

from .options import add_backend_option, add_cache_type_options, cache_types, chosen_backend

HELP = "serve a model over an OpenAI-compatible HTTP API, many requests batched together"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a GGUF path or a known model name (see `pyggml pull`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-np", "--parallel", type=int, default=4, help="sequences decoded together")
    p.add_argument("-c", "--ctx-size", type=int, default=None,
                   help="context of each sequence, prompt and completion (default: min(4096, trained))")
    p.add_argument("--kv-blocks", type=int, default=None,
                   help="KV blocks in the pool (default: enough for --parallel full contexts)")
    p.add_argument("--queue", type=int, default=64, help="requests that may wait; more get 503")
    add_cache_type_options(p)
    p.add_argument("--alias", default=None, help="the model name the API reports (default: the file name)")
    add_backend_option(p)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from pyggml.server.app import create_app
    except ImportError as e:
        raise PyggmlError(f"pyggml serve needs the server extra ({e}): pip install 'pyggml[server]'") from None
    from pyggml.model.engine import Engine
    from pyggml.model.model import Model
    if args.parallel < 1 or args.queue < 0:
        raise PyggmlError("--parallel must be at least 1 and --queue at least 0")
    model = Model(args.model, n_ctx=args.ctx_size, **cache_types(args), backend=chosen_backend(args))
    engine = Engine(model, args.parallel, model.n_ctx, args.kv_blocks, max_queue=args.queue)
    name = args.alias or model.path.stem
    sys.stderr.write(f"serving {name} on http://{args.host}:{args.port}/v1 ({args.parallel} parallel, "
                     f"context {model.n_ctx}, {engine.cache.n_blocks - 1} KV blocks)\n")
    uvicorn.run(create_app(model, engine, name), host=args.host, port=args.port, log_level="warning")
    return 0
