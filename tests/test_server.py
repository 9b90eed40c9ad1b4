"""`pyggml serve`'s app, started on 127.0.0.1 and a free port, driven by the official openai client and by
raw HTTP for the faults: bad input, a full queue, clients that go away, a failing step."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlparse

import numpy as np
import openai
import pytest
import uvicorn

from chat_llama import write_chat_llama
from pyggml.model.runtime.engine import Engine
from pyggml.model.model import Model
from pyggml.server.app import Options, create_app
from pyggml.server.relay import Relay

JSON = {"Content-Type": "application/json"}
WAIT_STEPS = 2400  # bounded polling: at most 60 s (a machine shared with other jobs can be slow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(model: Model, options: Options | None = None, **engine_options):
    """The app on a free loopback port in a thread; yields (base URL, engine)."""
    engine = Engine(model, **engine_options)
    server = uvicorn.Server(uvicorn.Config(create_app(model, engine, "test-model", options), host="127.0.0.1",
                                           port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{server.config.port}", engine
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_until(condition) -> None:
    for _ in range(WAIT_STEPS):
        if condition():
            return
        time.sleep(0.025)
    raise AssertionError("timed out waiting")


def connect(url: str, timeout: float) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(urlparse(url).hostname, urlparse(url).port, timeout=timeout)


def call(url: str, path: str, body: str | dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    """(status, JSON answer) of a GET, or a POST of a body (a dict is sent as JSON)."""
    conn = connect(url, timeout)
    try:
        data = json.dumps(body) if isinstance(body, dict) else body
        conn.request("GET" if body is None else "POST", path, data, JSON)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def health(url: str) -> dict:
    return call(url, "/health")[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Model:
    return Model(write_chat_llama(tmp_path_factory.mktemp("server") / "chat-llama.gguf", n_ctx=256), n_ctx=256)


def test_openai_client_gets_what_generate_gives(smollm2):
    prompt, messages = "The capital of France is", [{"role": "user", "content": "Name a colour."}]
    smollm2.reset()
    want = smollm2.generate(prompt, max_tokens=8, temperature=0)
    smollm2.reset()
    want_chat = smollm2.chat(messages, max_tokens=8, temperature=0)
    with serving(smollm2, n_parallel=2, n_ctx=256) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == ["test-model"]
        done = client.completions.create(model="test-model", prompt=prompt, max_tokens=8, temperature=0)
        assert (done.choices[0].text, done.choices[0].finish_reason) == (want.text, want.finish_reason)
        assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (len(smollm2.tokenize(prompt)), 8)
        chunks = list(client.completions.create(model="test-model", prompt=prompt, max_tokens=8, temperature=0,
                                                stream=True))
        assert "".join(c.choices[0].text for c in chunks) == want.text
        assert chunks[-1].choices[0].finish_reason == want.finish_reason
        reply = client.chat.completions.create(model="test-model", messages=messages, max_tokens=8, temperature=0)
        assert reply.choices[0].message.content == want_chat.text and reply.object == "chat.completion"
        chunks = list(client.chat.completions.create(model="test-model", messages=messages, max_tokens=8,
                                                     temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want_chat.text
        assert chunks[-1].usage.completion_tokens == len(want_chat.tokens)
        assert health(url)["kv_blocks_used"] == 0


def test_a_repeated_prompt_hits_the_prefix_cache(tiny):
    """A request after a finished one with the same long prompt takes over its cached blocks (reported by /health)
    and gets the same greedy text."""
    body = {"prompt": "A long shared system prompt, the same in both requests: " * 2, "max_tokens": 6,
            "temperature": 0}
    with serving(tiny, n_parallel=2, n_ctx=256) as (url, _):
        first = call(url, "/v1/completions", body)[1]
        before = health(url)
        second = call(url, "/v1/completions", body)[1]
        after = health(url)
        conn = connect(url, 30)
        conn.request("GET", "/metrics")
        scraped = dict(line.rsplit(" ", 1) for line in conn.getresponse().read().decode().splitlines()
                       if line.startswith("pyggml:prefix_cache"))
        conn.close()
    n_prompt = first["usage"]["prompt_tokens"]
    assert second["choices"][0]["text"] == first["choices"][0]["text"]
    assert before["prefix_cache_hit_tokens"] == 0 and before["prefix_cache_queried_tokens"] == n_prompt
    assert after["prefix_cache_hit_tokens"] == (n_prompt - 1) // 16 * 16 > 0
    assert after["prefix_cache_queried_tokens"] == 2 * n_prompt
    assert float(scraped["pyggml:prefix_cache_hits_total"]) == after["prefix_cache_hit_tokens"]
    assert float(scraped["pyggml:prefix_cache_queries_total"]) == 2 * n_prompt


def test_openai_client_embeddings_equal_model_embed(tiny):
    """embeddings.create (base64, the client's default, and floats) for a text, a batch and token ids gives what
    Model.embed gives; a server without --embeddings has no such endpoint, and bad input gets a 400."""
    texts = ["A long shared system prompt.", "Another one"]
    want = tiny.embed(texts, pooling="mean")
    with serving(tiny, Options(embeddings=True, pooling="mean"), n_parallel=2, n_ctx=256) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        done = client.embeddings.create(model="test-model", input=texts)
        assert [d.index for d in done.data] == [0, 1] and done.usage.prompt_tokens == sum(
            len(tiny.tokenize(t)) for t in texts)
        for d, w in zip(done.data, want):
            np.testing.assert_allclose(d.embedding, w, atol=1e-6)
        floats = client.embeddings.create(model="test-model", input=tiny.tokenize(texts[1]), encoding_format="float")
        np.testing.assert_allclose(floats.data[0].embedding, want[1], atol=1e-6)
        status, error = call(url, "/v1/embeddings", {"input": "x", "dimensions": 3})
        assert status == 400 and error["error"]["param"] == "dimensions"
        status, error = call(url, "/v1/embeddings", {"input": []})
        assert status == 400
    with serving(tiny, n_parallel=1, n_ctx=256) as (url, _):
        assert call(url, "/v1/embeddings", {"input": "x"})[0] == 404


def test_logprobs_are_the_models_and_come_in_both_shapes(smollm2):
    """Completions' logprobs (tokens, token_logprobs, top_logprobs, text_offset) and chat's (content entries with
    bytes and top_logprobs), whole and streamed, against generate's own log-probabilities (the single path)."""
    prompt = "The capital of France is"
    smollm2.reset()
    want = smollm2.generate(prompt, max_tokens=6, temperature=0, logprobs=True)
    with serving(smollm2, n_parallel=2, n_ctx=256) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        done = client.completions.create(model="m", prompt=prompt, max_tokens=6, temperature=0, logprobs=3)
        lp = done.choices[0].logprobs
        assert "".join(lp.tokens) == done.choices[0].text == want.text
        np.testing.assert_allclose(lp.token_logprobs, want.logprobs, atol=1e-3)
        assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
        for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            assert len(top) == 3 and top[token] == logprob == max(top.values())  # greedy: the most likely
        chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=6, temperature=0, logprobs=True, top_logprobs=2,
                                                     stream=True))
        entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
        assert len(entries) == 6 and "".join(e.token for e in entries) == "".join(
            c.choices[0].delta.content or "" for c in chunks if c.choices)
        for e in entries:
            assert bytes(e.bytes).decode() == e.token and len(e.top_logprobs) == 2
            assert e.top_logprobs[0].logprob == e.logprob >= e.top_logprobs[1].logprob
        assert client.completions.create(model="m", prompt=prompt, max_tokens=2).choices[0].logprobs is None


def test_prompt_batches_and_n_choices_come_back_in_order(smollm2, monkeypatch):
    """Choice i·n + j is prompt i's j-th, whole and streamed (greedy: what generate gives each prompt); a seed
    moves by j, so that sampled choices differ; usage counts each prompt once and every choice's tokens; the
    event loop is woken at most once per engine step, however many choices the step advanced."""
    prompts = ["The capital of France is", "Once upon a time"]
    want = []
    for p in prompts:
        smollm2.reset()
        want.append(smollm2.generate(p, max_tokens=6, temperature=0).text)
    counts = {"steps": 0, "deliveries": 0}
    for cls, name, key in ((Engine, "step", "steps"), (Relay, "deliver", "deliveries")):
        def counted(self, _original=getattr(cls, name), _key=key):
            counts[_key] += 1
            return _original(self)
        monkeypatch.setattr(cls, name, counted)
    with serving(smollm2, n_parallel=4, n_ctx=256) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        done = client.completions.create(model="m", prompt=prompts, n=2, max_tokens=6, temperature=0)
        assert [(c.index, c.text) for c in done.choices] == list(enumerate(w for w in want for _ in range(2)))
        assert done.usage.prompt_tokens == sum(len(smollm2.tokenize(p)) for p in prompts)
        assert done.usage.completion_tokens == 4 * 6
        chunks = list(client.completions.create(model="m", prompt=prompts, n=2, max_tokens=6, temperature=0,
                                                stream=True, stream_options={"include_usage": True}))
        texts, reasons = ["" for _ in range(4)], [[] for _ in range(4)]
        for c in chunks[:-1]:
            (choice,) = c.choices
            texts[choice.index] += choice.text
            reasons[choice.index] += [choice.finish_reason] if choice.finish_reason else []
        assert texts == [w for w in want for _ in range(2)] and reasons == [["length"]] * 4
        assert chunks[-1].usage.completion_tokens == 24
        top1 = client.completions.create(model="m", prompt=prompts[0], max_tokens=6, temperature=1.0,
                                         extra_body={"top_k": 1, "min_p": 0.5, "repetition_penalty": 1.0})
        assert top1.choices[0].text == want[0]  # vLLM's and llama.cpp's extra fields: top_k 1 is greedy
        sampled = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], n=3,
                                                 max_tokens=5, temperature=1.0, seed=7)
        for j, choice in enumerate(sampled.choices):
            alone = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                                   max_tokens=5, temperature=1.0, seed=7 + j)
            assert choice.index == j and choice.message.content == alone.choices[0].message.content
        assert health(url)["kv_blocks_used"] == 0
        assert 0 < counts["deliveries"] <= counts["steps"]


BAD = [("{not json", "body"), ('["a list"]', "body"), ('{"prompt": ""}', "prompt"), ('{"prompt": 5}', "prompt"),
       ('{"prompt": "hi", "max_tokens": "8"}', "max_tokens"), ('{"prompt": "hi", "max_tokens": 0}', "max_tokens"),
       ('{"prompt": "hi", "temperature": 3}', "temperature"), ('{"prompt": "hi", "n": 0}', "n"),
       ('{"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}', "stop"), ('{"prompt": [1, 99999]}', "prompt"),
       ('{"prompt": "hi", "stream": "yes"}', "stream"), ('{"prompt": "hi", "logit_bias": {"x": 1}}', "logit_bias"),
       ('{"prompt": "hi", "logit_bias": {"5": 101}}', "logit_bias"),
       ('{"prompt": "hi", "logit_bias": {"99999": 1}}', "logit_bias"), ('{"prompt": "hi", "logprobs": 21}', "logprobs"),
       ('{"prompt": "hi", "echo": true}', "echo"), ('{"prompt": "hi", "best_of": 3}', "best_of"),
       ('{"prompt": "hi", "response_format": {"type": "json_schema"}}', "response_format"),
       ('{"prompt": "hi", "tools": [{}]}', "tools"),
       ('{"prompt": ["hi", ""]}', "prompt"), ('{"prompt": ["hi", 5]}', "prompt"), ('{"prompt": "hi", "n": 129}', "n"),
       ('{"prompt": ["a", "b"], "n": 40}', "n"), ('{"prompt": "hi", "top_k": -2}', "top_k"),
       ('{"prompt": "hi", "min_p": 2}', "min_p"), ('{"prompt": "hi", "repeat_penalty": 0}', "repeat_penalty"),
       ('{"prompt": "hi", "temperature": NaN}', "temperature"), ('{"prompt": "hi", "top_p": NaN}', "top_p"),
       ('{"prompt": "hi", "frequency_penalty": -Infinity}', "frequency_penalty"),
       ('{"prompt": "hi", "seed": -1}', "seed"),
       ('{"prompt": "hi", "stream_options": {"include_usage": 1}}', "stream_options"),
       ("[" * 1000 + "]" * 1000, "body"),
       ('{"prompt": "hi", "logit_bias": {"5": 1e999}}', "logit_bias"), ('{"prompt": [-1]}', "prompt")]


def test_bad_input_gets_400_with_an_openai_error_body(tiny):
    with serving(tiny, n_parallel=2, n_ctx=64) as (url, _):
        for body, param in BAD:
            status, answer = call(url, "/v1/completions", body)
            error = answer["error"]
            assert status == 400 and set(error) == {"message", "type", "param", "code"}, body
            want = None if param == "body" else param
            assert error["type"] == "invalid_request_error" and error["param"] == want, body
        for messages in ("hi", [], [{"role": "user", "content": 5}], [{"role": "king", "content": "hi"}]):
            status, answer = call(url, "/v1/chat/completions", {"messages": messages})
            assert status == 400 and answer["error"]["param"] == "messages", messages
        status, answer = call(url, "/v1/completions", {"prompt": "ok", "max_tokens": 1, "whatever": [1], "user": "u"})
        assert status == 200 and answer["usage"]["completion_tokens"] == 1  # unknown fields are ignored
        status, answer = call(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                            "top_logprobs": 2})
        assert status == 400 and answer["error"]["param"] == "top_logprobs"
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="m", prompt="x" * 64, max_tokens=4)
        assert e.value.code == "context_length_exceeded"
        status, answer = call(url, "/v1/nothing")
        assert status == 404 and "error" in answer
        assert client.completions.create(model="m", prompt="ok", max_tokens=3).choices[0].finish_reason
        assert health(url)["kv_blocks_used"] == 0


def post_in_thread(url: str, body: dict, results: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(call(url, "/v1/completions", body, 60)))
    thread.start()
    return thread


def test_full_queue_answers_503_and_queued_requests_finish(tiny):
    """--queue 0: nothing waits beyond the free slots, but an idle slot takes a request."""
    with serving(tiny, n_parallel=1, n_ctx=64, max_queue=0) as (url, engine):
        gate, step = threading.Event(), engine.step
        engine.step = lambda: (gate.wait(30), step())
        results = []
        first = post_in_thread(url, {"prompt": "ab", "max_tokens": 4}, results)
        wait_until(lambda: health(url)["waiting"] == 1)  # not admitted yet: the engine is held
        conn = connect(url, 30)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "cd", "max_tokens": 4}), JSON)
        r = conn.getresponse()
        assert r.status == 503 and json.loads(r.read())["error"]["code"] == "queue_full"
        assert int(r.headers["Retry-After"]) >= 1
        gate.set()
        first.join(timeout=60)
        assert results[0][0] == 200 and results[0][1]["usage"]["completion_tokens"] >= 1
        status, answer = call(url, "/v1/completions", {"prompt": "cd", "max_tokens": 2})
        assert status == 200 and answer["usage"]["completion_tokens"] == 2
        assert health(url)["kv_blocks_used"] == 0


def test_clients_that_go_away_free_their_blocks_and_faults_do_not_stop_the_server(tiny):
    with serving(tiny, n_parallel=2, n_ctx=256) as (url, engine):
        reasons, finish, step = [], engine._finish, engine.step
        engine._finish = lambda req, reason, *a, **k: (reasons.append(reason), finish(req, reason, *a, **k))
        engine.step = lambda: (time.sleep(0.01), step())  # slow enough to leave mid-generation
        no_end = {str(t): -100 for t in tiny.tokenizer.eog_ids}  # the requests run until they are cut off
        body = {"prompt": "ab", "max_tokens": 200, "temperature": 0.7, "logit_bias": no_end}
        conn = connect(url, 30)
        conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), JSON)
        assert conn.getresponse().readline().startswith(b"data: ")
        conn.close()  # gone after the first chunk
        wait_until(lambda: reasons == ["cancelled"])
        with pytest.raises(TimeoutError):
            call(url, "/v1/completions", body, timeout=0.3)  # gone while waiting for the whole answer
        wait_until(lambda: reasons == ["cancelled"] * 2)
        with pytest.raises(TimeoutError):  # all three choices go with it: two running, one still queued
            call(url, "/v1/completions", {**body, "n": 3}, timeout=0.3)
        wait_until(lambda: reasons == ["cancelled"] * 4 and health(url)["waiting"] == 0)
        batch_step = engine.batch.step
        engine.batch.step = lambda entries: 1 / 0
        status, answer = call(url, "/v1/completions", {**body, "max_tokens": 2})
        assert status == 500 and answer["error"]["type"] == "server_error"
        engine.batch.step = batch_step
        status, answer = call(url, "/v1/completions", {**body, "max_tokens": 2})
        assert status == 200 and answer["usage"]["completion_tokens"] == 2
        assert health(url) | {"kv_blocks_used": 0, "active": 0} == health(url)


def test_serve_command_refuses_a_missing_model(capsys, tmp_path):
    from pyggml.cli import main
    assert main(["serve", str(tmp_path / "missing.gguf"), "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyggml serve: error:") and err.count("\n") == 1


def test_serve_command_takes_a_backend(tmp_path, monkeypatch):
    from pyggml.cli import main
    seen = {}
    monkeypatch.setattr("pyggml.server.app.create_app",
                        lambda model, engine, name, options: seen.update(backend=model.backend))
    monkeypatch.setattr("pyggml.server.runner.serve", lambda *args: None)
    path = write_chat_llama(tmp_path / "chat-llama.gguf", n_ctx=64)
    assert main(["serve", str(path), "--backend", "numba-q8", "--port", str(free_port())]) == 0
    assert seen["backend"].name == "numba-q8"


@pytest.mark.parametrize("host, key, warned", [("0.0.0.0", None, True), ("0.0.0.0", "k", False),
                                               ("127.0.0.1", None, False), ("::1", None, False)])
def test_serve_command_warns_of_an_open_host_without_a_key(tmp_path, monkeypatch, capsys, host, key, warned):
    from pyggml.cli import main
    seen = {}
    monkeypatch.setattr("pyggml.server.runner.serve", lambda app, engine, host, port, grace: seen.update(app=app))
    monkeypatch.delenv("PYGGML_API_KEY", raising=False)
    path = write_chat_llama(tmp_path / "chat-llama.gguf", n_ctx=64)
    assert main(["serve", str(path), "--host", host, *(["--api-key", key] if key else []), "--docs"]) == 0
    assert ("warning:" in capsys.readouterr().err) == warned
    assert any(r.path == "/docs" for r in seen["app"].routes)  # served only when asked
