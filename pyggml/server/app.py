"""The OpenAI-compatible HTTP app on FastAPI: handlers turn requests into engine requests and relay their
events, as one JSON body or as server-sent events; a client that goes away cancels its request."""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from pyggml.graph.errors import PyggmlError
from pyggml.model.runtime.engine import Engine, Event, QueueFull, TokenLogprob
from pyggml.model.runtime.engine import Request as EngineRequest
from pyggml.model.runtime.grammar import GrammarError
from pyggml.model.model import Model
from pyggml.model.runtime.tool_calls import CallStream

from . import MAX_BODY
from . import protocol as api
from .access import allow_origins, key_check
from .body_limit import BodyLimit
from .errors import add_error_handlers
from .metrics import Metrics, Timer
from .relay import AsyncSink, ChoiceSink, Relay
from .request_models import ChatRequest, CompletionRequest, EmbeddingRequest

DEFAULT_MAX_TOKENS = 16  # of a completion, as OpenAI (a chat's: up to the context)
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


@dataclass
class Options:
    """How the app guards itself."""
    api_key: str | None = None  # required as a Bearer token on every route but /health
    cors_origins: list[str] = field(default_factory=list)  # origins browsers may call from (none: no CORS)
    docs: bool = False  # serve /docs, /redoc and /openapi.json
    max_body: int = MAX_BODY  # bytes of a request body; more gets 413
    embeddings: bool = False  # serve /v1/embeddings (llama-server's --embeddings)
    pooling: str | None = None  # how /v1/embeddings pools (default: the model's)


@dataclass
class Served:
    """What the handlers serve: a model through an engine, under a name, with its metrics."""
    model: Model
    engine: Engine
    name: str
    metrics: Metrics
    relay: Relay | None = None  # made on the loop, with the first request


def create_app(model: Model, engine: Engine, model_name: str, options: Options | None = None) -> FastAPI:
    """The app serving one model through one engine (started and stopped with the app)."""
    options = options or Options()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        # llguidance's view of the vocabulary, built now rather than by the first request with a grammar
        threading.Thread(target=getattr, args=(model, "grammars"), name="pyggml-grammars", daemon=True).start()
        yield
        engine.shutdown()

    docs = {} if options.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="pyggml", lifespan=lifespan, **docs)
    app.add_middleware(BodyLimit, max_body=options.max_body)
    add_error_handlers(app)
    allow_origins(app, options.cors_origins)
    app.include_router(routes(Served(model, engine, model_name, Metrics(engine)), options))
    return app


def routes(served: Served, options: Options) -> APIRouter:
    """The endpoints: /health open to all, the others behind the API key when there is one."""
    engine, model, created = served.engine, served.model, int(time.time())
    router, guarded = APIRouter(), APIRouter(dependencies=[Depends(key_check(options.api_key))])

    @router.get("/health")
    async def health() -> dict:
        return {"status": "ok", "slots": engine.n_parallel, "active": len(engine.active),
                "waiting": len(engine.waiting), "kv_blocks_used": engine.cache.n_used,
                "prefix_cache_queried_tokens": engine.prefix_queried, "prefix_cache_hit_tokens": engine.prefix_hits}

    @guarded.get("/metrics")
    async def metrics() -> Response:
        body, content_type = served.metrics.exposition()
        return Response(body, media_type=content_type)

    @guarded.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": created,
                                            "owned_by": "pyggml"}]}

    @guarded.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        arrived = time.perf_counter()
        params = api.params(body, model.hparams.n_vocab, DEFAULT_MAX_TOKENS)
        ids = await prompt_ids(model, engine, body.prompts, TEXT.param)
        await compile_grammar(model, params)
        return await answer(request, served, ids, params, TEXT, arrived)

    @guarded.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        arrived = time.perf_counter()
        params = api.params(body, model.hparams.n_vocab, engine.n_ctx, model.tool_grammar)
        ids = await chat_ids(model, engine, body.chat_messages, api.tool_list(body))
        await compile_grammar(model, params)
        return await answer(request, served, [ids], params, CHAT, arrived)
    if options.embeddings:
        add_embeddings(guarded, served, options.pooling or model.pooling)
    router.include_router(guarded)
    return router


def add_embeddings(router: APIRouter, served: Served, pooling: str) -> None:
    """/v1/embeddings: one pooled, normalized vector per input (computed one request at a time, beside the
    engine), as floats or base64 of little-endian float32 (the openai client's default)."""
    model, lock = served.model, threading.Lock()
    if pooling == "none":
        raise PyggmlError("--pooling none gives a vector per token, which /v1/embeddings cannot return "
                          "(as llama-server); use mean, last or cls")

    def embed(ids: list[list[int]]) -> list:
        with lock:
            return model.embed(ids, pooling)

    @router.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        if body.dimensions not in (None, model.hparams.n_embd):
            raise api.APIError(400, f"this model's embeddings have {model.hparams.n_embd} dimensions",
                               "dimensions")
        ids = await prompt_ids(model, served.engine, body.inputs, "input")
        vectors = await run_in_threadpool(embed, ids)
        data = [{"object": "embedding", "index": i, "embedding": api.encode_vector(v, body.encoding_format)}
                for i, v in enumerate(vectors)]
        n = sum(map(len, ids))
        return {"object": "list", "data": data, "model": served.name,
                "usage": {"prompt_tokens": n, "total_tokens": n}}


async def prompt_ids(model: Model, engine: Engine, prompts: list[str | list[int]], param: str) -> list[list[int]]:
    """Token ids of the prompts, tokenized off the event loop once their lengths allow them to fit, and checked
    against the vocabulary and the context."""
    for p in prompts:
        fits(engine, -(-len(p.encode()) // model.tokenizer.longest_token) if isinstance(p, str) else len(p), param)
    ids = await run_in_threadpool(lambda: [model.tokenize(p, parse_special=True) if isinstance(p, str) else p
                                           for p in prompts])
    for one in ids:
        if any(not 0 <= t < model.hparams.n_vocab for t in one):
            raise api.APIError(400, f"token ids must be in [0, {model.hparams.n_vocab})", param)
        fits(engine, len(one), param)
    return ids


async def chat_ids(model: Model, engine: Engine, messages: list[dict], tools: list[dict] | None) -> list[int]:
    """Token ids of a conversation (content as text) and its tools, templated and tokenized off the event loop
    once the length of its content allows it to fit."""
    fits(engine, -(-sum(len(m["content"].encode()) for m in messages) // model.tokenizer.longest_token), CHAT.param)
    try:
        ids = await run_in_threadpool(model.chat_prompt_ids, messages, True, tools)
    except PyggmlError as e:
        raise api.APIError(400, str(e), "messages") from None
    fits(engine, len(ids), CHAT.param)
    return ids


def fits(engine: Engine, n_tokens: int, param: str) -> None:
    """A 400 unless a prompt of (at least) n_tokens leaves room for a token in the context."""
    if n_tokens >= engine.n_ctx:
        raise api.APIError(400, f"the prompt has {n_tokens} tokens or more; this server's context holds "
                                f"{engine.n_ctx} (prompt and completion together)", param,
                           "context_length_exceeded")


async def compile_grammar(model: Model, params: api.Params) -> None:
    """Compile the request's grammar (cached per grammar) off the event loop: a 400 naming the field when it
    does not compile."""
    if params.grammar is not None:
        try:
            await run_in_threadpool(model.grammars.compile, params.grammar)
        except GrammarError as e:
            raise grammar_error(e) from None


def grammar_error(e: GrammarError) -> api.APIError:
    return api.APIError(400, f"'{e.field}' does not compile: {e}", e.field, "invalid_grammar")


def submit(engine: Engine, prompts: list[list[int]], params: api.Params,
           sink: AsyncSink) -> tuple[list[EngineRequest], AsyncSink]:
    """Hand each prompt's n choices to the engine, choice i·n + j being prompt i's j-th (a seed moves by j, so
    that the choices differ): 503 when the queue is full (none is left queued), 400 when one can never fit."""
    if len(prompts) * params.n > engine.max_queue + engine.n_parallel:
        raise api.APIError(400, f"the request asks for {len(prompts) * params.n} choices; this server takes at "
                                f"most {engine.max_queue + engine.n_parallel} at once", "n")
    seed = params.sampling.seed
    samplings = [dataclasses.replace(params.sampling, seed=seed if seed is None else seed + j)
                 for j in range(params.n)]
    reqs = []
    try:
        for ids in prompts:
            for sampling in samplings:
                reqs.append(engine.submit(ids, params.max_tokens, sampling, params.stop,
                                          events=ChoiceSink(sink, len(reqs)), logprobs=params.logprobs,
                                          grammar=params.grammar))
    except QueueFull as e:
        cancel(reqs)
        raise api.APIError(503, f"the server is busy: {e}; retry later", code="queue_full",
                           kind="server_error", retry=True) from None
    except GrammarError as e:
        cancel(reqs)
        raise grammar_error(e) from None
    except PyggmlError as e:
        cancel(reqs)
        raise api.APIError(400, str(e)) from None
    return reqs, sink


def cancel(reqs: list[EngineRequest]) -> None:
    """Stop the requests and free their sequences (a no-op for finished ones)."""
    for req in reqs:
        req.cancel()


async def answer(request: Request, served: Served, prompts: list[list[int]], params: api.Params, shape: Shape,
                 arrived: float):
    """The whole completion as one body, or a stream of server-sent events."""
    if served.relay is None:
        served.relay = Relay(asyncio.get_running_loop())
        served.engine.after_step.append(served.relay.flush)
    reqs, sink = submit(served.engine, prompts, params, AsyncSink(served.relay))
    n_prompt = sum(map(len, prompts))
    calls = [CallStream(served.model.tool_format, params.tools != "auto") for _ in reqs] if params.tools else None
    reply = Reply(served.name, api.new_id(shape.id_prefix), shape, token_bytes(served.engine),
                  served.metrics.timer(arrived, len(reqs), n_prompt), calls)
    if params.stream:
        return StreamingResponse(stream(reqs, sink, reply, n_prompt, params), media_type="text/event-stream")
    watcher = asyncio.create_task(cancel_when_gone(request, reqs))
    try:
        reasons, entries = {}, [[] for _ in reqs]
        while len(reasons) < len(reqs):
            index, event = await sink.queue.get()
            reply.timer.event(index, event)
            entries[index] += [event.logprob] if event.logprob is not None else []
            if event.finish_reason:
                failed(event)
                reasons[index] = event.finish_reason
        choices = [choice(served.model, shape, params, i, req.text, reasons[i],
                          None if params.logprobs is None else shape.logprobs(entries[i], reply.piece, 0))
                   for i, req in enumerate(reqs)]
        return api.envelope(reply.rid, shape.obj, served.name, choices,
                            api.usage(n_prompt, sum(len(r.tokens) for r in reqs)))
    finally:
        watcher.cancel()
        cancel(reqs)  # frees the sequences when the handler was cancelled


@dataclass
class Reply:
    """How a request's answer is worded and timed."""
    name: str
    rid: str
    shape: Shape
    piece: api.Piece
    timer: Timer
    calls: list[CallStream] | None = None  # each choice's splitter of tool calls from its text, when it may hold them

    def chunk(self, choices: list[dict], use: dict | None = None) -> str:
        """A stream chunk as a server-sent event."""
        return sse(api.envelope(self.rid, self.shape.chunk_obj, self.name, choices, use))

    def token_chunk(self, index: int, event: Event, offsets: list[int], logprobs: bool) -> str:
        """The chunk of a choice's token: its text, finish reason and log-probabilities ("" when it has none);
        offsets: each choice's next token's offset in its text, moved on."""
        entry = None
        if logprobs and event.logprob is not None:
            entry = self.shape.logprobs([event.logprob], self.piece, offsets[index])
            offsets[index] += len(api.token_text(self.piece, event.token))
        text, reason, first = event.text, event.finish_reason, ""
        if self.calls:
            text, reason, calls_chunk = split_calls(self.calls[index], index, text, reason)
            first = self.chunk([calls_chunk]) if calls_chunk else ""
        if not (text or reason or entry):
            return first
        return first + self.chunk([self.shape.chunk(index, text, reason, entry)])


def choice(model: Model, shape: Shape, params: api.Params, index: int, text: str, reason: str,
           logprobs: dict | None) -> dict:
    """A finished choice; a reply that may hold tool calls is parsed into its content and its calls."""
    if not params.tools:
        return shape.choice(index, text, reason, logprobs)
    content, calls = model.parse_tool_calls(text)
    return api.message_choice(index, content, reason, logprobs, calls)


def split_calls(calls: CallStream, index: int, text: str, reason: str | None) -> tuple[str, str | None, dict | None]:
    """(content to send, finish reason, a delta.tool_calls chunk to send first or None) for a streamed event of a
    reply that may hold tool calls: content passes until a call opens; the calls go out whole at the end."""
    text = calls.feed(text)
    if not reason:
        return text, reason, None
    tail, found = calls.finish()
    if not found:
        return text + tail, reason, None
    delta = {"content": text + tail or None, "tool_calls": api.tool_calls_json(found, with_index=True)}
    return "", "tool_calls" if reason == "stop" else reason, api.delta_choice(index, delta, None)


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
        raise api.APIError(503, "the request was cancelled (the server is stopping)", kind="server_error",
                           retry=True)


def error_event(event: Event) -> str:
    """The error event that ends a stream whose choice failed or was cancelled."""
    try:
        failed(event)
    except api.APIError as e:
        return sse(e.body())
    raise AssertionError(f"not a failure: {event.finish_reason}")


def sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


def token_bytes(engine: Engine) -> api.Piece:
    """A token id's bytes as the model's tokenizer writes them, special tokens included."""
    return functools.partial(engine.model.tokenizer.token_to_piece, special=True)


async def stream(reqs: list[EngineRequest], sink: AsyncSink, reply: Reply, n_prompt: int,
                 params: api.Params) -> AsyncIterator[str]:
    """Server-sent events, a choice per chunk: (chat) each choice's role, then a chunk per piece of text (and per
    token, with its log-probabilities, when asked) and each choice's finish reason as they come, usage if asked
    for, then [DONE]; a failed or cancelled choice ends the stream with an error event."""
    offsets = [0] * len(reqs)  # of each choice's next token in its text, for logprobs' text_offset
    open_choices = len(reqs)
    try:
        if reply.shape is CHAT:
            for i in range(len(reqs)):
                yield reply.chunk([api.delta_choice(i, {"role": "assistant", "content": ""}, None)])
        failure = False
        while open_choices and not failure:
            parts = []  # the events that have come, sent together
            for index, event in [await sink.queue.get(), *sink.drain()]:
                reply.timer.event(index, event)
                failure = event.finish_reason in ("error", "cancelled")
                if failure:
                    parts.append(error_event(event))
                    break
                parts.append(reply.token_chunk(index, event, offsets, params.logprobs is not None))
                open_choices -= bool(event.finish_reason)
            if any(parts):
                yield "".join(parts)
        if not failure and params.include_usage:
            yield reply.chunk([], api.usage(n_prompt, sum(len(r.tokens) for r in reqs)))
        yield "data: [DONE]\n\n"
    finally:
        cancel(reqs)
