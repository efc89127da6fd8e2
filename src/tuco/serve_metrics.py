"""The Prometheus metrics of ``tuco serve`` (``GET /metrics``): requests by route and status, latency,
tokens, the TuCo of prompts and tokens, guard flags, and the engine's load."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .engine import Engine

_TUCO_BUCKETS = [i / 20 for i in range(1, 20)]


class ServeMetrics:
    """The Prometheus metrics of one server: requests, latency, tokens, TuCo histograms, guard flags."""

    def __init__(self, engine: Engine):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "tuco_requests", "Requests by route and status", ["route", "status"], registry=registry
        )
        self.latency = Histogram(
            "tuco_request_latency_seconds", "Request latency", ["route"], registry=registry
        )
        self.tokens = Counter("tuco_generated_tokens", "Tokens generated", registry=registry)
        self.prompt = Histogram(
            "tuco_prompt_tuco", "TuCo of each prompt", buckets=_TUCO_BUCKETS, registry=registry
        )
        self.token = Histogram(
            "tuco_token_tuco", "TuCo of each generated token", buckets=_TUCO_BUCKETS, registry=registry
        )
        self.flagged = Counter("tuco_flagged", "Prompts the guard flagged", registry=registry)
        Gauge("tuco_load", "Requests waiting or running", registry=registry).set_function(lambda: engine.load)
        stats = engine.stats
        Gauge("tuco_steps", "Decoding steps run", registry=registry).set_function(lambda: stats.steps)
        running = Gauge("tuco_running_rows", "Requests decoding now", registry=registry)
        running.set_function(lambda: stats.rows)
        Gauge("tuco_peak_rows", "The most requests decoded in one step", registry=registry).set_function(
            lambda: stats.peak_rows
        )
        Gauge("tuco_tokens_per_second", "Tokens/s of the last step", registry=registry).set_function(
            lambda: stats.last_tokens_per_second
        )

    def finished(self, route: str, status: str, started: float | None = None) -> None:
        self.requests.labels(route, status).inc()
        if started is not None:
            self.latency.labels(route).observe(time.monotonic() - started)
