"""``tuco serve``: an OpenAI-compatible server whose every answer carries its TuCo.

    >>> app = create_app(pair, name="demo", guard=Guard.load("guard.json"))    # a plain ASGI app
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: ``POST /v1/chat/completions`` and ``/v1/completions`` (OpenAI's bodies, streaming too, plus
``alpha``), ``GET /v1/models``, ``/health``, ``/metrics`` (Prometheus) and ``/`` (a chat page that
colours each token by its TuCo). Every response has a ``tuco`` object: ``prompt`` (the prompt's
TuCo), ``tokens`` (one per generated token), ``min``/``mean`` of them, ``flagged`` and ``threshold``
(the guard's). Streamed chunks carry ``tuco: {"token": ...}`` (the first also ``prompt``), the last
one the whole object. Bad bodies get an OpenAI error object with status 400; a full queue, 503 with
Retry-After. Requests are batched by ``tuco.engine``; a request's flow (checks, scheduling, streaming
or collecting, the response) is ``tuco.completions``; one pair per process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import __version__, schemas
from . import server_errors as errors
from .completions import REFUSAL, Completions
from .engine import Engine
from .gate import Gate
from .guard import Guard
from .guard_api import Scoring
from .openai_shapes import error_response
from .pair import ModelPair
from .serve_metrics import ServeMetrics

__all__ = ["REFUSAL", "create_app"]
log = logging.getLogger("tuco")


POSTS = {  # path -> (schema, what answers it)
    "/v1/chat/completions": ("chat", "flow"),
    "/v1/completions": ("completion", "flow"),
    "/v1/tuco": ("tuco", "scoring"),
    "/v1/moderations": ("moderation", "scoring"),
}


def create_app(
    pair: ModelPair,
    *,
    name: str = "tuco",
    guard: Guard | None = None,
    guard_action: str = "flag",
    monitor: str = "tokens",
    max_batch: int = 32,
    max_queue: int | None = None,
    window: float = 0.02,
    max_batch_tokens: int = 65536,
    prefill_tokens: int = 2048,
    first_token: str = "ride",
    api_keys: Sequence[str] = (),
    loopback: bool = True,
    max_body_bytes: int = 4 << 20,
    metrics_open: bool = False,
    debug: bool = False,
    guard_on_error: str = "open",
) -> FastAPI:
    """The ASGI app serving ``pair`` under the model name ``name``. In float32 a request's tokens and
    TuCo do not depend on the requests batched with it; in another dtype they may (a warning says
    so), and a guard must have been calibrated in the pair's dtype. ``api_keys``, ``loopback``,
    ``max_body_bytes``, ``metrics_open``: ``tuco.gate``; ``max_batch``, ``max_batch_tokens``,
    ``prefill_tokens``, ``window``, ``first_token``: ``tuco.engine``; ``debug``: tracebacks in the log;
    ``guard_on_error``: "open" passes, "closed" flags a prompt whose TuCo cannot be computed."""
    _check_dtype(pair, guard)
    engine = Engine(
        pair,
        monitor=monitor,
        max_batch=max_batch,
        window=window,
        max_queue=max_queue or 8 * max_batch,
        max_batch_tokens=max_batch_tokens,
        prefill_tokens=prefill_tokens,
        first_token=first_token,
    )
    metrics = ServeMetrics(engine)
    shared = dict(name=name, guard=guard, guard_on_error=guard_on_error)
    flow = Completions(pair, engine, metrics, guard_action=guard_action, monitor=monitor, **shared)  # type: ignore[arg-type]
    scoring = Scoring(pair, engine, metrics, **shared)  # type: ignore[arg-type]

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="tuco serve", lifespan=lifespan, docs_url=None, redoc_url=None, version=__version__)
    app.state.engine, app.state.metrics = engine, metrics

    def post(path: str, kind: str, answerer: str):
        async def endpoint(request: Request) -> Response:
            request.state.counted = True  # the flow counts it, 499s of streams included
            body = await request.body()
            if answerer == "flow":
                return await flow.respond(body, kind, request.is_disconnected)
            return await scoring.respond(body, path, request.is_disconnected)

        app.add_api_route(path, endpoint, methods=["POST"], openapi_extra=schemas.operation(kind), name=kind)

    for path, (kind, answerer) in POSTS.items():
        post(path, kind, answerer)

    _info_routes(app, name, engine, metrics, monitor, guard)
    errors.install(app, debug)
    routes = {*POSTS, "/v1/models", "/health", "/metrics", "/"}
    gate = dict(
        api_keys=api_keys, loopback=loopback, max_body_bytes=max_body_bytes, metrics_open=metrics_open
    )
    app.add_middleware(Gate, metrics=metrics, routes=routes, **gate)  # type: ignore[arg-type]
    return app


def _check_dtype(pair: ModelPair, guard: Guard | None) -> None:
    if pair.dtype_name != "float32":
        log.warning(
            "tuco serve: %s: a request's tokens and TuCo may change with the requests batched beside it "
            "(float32 keeps them independent of the batch: --dtype float32)",
            pair.dtype_name,
        )
    if guard is not None:
        guard.check_dtype(pair.dtype_name)


def _info_routes(app: FastAPI, name: str, engine: Engine, metrics: ServeMetrics, monitor: str, guard) -> None:
    """The GET routes: models, health, metrics, the page."""
    card = {"id": name, "object": "model", "created": int(time.time()), "owned_by": "tuco"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id == name:
            return card
        return error_response(
            404, f"no model {model_id!r}: this server has {name!r}", "model", "not_found_error"
        )

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": name,
            "load": engine.load,
            "waiting": engine.waiting,
            "monitor": monitor,
        }

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        html = resources.files("tuco").joinpath("page.html").read_text(encoding="utf-8")
        return html.replace("{{model}}", name).replace("{{guard}}", "on" if guard is not None else "off")
