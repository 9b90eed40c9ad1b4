"""The server's Prometheus metrics, in a registry of their own: llama-server's counters and gauges (prompt and
generated tokens, requests processing and deferred, KV-cache usage) and vLLM's latency histograms (time to
first token, inter-token latency, request latency) and prefix cache counters, as the handlers see them."""
from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from pyggml.model.runtime.engine import Engine, Event

PREFIX = "pyggml:"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class PrefixCacheCounters:
    """The engine's prefix cache counters, read when scraped (vLLM's prefix_cache_queries and _hits, in tokens)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(PREFIX + "prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                                  value=self.engine.prefix_queried)
        yield CounterMetricFamily(PREFIX + "prefix_cache_hits", "Prompt tokens found in the prefix cache",
                                  value=self.engine.prefix_hits)


class Metrics:
    """Counters, gauges and histograms of one engine's serving."""

    def __init__(self, engine: Engine) -> None:
        self.registry = r = CollectorRegistry()
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens submitted", registry=r)
        self.tokens_predicted = Counter(PREFIX + "tokens_predicted", "Tokens generated", registry=r)
        self.requests = Counter(PREFIX + "requests", "Choices finished, by finish reason", ["finish_reason"],
                                registry=r)
        Gauge(PREFIX + "requests_processing", "Sequences in the batch", registry=r).set_function(
            lambda: len(engine.active))
        Gauge(PREFIX + "requests_deferred", "Sequences waiting for a slot", registry=r).set_function(
            lambda: len(engine.waiting))
        Gauge(PREFIX + "kv_cache_usage_ratio", "Share of the KV blocks in use", registry=r).set_function(
            lambda: engine.cache.n_used / max(engine.cache.n_blocks, 1))
        r.register(PrefixCacheCounters(engine))
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "From a request's arrival to a choice's "
                              "first token", buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds", "Between a choice's successive tokens",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram(PREFIX + "request_latency_seconds", "From a request's arrival to its last "
                                 "choice's end", buckets=LATENCY_BUCKETS, registry=r)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def timer(self, arrived: float, n_choices: int, n_prompt: int) -> Timer:
        """What a request's handler records as its choices' events arrive (arrived: its time.perf_counter())."""
        self.prompt_tokens.inc(n_prompt)
        return Timer(self, arrived, n_choices)


class Timer:
    """One request's timing: since its arrival, each choice's last token; observed as events arrive."""

    def __init__(self, metrics: Metrics, arrived: float, n_choices: int) -> None:
        self.metrics, self.start, self.open = metrics, arrived, n_choices
        self.last: list[float | None] = [None] * n_choices

    def event(self, index: int, event: Event) -> None:
        now = time.perf_counter()
        if event.token is not None:
            m, last = self.metrics, self.last[index]
            if last is None:
                m.ttft.observe(now - self.start)
            else:
                m.itl.observe(now - last)
            m.tokens_predicted.inc()
            self.last[index] = now
        if event.finish_reason:
            self.metrics.requests.labels(event.finish_reason).inc()
            self.open -= 1
            if not self.open:
                self.metrics.latency.observe(now - self.start)
