"""``tuco serve``: an OpenAI-compatible server whose every answer carries its TuCo.

    >>> app = create_app(pair, name="demo", guard=Guard.load("guard.json"))    # a plain ASGI app
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: ``POST /v1/chat/completions`` and ``/v1/completions`` (OpenAI's bodies, streaming too, plus
``alpha``), ``GET /v1/models``, ``/health``, ``/metrics`` (Prometheus) and ``/`` (a chat page that
colours each token by its TuCo). Every response has a ``tuco`` object: ``prompt`` (the prompt's
TuCo), ``tokens`` (one per generated token), ``min``/``mean`` of them, ``flagged`` and ``threshold``
(the guard's). Streamed chunks carry ``tuco: {"token": ...}`` (the first also ``prompt``), the last
one the whole object. Bad bodies get an OpenAI error object with status 400; a full queue, 503 with
Retry-After. Requests are batched by ``tuco.engine``; one pair per process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from . import inputs
from .engine import Engine, Overloaded
from .guard import Guard
from .monitor import Sampling, TokenEvent
from .request_body import DEFAULT_MAX_TOKENS, BadRequest, Parsed, parse

log = logging.getLogger("tuco")
REFUSAL = "I can't help with that."
_TUCO_BUCKETS = [i / 20 for i in range(1, 20)]


class Blocked:
    """The guard stopped a request after its prefill (``--guard-action block``)."""

    def __init__(self, prompt_tuco: float):
        self.prompt_tuco = prompt_tuco


def _error(
    status: int, message: str, param: str | None = None, kind: str = "invalid_request_error", **headers
):
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers or None)


class Metrics:
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
        Gauge("tuco_batches", "Batches decoded", registry=registry).set_function(lambda: engine.stats.batches)
        Gauge("tuco_tokens_per_second", "Tokens/s of the last batch", registry=registry).set_function(
            lambda: engine.stats.last_tokens_per_second
        )


def create_app(
    pair,
    *,
    name: str = "tuco",
    guard: Guard | None = None,
    guard_action: str = "flag",
    monitor: str = "tokens",
    max_batch: int = 8,
    max_queue: int | None = None,
    window: float = 0.02,
) -> FastAPI:
    """The ASGI app serving ``pair`` (a ``ModelPair``) under the model name ``name``. In float32 a
    request's tokens and TuCo do not depend on the requests batched with it; in another dtype they
    may (a warning says so), and a guard must have been calibrated in the pair's dtype."""
    if pair.dtype_name != "float32":
        log.warning(
            "tuco serve: %s: a request's tokens and TuCo may change with the requests batched beside it "
            "(float32 keeps them independent of the batch: --dtype float32)",
            pair.dtype_name,
        )
    if guard is not None:
        guard.check_dtype(pair.dtype_name)
    engine = Engine(
        pair, monitor=monitor, max_batch=max_batch, window=window, max_queue=max_queue or 8 * max_batch
    )
    metrics = Metrics(engine)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="tuco serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.metrics = engine, metrics

    def token_ids(parsed: Parsed) -> tuple[list[int], int]:
        """The prompt's ids and the token budget, or BadRequest naming the field."""
        field = "messages" if isinstance(parsed.prompt, list) else "prompt"
        try:
            ids = pair.encode([parsed.prompt])[0]
        except Exception as e:  # bad text, or the chat template refuses the messages (jinja's errors)
            raise BadRequest(f"cannot format the {field}: {e}", field) from None
        context = pair.context_length
        room = context - len(ids) if context is not None else None
        if room is not None and room < 1:
            raise BadRequest(
                f"the prompt has {len(ids)} tokens; the model's context is {context}: shorten it", field
            )
        wanted = parsed.max_tokens or min(
            DEFAULT_MAX_TOKENS["chat" if field == "messages" else "completion"], room or 2**31
        )
        if room is not None and wanted > room:
            raise BadRequest(
                f"max_tokens {wanted} + the prompt's {len(ids)} tokens is more than the model's context of "
                f"{context}: ask for at most {room}",
                "max_tokens",
            )
        inputs.check_ids([ids], pair.vocab_size, context, wanted)
        return ids, wanted

    def summary(prompt_tuco: float | None, tokens: list[float]) -> dict:
        flagged = guard is not None and prompt_tuco is not None and guard.flags(prompt_tuco)
        values = [t for t in tokens if t is not None]
        return {
            "prompt": prompt_tuco,
            "tokens": values if monitor == "tokens" else None,
            "min": min(values) if values else None,
            "mean": sum(values) / len(values) if values else None,
            "flagged": flagged,
            "threshold": guard.threshold if guard is not None else None,
        }

    async def complete(request: Request, kind: str):
        route = request.url.path
        started = time.monotonic()
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            metrics.requests.labels(route, "400").inc()
            return _error(400, f"the body is not valid JSON: {e}")
        try:
            parsed = parse(body, kind)
            ids, budget = token_ids(parsed)
            sampling = Sampling(
                max_new_tokens=budget,
                temperature=parsed.temperature,
                top_p=parsed.top_p,
                top_k=parsed.top_k,
                seed=parsed.seed,
                stop=parsed.stop,
            )
        except ValueError as e:  # BadRequest names its field; Sampling's own checks are ValueErrors too
            metrics.requests.labels(route, "400").inc()
            return _error(400, str(e), getattr(e, "param", None))
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def deliver(item) -> None:  # from the engine's thread; every generated token is counted here
            if isinstance(item, TokenEvent):
                metrics.tokens.inc()
                if item.tuco is not None:
                    metrics.token.observe(item.tuco)
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def on_first(event: TokenEvent) -> bool:
            metrics.prompt.observe(event.prompt_tuco)
            if guard is not None and guard.flags(event.prompt_tuco):
                metrics.flagged.inc()
                if guard_action == "block":
                    deliver(Blocked(event.prompt_tuco))
                    return True
            return False

        try:
            job = engine.submit(ids, sampling, alpha=parsed.alpha, deliver=deliver, on_first=on_first)
        except Overloaded as e:
            metrics.requests.labels(route, "503").inc()
            return _error(
                503, f"the server is busy: {e}; retry shortly", kind="server_busy", **{"Retry-After": "1"}
            )
        meta = {
            "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": parsed.model or name,
        }
        shape = Shape(kind, meta, len(ids))
        if parsed.stream:
            stream = events_as_sse(queue, job, shape, parsed.include_usage, summary)
            return StreamingResponse(
                finish_timing(stream, metrics, route, started), media_type="text/event-stream"
            )
        result = await collect(queue, job, request)
        if isinstance(result, Exception):
            metrics.requests.labels(route, "500").inc()
            return _error(500, f"generation failed: {result}", kind="server_error")
        if result is None:  # the client went away
            return Response(status_code=499)
        text, finish, prompt_tuco, tucos = result
        metrics.requests.labels(route, "200").inc()
        metrics.latency.labels(route).observe(time.monotonic() - started)
        return JSONResponse(shape.whole(text, finish, summary(prompt_tuco, tucos), len(tucos)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, "completion")

    @app.get("/v1/models")
    async def models():
        card = {"id": name, "object": "model", "created": created, "owned_by": "tuco"}
        return {"object": "list", "data": [card]}

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

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        return _error(500, f"{type(error).__name__}: {error}", kind="server_error")

    return app


class Shape:
    """OpenAI's response and chunk objects for one request."""

    def __init__(self, kind: str, meta: dict, prompt_tokens: int):
        self.kind, self.meta, self.prompt_tokens = kind, meta, prompt_tokens

    def usage(self, completion: int) -> dict:
        total = self.prompt_tokens + completion
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion, "total_tokens": total}

    def whole(self, text: str, finish: str, tuco: dict, completion: int) -> dict:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
            kind = "chat.completion"
        else:
            choice, kind = {"index": 0, "text": text, "logprobs": None}, "text_completion"
        choice["finish_reason"] = finish
        return {
            **self.meta,
            "object": kind,
            "choices": [choice],
            "usage": self.usage(completion),
            "tuco": tuco,
        }

    def chunk(self, text: str | None, finish: str | None = None, role: str | None = None, **extra) -> dict:
        if self.kind == "chat":
            delta = ({} if role is None else {"role": role}) | ({} if text is None else {"content": text})
            choice, kind = {"index": 0, "delta": delta, "logprobs": None}, "chat.completion.chunk"
        else:
            choice, kind = {"index": 0, "text": text or "", "logprobs": None}, "text_completion"
        choice["finish_reason"] = finish
        return {**self.meta, "object": kind, "choices": [choice], **extra}


async def collect(queue: asyncio.Queue, job, request: Request):
    """(text, finish_reason, prompt TuCo, token TuCos), an exception, or None if the client left."""
    text, tucos, prompt_tuco = "", [], None
    while True:
        try:
            item = await asyncio.wait_for(queue.get(), timeout=0.5)
        except TimeoutError:
            if await request.is_disconnected():
                job.cancel()
                return None
            continue
        if isinstance(item, Exception):
            return item
        if isinstance(item, Blocked):
            return REFUSAL, "content_filter", item.prompt_tuco, []
        text += item.text
        tucos.append(item.tuco)
        prompt_tuco = item.prompt_tuco if item.prompt_tuco is not None else prompt_tuco
        if item.finish_reason is not None:
            return text, item.finish_reason, prompt_tuco, tucos


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def events_as_sse(queue: asyncio.Queue, job, shape: Shape, include_usage: bool, summary):
    """The server-sent events of one streamed request; a client that leaves cancels its row."""
    tucos: list = []
    prompt_tuco = None
    try:
        if shape.kind == "chat":
            yield _sse(shape.chunk("", role="assistant"))
        while True:
            item = await queue.get()
            if isinstance(item, Exception):
                yield _sse({"error": {"message": f"generation failed: {item}", "type": "server_error"}})
                break
            if isinstance(item, Blocked):
                prompt_tuco = item.prompt_tuco
                yield _sse(shape.chunk(REFUSAL, tuco={"prompt": prompt_tuco}))
                yield _sse(shape.chunk(None, "content_filter", tuco=summary(prompt_tuco, [])))
                break
            tucos.append(item.tuco)
            token = {"token": item.tuco}
            if item.prompt_tuco is not None:
                prompt_tuco = token["prompt"] = item.prompt_tuco
            yield _sse(shape.chunk(item.text, tuco=token))
            if item.finish_reason is not None:
                yield _sse(shape.chunk(None, item.finish_reason, tuco=summary(prompt_tuco, tucos)))
                break
        if include_usage:
            yield _sse(
                {
                    **shape.meta,
                    "object": shape.chunk("")["object"],
                    "choices": [],
                    "usage": shape.usage(len(tucos)),
                }
            )
        yield _sse("[DONE]")
    finally:
        job.cancel()  # finished already, or the client left: its slot is free either way


async def finish_timing(stream, metrics: Metrics, route: str, started: float):
    status = "200"
    try:
        async for part in stream:
            yield part
    except asyncio.CancelledError:
        status = "499"
        raise
    finally:
        metrics.requests.labels(route, status).inc()
        metrics.latency.labels(route).observe(time.monotonic() - started)
