"""The engine: continuous batching gives each request what it would get alone, and no KV block leaks after any
mix of finished, cancelled and failed requests, with the pool full and requests queued."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from chat_llama import write_chat_llama
from pyggml.graph.errors import PyggmlError
from pyggml.model.runtime.engine import Engine, QueueFull
from pyggml.model.model import Model
from pyggml.model.runtime.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Model:
    return Model(write_chat_llama(tmp_path_factory.mktemp("engine") / "chat-llama.gguf", n_ctx=256), n_ctx=256)


def prompt(rng: np.random.Generator, n: int) -> list[int]:
    return rng.integers(32, 127, n).tolist()


def assert_no_blocks_held(engine: Engine) -> None:
    for pool in engine.cache.pools.values():
        assert pool.n_used == 0 and (pool.refs[1:] == 0).all()


def test_requests_get_what_they_would_get_alone(tiny):
    """Requests of different lengths, admitted while others decode, give the single path's greedy tokens."""
    rng = np.random.default_rng(0)
    prompts = [prompt(rng, n) for n in (5, 40, 17, 3, 60)]
    engine = Engine(tiny, n_parallel=3, n_ctx=128)
    requests = [engine.submit(p, 12, GREEDY) for p in prompts]
    engine.run_until_idle()
    for p, req in zip(prompts, requests):
        tiny.reset()
        want = tiny.generate(p, max_tokens=12, temperature=0)
        assert (req.tokens, req.text, req.finish_reason) == (want.tokens, want.text, want.finish_reason)
    assert_no_blocks_held(engine)


def test_copies_of_a_prompt_evaluate_it_once(tiny, monkeypatch):
    """n choices of one prompt (queued together) wait for the first to evaluate it, then share its blocks: each
    copy evaluates only its last prompt token, and gets what it would get alone."""
    p = prompt(np.random.default_rng(1), 40)
    engine = Engine(tiny, n_parallel=4, n_ctx=128)
    evaluated, real_step = [], engine.batch.step
    monkeypatch.setattr(engine.batch, "step", lambda entries: (evaluated.extend(entries), real_step(entries))[1])
    requests = [engine.submit(p, 6, GREEDY) for _ in range(3)]
    engine.run_until_idle()
    tiny.reset()
    want = tiny.generate(p, max_tokens=6, temperature=0)
    assert all(r.tokens == want.tokens for r in requests)
    assert sum(len(e.tokens) for e in evaluated) == len(p) + 2 + 3 * (6 - 1)  # prompt once, 2 last tokens, decode
    assert_no_blocks_held(engine)


@pytest.mark.parametrize("seed", range(4))
def test_no_block_leaks_after_any_mix(tiny, seed, monkeypatch):
    """Finished, cancelled (waiting or running), failed (sampler or whole step) requests, a shared prefix,
    a pool too small for everyone: afterwards no block is held and every request has a finish reason."""
    rng = np.random.default_rng(seed)
    engine = Engine(tiny, n_parallel=4, n_ctx=96, n_blocks=14, max_queue=20)
    system = prompt(rng, 21)
    requests = [engine.submit(system + prompt(rng, int(rng.integers(1, 30))) if rng.random() < 0.5 else
                              prompt(rng, int(rng.integers(1, 40))), int(rng.integers(1, 30)),
                              SamplingParams(temperature=0.8, seed=seed)) for _ in range(12)]
    requests[int(rng.integers(12))].sampler.sample = lambda *a: 1 / 0  # this one fails when sampled
    real_step, calls = engine.batch.step, [0]

    def flaky_step(entries):
        calls[0] += 1
        if calls[0] == 5:
            raise RuntimeError("injected fault")
        return real_step(entries)
    monkeypatch.setattr(engine.batch, "step", flaky_step)
    for i in range(200):
        if not engine.busy:
            break
        if i % 3 == 0:
            requests[int(rng.integers(12))].cancel()
        engine.step()
    assert not engine.busy
    assert_no_blocks_held(engine)
    reasons = {r.finish_reason for r in requests}
    assert None not in reasons and {"cancelled", "error"} <= reasons


def test_queue_bounds_and_refusals(tiny):
    """max_queue requests may wait beyond the free slots (0: none, though a free slot takes one)."""
    for max_queue in (0, 2):
        engine = Engine(tiny, n_parallel=1, n_ctx=64, max_queue=max_queue)
        for _ in range(1 + max_queue):
            engine.submit([40, 41], 4)
        with pytest.raises(QueueFull):
            engine.submit([40, 41], 4)
        engine.run_until_idle()
        assert_no_blocks_held(engine)
    engine.drain(0)
    with pytest.raises(QueueFull, match="stopping"):
        engine.submit([40, 41], 4)
    with pytest.raises(PyggmlError, match="context"):
        engine.submit(list(range(40, 104)), 4)
    engine.run_until_idle()
    assert_no_blocks_held(engine)


def test_background_thread_streams_events(tiny):
    """With the engine stepping in its thread, a request's events arrive in order and end with a reason."""
    engine = Engine(tiny, n_parallel=2, n_ctx=64)
    engine.start()
    try:
        reqs = [engine.submit([40 + i, 41, 42], 8, GREEDY) for i in range(3)]
        results = [None] * 3

        def consume(i):
            results[i] = list(reqs[i])
        threads = [threading.Thread(target=consume, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for req, events in zip(reqs, results):
            assert [e.token for e in events if e.token is not None] == req.tokens
            assert "".join(e.text for e in events) == req.text and events[-1].finish_reason == req.finish_reason
    finally:
        engine.shutdown()
    assert_no_blocks_held(engine)
