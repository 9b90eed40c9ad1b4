"""The OpenAI app on Ray Serve: N replicas, each a model with its own engine and the app of app.py, behind one
ingress that sends a request to the replica its prompt's prefix hashes to (prefix-aware routing: requests that
share a prefix meet that replica's prefix cache). Responses, streams included, come back through Serve handles
as the replica's ASGI messages."""
from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator

from ray import serve
from starlette.requests import Request
from starlette.responses import StreamingResponse

PREFIX_CHARS = 256  # requests whose prompt text agrees on this many leading characters go to one replica
REPLICA_HEADER = "x-pyggml-replica"


def prompt_prefix(body: bytes) -> str:
    """The leading characters of a request's prompt (completions) or of its messages' contents in order (chat);
    "" for anything else."""
    try:
        doc = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    messages = doc.get("messages")
    if isinstance(messages, list):
        text = "\x00".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    else:
        prompt = doc.get("prompt", "")
        text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    return text[:PREFIX_CHARS]


def route(body: bytes, n_replicas: int) -> int:
    """The replica of a request: a stable hash of its prompt prefix."""
    return zlib.crc32(prompt_prefix(body).encode()) % n_replicas


class Replica:
    """A model, its engine (stepping in a thread) and the OpenAI app, called with whole HTTP requests."""

    def __init__(self, model: str, name: str, options: dict):
        from pyggml.backends.registry import create
        from pyggml.model.runtime.engine import Engine
        from pyggml.model.model import Model

        from .app import Options, create_app
        backends = [create(b) for b in options.get("backend") or ()]
        kv_types = {k: options[k] for k in ("type_k", "type_v") if k in options}  # else the model's default
        self.model = Model(model, n_ctx=options.get("n_ctx"), backend=backends[0] if len(backends) == 1 else
                           backends or None, **kv_types)
        self.engine = Engine(self.model, options.get("parallel", 4), self.model.n_ctx, options.get("kv_blocks"),
                             max_queue=options.get("queue", 64))
        self.engine.start()  # the app's lifespan is not run here
        self.app = create_app(self.model, self.engine, name, Options(**options.get("access", {})))

    async def handle(self, method: str, path: str, query: bytes, headers: list, body: bytes) -> AsyncIterator[dict]:
        """The app's ASGI messages (response start, body chunks) for one request."""
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
                 "headers": headers, "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}
        messages: asyncio.Queue = asyncio.Queue()
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client stays until this generator is closed
            return {"type": "http.disconnect"}

        task = asyncio.create_task(self.app(scope, receive, messages.put))
        try:
            while True:
                message = await messages.get()
                yield message
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    return
        finally:
            task.cancel()  # a client gone: the handler's cancellation cancels its engine requests


class Ingress:
    """Serve's HTTP entry: each request relayed to the replica its prompt prefix picks."""

    def __init__(self, *replicas):
        self.replicas = replicas

    async def __call__(self, request: Request) -> StreamingResponse:
        body = await request.body()
        index = route(body, len(self.replicas))
        relay = self.replicas[index].options(stream=True).handle.remote(
            request.method, request.url.path, request.url.query.encode(), list(request.headers.raw), body)
        start = await relay.__anext__()

        async def chunks() -> AsyncIterator[bytes]:
            async for message in relay:
                yield message.get("body", b"")

        headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
        return StreamingResponse(chunks(), status_code=start["status"], headers={**headers, REPLICA_HEADER: str(index)})


def deploy(model: str, name: str, n_replicas: int, host: str, port: int, options: dict,
           replica_cpus: float = 1.0) -> None:
    """Run the app on the connected Ray cluster: n_replicas replicas, HTTP on host:port (returns once up)."""
    serve.start(http_options={"host": host, "port": port})
    replicas = [serve.deployment(Replica, name=f"pyggml-replica-{i}", num_replicas=1,
                                 ray_actor_options={"num_cpus": replica_cpus}).bind(model, name, options)
                for i in range(n_replicas)]
    ingress = serve.deployment(Ingress, name="pyggml-ingress", ray_actor_options={"num_cpus": 0})
    serve.run(ingress.bind(*replicas), name="pyggml", route_prefix="/")
