"""The OpenAI-compatible HTTP app on FastAPI: handlers turn requests into engine requests and relay their
events, as one JSON body or as server-sent events; a client that goes away cancels its request."""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from pyggml.graph.errors import PyggmlError
from pyggml.model.engine import Engine, Event, QueueFull, TokenLogprob
from pyggml.model.engine import Request as EngineRequest
from pyggml.model.model import Model

from . import protocol as api

POLL_SECONDS = 0.5  # how often a waiting non-streaming handler checks that its client is still there


@dataclass
class Shape:
    """How one endpoint words its answers."""
    id_prefix: str
    obj: str
    chunk_obj: str
    choice: Callable[[int, str, str | None, dict | None], dict]  # (index, text, finish reason, logprobs)
    chunk: Callable[[int, str, str | None, dict | None], dict]
    logprobs: Callable[[list[TokenLogprob], api.Piece, int], dict]  # (entries, token bytes, text offset)
    param: str  # the field a too-long prompt is blamed on


TEXT = Shape("cmpl", "text_completion", "text_completion", api.text_choice, api.text_choice,
             api.completion_logprobs, "prompt")
CHAT = Shape("chatcmpl", "chat.completion", "chat.completion.chunk", api.message_choice,
             lambda i, text, reason, lp=None: api.delta_choice(i, {"content": text} if text else {}, reason, lp),
             api.chat_logprobs, "messages")


class AsyncSink:
    """The engine events of a request's choices, handed from the engine thread to a handler's asyncio queue as
    (choice index, event)."""

    def __init__(self) -> None:
        self.loop, self.queue = asyncio.get_running_loop(), asyncio.Queue()

    def put(self, item: tuple[int, Event]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (the server stopped): nobody listens
            pass


@dataclass
class ChoiceSink:
    """Where the engine puts one choice's events."""
    sink: AsyncSink
    index: int

    def put(self, event: Event) -> None:
        self.sink.put((self.index, event))


def create_app(model: Model, engine: Engine, model_name: str) -> FastAPI:
    """The app serving one model through one engine (started and stopped with the app)."""
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        yield
        engine.shutdown()

    app = FastAPI(title="pyggml", lifespan=lifespan)
    add_error_handlers(app)
    created = int(time.time())

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "slots": engine.n_parallel, "active": len(engine.active),
                "waiting": len(engine.waiting), "kv_blocks_used": engine.cache.n_used,
                "prefix_cache_queried_tokens": engine.prefix_queried, "prefix_cache_hit_tokens": engine.prefix_hits}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "pyggml"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request)
        params = api.parse_params(body, api.completion_prompts(body), model.hparams.n_vocab)
        ids = [prompt_ids(model, engine, p, TEXT) for p in params.prompts]
        return await answer(request, engine, model_name, ids, params, TEXT)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read_body(request)
        text = model.apply_chat_template(api.chat_messages(body))
        params = api.parse_params(body, [text], model.hparams.n_vocab, ("max_tokens", "max_completion_tokens"),
                                  engine.n_ctx, chat=True)
        return await answer(request, engine, model_name, [prompt_ids(model, engine, text, CHAT)], params, CHAT)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error as an OpenAI error body."""
    @app.exception_handler(api.APIError)
    async def api_error(_: Request, e: api.APIError) -> JSONResponse:
        return JSONResponse(e.body(), e.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse(api.APIError(e.status_code, str(e.detail), code=str(e.status_code)).body(), e.status_code)

    @app.exception_handler(Exception)
    async def server_error(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse(api.APIError(500, f"{type(e).__name__}: {e}", kind="server_error").body(), 500)


async def read_body(request: Request) -> dict:
    """The request's JSON object, or a 400."""
    try:
        return api.need_object(json.loads(await request.body()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise api.APIError(400, f"the request body is not valid JSON: {e}") from None


def prompt_ids(model: Model, engine: Engine, prompt: str | list[int], shape: Shape) -> list[int]:
    """Token ids of the prompt, checked against the vocabulary and the context."""
    ids = model.tokenize(prompt, parse_special=True) if isinstance(prompt, str) else prompt
    if any(not 0 <= t < model.hparams.n_vocab for t in ids):
        raise api.APIError(400, f"token ids must be in [0, {model.hparams.n_vocab})", shape.param)
    if len(ids) >= engine.n_ctx:
        raise api.APIError(400, f"the prompt has {len(ids)} tokens; this server's context holds {engine.n_ctx} "
                                "(prompt and completion together)", shape.param, "context_length_exceeded")
    return ids


def submit(engine: Engine, prompts: list[list[int]], params: api.Params) -> tuple[list[EngineRequest], AsyncSink]:
    """Hand each prompt's n choices to the engine, choice i·n + j being prompt i's j-th (a seed moves by j, so
    that the choices differ): 503 when the queue is full (none is left queued), 400 when one can never fit."""
    if len(prompts) * params.n > engine.max_queue:
        raise api.APIError(400, f"the request asks for {len(prompts) * params.n} choices; this server queues at "
                                f"most {engine.max_queue}", "n")
    seed = params.sampling.seed
    samplings = [dataclasses.replace(params.sampling, seed=seed if seed is None else seed + j)
                 for j in range(params.n)]
    sink, reqs = AsyncSink(), []
    try:
        for ids in prompts:
            for sampling in samplings:
                reqs.append(engine.submit(ids, params.max_tokens, sampling, params.stop,
                                          events=ChoiceSink(sink, len(reqs)), logprobs=params.logprobs))
    except QueueFull as e:
        cancel(reqs)
        raise api.APIError(503, f"the server is busy: {e}; retry later", code="queue_full",
                           kind="server_error") from None
    except PyggmlError as e:
        cancel(reqs)
        raise api.APIError(400, str(e)) from None
    return reqs, sink


def cancel(reqs: list[EngineRequest]) -> None:
    """Stop the requests and free their sequences (a no-op for finished ones)."""
    for req in reqs:
        req.cancel()


async def answer(request: Request, engine: Engine, name: str, prompts: list[list[int]], params: api.Params,
                 shape: Shape):
    """The whole completion as one body, or a stream of server-sent events."""
    reqs, sink = submit(engine, prompts, params)
    rid, piece, n_prompt = api.new_id(shape.id_prefix), token_bytes(engine), sum(map(len, prompts))
    if params.stream:
        return StreamingResponse(stream(reqs, sink, name, rid, n_prompt, params, shape, piece),
                                 media_type="text/event-stream")
    watcher = asyncio.create_task(cancel_when_gone(request, reqs))
    try:
        reasons, entries = {}, [[] for _ in reqs]
        while len(reasons) < len(reqs):
            index, event = await sink.queue.get()
            entries[index] += [event.logprob] if event.logprob is not None else []
            if event.finish_reason:
                failed(event)
                reasons[index] = event.finish_reason
        choices = [shape.choice(i, req.text, reasons[i],
                                None if params.logprobs is None else shape.logprobs(entries[i], piece, 0))
                   for i, req in enumerate(reqs)]
        return api.envelope(rid, shape.obj, name, choices, api.usage(n_prompt, sum(len(r.tokens) for r in reqs)))
    finally:
        watcher.cancel()
        cancel(reqs)  # frees the sequences when the handler was cancelled


async def cancel_when_gone(request: Request, reqs: list[EngineRequest]) -> None:
    """Cancel the engine requests when their client disconnects."""
    while not await request.is_disconnected():
        await asyncio.sleep(POLL_SECONDS)
    cancel(reqs)


def failed(event: Event) -> None:
    """Raise the API error of a request that ended without a result."""
    if event.finish_reason == "error":
        raise api.APIError(500, f"generation failed: {event.error}", kind="server_error")
    if event.finish_reason == "cancelled":
        raise api.APIError(503, "the request was cancelled (the server is stopping)", kind="server_error")


def sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


def token_bytes(engine: Engine) -> api.Piece:
    """A token id's bytes as the model's tokenizer writes them, special tokens included."""
    return functools.partial(engine.model.tokenizer.token_to_piece, special=True)


async def stream(reqs: list[EngineRequest], sink: AsyncSink, name: str, rid: str, n_prompt: int,
                 params: api.Params, shape: Shape, piece: api.Piece) -> AsyncIterator[str]:
    """Server-sent events, a choice per chunk: (chat) each choice's role, then a chunk per piece of text (and per
    token, with its log-probabilities, when asked) and each choice's finish reason as they come, usage if asked
    for, then [DONE]."""
    offsets = [0] * len(reqs)  # of each choice's next token in its text, for logprobs' text_offset
    open_choices = len(reqs)
    try:
        if shape is CHAT:
            for i in range(len(reqs)):
                yield sse(api.envelope(rid, shape.chunk_obj, name,
                                       [api.delta_choice(i, {"role": "assistant", "content": ""}, None)]))
        while open_choices:
            index, event = await sink.queue.get()
            if event.finish_reason in ("error", "cancelled"):
                try:
                    failed(event)
                except api.APIError as e:
                    yield sse(e.body())
                break
            logprobs = None
            if event.logprob is not None:
                logprobs = shape.logprobs([event.logprob], piece, offsets[index])
                offsets[index] += len(api.token_text(piece, event.token))
            if event.text or event.finish_reason or logprobs:
                yield sse(api.envelope(rid, shape.chunk_obj, name,
                                       [shape.chunk(index, event.text, event.finish_reason, logprobs)]))
            open_choices -= bool(event.finish_reason)
        else:
            if params.include_usage:
                use = api.usage(n_prompt, sum(len(r.tokens) for r in reqs))
                yield sse(api.envelope(rid, shape.chunk_obj, name, [], use))
        yield "data: [DONE]\n\n"
    finally:
        cancel(reqs)
