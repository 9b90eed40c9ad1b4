"""`pyggml serve MODEL`: an OpenAI-compatible HTTP server (completions, chat, models, health)."""
from __future__ import annotations

import argparse
import os
import sys
import threading

from pyggml.graph.errors import PyggmlError

from pyggml.server import MAX_BODY

from .options import (add_backend_option, add_cache_type_options, add_stage_options, cache_types, chosen_backend,
                      stage_count, stage_kwargs)

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
    p.add_argument("--queue", type=int, default=64,
                   help="requests that may wait when every slot is busy (0: none wait); more get 503")
    add_cache_type_options(p)
    p.add_argument("--embeddings", action="store_true", help="serve /v1/embeddings (llama-server's --embeddings)")
    p.add_argument("--pooling", choices=("mean", "last", "cls"), default=None,
                   help="how /v1/embeddings pools token states (default: the GGUF's pooling_type, else last)")
    p.add_argument("--alias", default=None, help="the model name the API reports (default: the file name)")
    p.add_argument("--api-key", default=os.environ.get("PYGGML_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                        "(default: $PYGGML_API_KEY; none: no key)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let browsers on this origin call the API (repeatable; default: no CORS)")
    p.add_argument("--docs", action="store_true", help="serve the API's docs at /docs and /openapi.json")
    p.add_argument("--max-body", type=int, default=MAX_BODY, help=f"bytes of a request body; more get 413 "
                                                                  f"(default {MAX_BODY})")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds running requests get to finish on SIGTERM before they are cut (default 10)")
    add_backend_option(p)
    add_stage_options(p)
    p.add_argument("--replicas", type=stage_count, default=None, metavar="N",
                   help="with --ray: N replicas on Ray Serve, each with its own engine, requests routed by prompt "
                        "prefix")


def run(args: argparse.Namespace) -> int:
    try:
        from pyggml.server.app import Options, create_app
        from pyggml.server.runner import serve
    except ImportError as e:
        raise PyggmlError(f"pyggml serve needs the server extra ({e}): pip install 'pyggml[server]'") from None
    from pyggml.model.runtime.engine import Engine
    from pyggml.model.model import Model
    from pyggml.server.access import is_loopback
    if args.parallel < 1 or args.queue < 0 or args.max_body < 1 or args.shutdown_timeout < 0:
        raise PyggmlError("--parallel and --max-body must be at least 1, --queue and --shutdown-timeout at least 0")
    if args.replicas is not None:
        return serve_replicas(args)
    model = Model(args.model, n_ctx=args.ctx_size, **cache_types(args), backend=chosen_backend(args),
                  **stage_kwargs(args))
    engine = Engine(model, args.parallel, model.n_ctx, args.kv_blocks, max_queue=args.queue)
    name = args.alias or model.path.stem
    if not args.api_key and not is_loopback(args.host):
        sys.stderr.write(f"warning: {args.host} is reachable from other machines and no --api-key is set: "
                         "anyone who can reach it can use this server\n")
    sys.stderr.write(f"serving {name} on http://{args.host}:{args.port}/v1 ({args.parallel} parallel, "
                     f"context {model.n_ctx}, {engine.cache.n_blocks} KV blocks)\n")
    options = Options(args.api_key, args.cors_origin, args.docs, args.max_body, args.embeddings, args.pooling)
    serve(create_app(model, engine, name, options), engine, args.host, args.port, args.shutdown_timeout)
    return 0


def serve_replicas(args: argparse.Namespace) -> int:
    """The app on Ray Serve, --replicas replicas behind one ingress on --host:--port, until interrupted."""
    if args.ray is None or args.stages is not None:
        raise PyggmlError("--replicas needs --ray ADDRESS and cannot be combined with --stages")
    try:
        from pyggml.model.runtime.ray_stages import connect
        from pyggml.server.replicas import deploy
    except ImportError as e:
        raise PyggmlError(f"--replicas needs the ray extra ({e}): pip install 'pyggml[ray]'") from None
    from ray import serve
    from pyggml.model.tooling.pull import resolve_model
    path = resolve_model(args.model)
    connect(args.ray)
    options = {"backend": args.backend, "n_ctx": args.ctx_size, **cache_types(args),
               "parallel": args.parallel, "kv_blocks": args.kv_blocks, "queue": args.queue,
               "access": {"api_key": args.api_key, "cors_origins": args.cors_origin, "docs": args.docs,
                          "max_body": args.max_body}}  # each replica's app guards itself as one server would
    name = args.alias or path.stem
    deploy(str(path.resolve()), name, args.replicas, args.host, args.port, options)
    sys.stderr.write(f"serving {name} on http://{args.host}:{args.port}/v1 ({args.replicas} replicas on Ray Serve, "
                     f"{args.parallel} parallel each)\n")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
