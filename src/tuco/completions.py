"""The request flow of ``tuco serve``'s completion routes: validate -> schedule -> stream or collect
-> respond, testable without a live server (``tuco.server`` only wires the routes to it)::

    >>> flow = Completions(pair, engine, ServeMetrics(engine), name="demo", guard=guard)
    >>> response = await flow.respond(await request.body(), "chat", request.is_disconnected)

``validate`` turns a body into token ids and a ``Sampling`` (or raises ``BadRequest`` naming the
field); the engine schedules it; a streamed request gets server-sent events, a collected one the
whole answer; every answer carries its ``tuco`` object, and every request is counted in
``/metrics`` by route and status.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .decoding import TokenEvent
from .engine import Engine, Overloaded, Submission
from .guard import Guard
from .pair import ModelPair
from .request_body import DEFAULT_MAX_TOKENS, BadRequest, Parsed, parse
from .sampling import Sampling

REFUSAL = "I can't help with that."
ROUTES = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
_TUCO_BUCKETS = [i / 20 for i in range(1, 20)]


class Blocked:
    """The guard stopped a request after its prefill (``--guard-action block``)."""

    def __init__(self, prompt_tuco: float):
        self.prompt_tuco = prompt_tuco


Item = TokenEvent | Blocked | BaseException  # what the engine hands a request's queue


def error_response(
    status: int, message: str, param: str | None = None, kind: str = "invalid_request_error", **headers: str
) -> JSONResponse:
    """An OpenAI error object."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers or None)


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
        Gauge("tuco_batches", "Batches decoded", registry=registry).set_function(lambda: engine.stats.batches)
        Gauge("tuco_tokens_per_second", "Tokens/s of the last batch", registry=registry).set_function(
            lambda: engine.stats.last_tokens_per_second
        )

    def finished(self, route: str, status: str, started: float | None = None) -> None:
        self.requests.labels(route, status).inc()
        if started is not None:
            self.latency.labels(route).observe(time.monotonic() - started)


class Shape:
    """OpenAI's response and chunk objects for one request."""

    def __init__(self, kind: str, meta: dict, prompt_tokens: int):
        self.kind, self.meta, self.prompt_tokens = kind, meta, prompt_tokens

    def usage(self, completion: int) -> dict:
        total = self.prompt_tokens + completion
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion, "total_tokens": total}

    def whole(self, text: str, finish: str, tuco: dict, completion: int) -> dict:
        choice: dict[str, Any]
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

    def chunk(
        self, text: str | None, finish: str | None = None, role: str | None = None, **extra: Any
    ) -> dict:
        choice: dict[str, Any]
        if self.kind == "chat":
            delta = ({} if role is None else {"role": role}) | ({} if text is None else {"content": text})
            choice, kind = {"index": 0, "delta": delta, "logprobs": None}, "chat.completion.chunk"
        else:
            choice, kind = {"index": 0, "text": text or "", "logprobs": None}, "text_completion"
        choice["finish_reason"] = finish
        return {**self.meta, "object": kind, "choices": [choice], **extra}


class Completions:
    """Both completion routes of one server: ``respond(body, kind, disconnected)``."""

    def __init__(
        self,
        pair: ModelPair,
        engine: Engine,
        metrics: ServeMetrics,
        *,
        name: str = "tuco",
        guard: Guard | None = None,
        guard_action: str = "flag",
        monitor: str = "tokens",
    ):
        self.pair, self.engine, self.metrics = pair, engine, metrics
        self.name, self.guard, self.guard_action, self.monitor = name, guard, guard_action, monitor

    # ------------------------------------------------------------------ validate
    def validate(self, body: bytes, kind: str) -> tuple[Parsed, list[int], Sampling]:
        """The request, its prompt ids and its sampling settings; ``ValueError`` (``BadRequest``
        naming its field, or ``Sampling``'s own checks) for a body the server refuses."""
        try:
            decoded = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the body is not valid JSON: {e}") from None
        parsed = parse(decoded, kind)
        ids, budget = self.token_ids(parsed)
        sampling = Sampling(
            max_new_tokens=budget,
            temperature=parsed.temperature,
            top_p=parsed.top_p,
            top_k=parsed.top_k,
            seed=parsed.seed,
            stop=parsed.stop,
        )
        return parsed, ids, sampling

    def token_ids(self, parsed: Parsed) -> tuple[list[int], int]:
        """The prompt's ids and the token budget (``max_tokens``, else the route's default within the
        context), or ``BadRequest`` naming the field."""
        field = "messages" if isinstance(parsed.prompt, list) else "prompt"
        try:
            ids = self.pair.encode([parsed.prompt])[0]
        except Exception as e:  # bad text, or the chat template refuses the messages (jinja's errors)
            raise BadRequest(f"cannot format the {field}: {e}", field) from None
        context, room = self.pair.context_length, self.pair.room(len(ids))
        if room is not None and room < 1:
            raise BadRequest(
                f"the prompt has {len(ids)} tokens; the model's context is {context}: shorten it", field
            )
        default = DEFAULT_MAX_TOKENS["chat" if field == "messages" else "completion"]
        wanted = parsed.max_tokens or min(default, room or 2**31)
        if room is not None and wanted > room:
            raise BadRequest(
                f"max_tokens {wanted} + the prompt's {len(ids)} tokens is more than the model's context of "
                f"{context}: ask for at most {room}",
                "max_tokens",
            )
        self.pair.check_prompts([ids], wanted)
        return ids, wanted

    def summary(self, prompt_tuco: float | None, tokens: list[float | None]) -> dict:
        """The ``tuco`` object of a whole answer."""
        guard = self.guard
        values = [t for t in tokens if t is not None]
        return {
            "prompt": prompt_tuco,
            "tokens": values if self.monitor == "tokens" else None,
            "min": min(values) if values else None,
            "mean": sum(values) / len(values) if values else None,
            "flagged": guard is not None and prompt_tuco is not None and guard.flags(prompt_tuco),
            "threshold": guard.threshold if guard is not None else None,
        }

    # ------------------------------------------------------------------ schedule
    def schedule(self, ids: list[int], sampling: Sampling, alpha: float) -> tuple[Submission, asyncio.Queue]:
        """Submit to the engine (``Overloaded`` when full); the request's items arrive on the queue."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue[Item]()
        metrics, guard = self.metrics, self.guard

        def deliver(item: Item) -> None:  # from the engine's thread; every generated token is counted here
            if isinstance(item, TokenEvent):
                metrics.tokens.inc()
                if item.tuco is not None:
                    metrics.token.observe(item.tuco)
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def on_first(event: TokenEvent) -> bool:
            assert event.prompt_tuco is not None
            metrics.prompt.observe(event.prompt_tuco)
            if guard is not None and guard.flags(event.prompt_tuco):
                metrics.flagged.inc()
                if self.guard_action == "block":
                    deliver(Blocked(event.prompt_tuco))
                    return True
            return False

        return self.engine.submit(ids, sampling, alpha=alpha, deliver=deliver, on_first=on_first), queue

    # ------------------------------------------------------------------ respond
    async def respond(self, body: bytes, kind: str, disconnected: Callable[[], Awaitable[bool]]) -> Response:
        """The whole flow for one request body of route ``kind`` ("chat" or "completion")."""
        route, started = ROUTES[kind], time.monotonic()
        try:
            parsed, ids, sampling = self.validate(body, kind)
        except ValueError as e:
            self.metrics.finished(route, "400")
            return error_response(400, str(e), getattr(e, "param", None))
        try:
            submission, queue = self.schedule(ids, sampling, parsed.alpha)
        except Overloaded as e:
            self.metrics.finished(route, "503")
            message = f"the server is busy: {e}; retry shortly"
            return error_response(503, message, kind="server_busy", **{"Retry-After": "1"})
        meta = {
            "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": parsed.model or self.name,
        }
        shape = Shape(kind, meta, len(ids))
        if parsed.stream:
            events = self.events_as_sse(queue, submission, shape, parsed.include_usage)
            return StreamingResponse(self.timed(events, route, started), media_type="text/event-stream")
        result = await collect(queue, submission, disconnected)
        if isinstance(result, BaseException):
            self.metrics.finished(route, "500")
            return error_response(500, f"generation failed: {result}", kind="server_error")
        if result is None:  # the client went away
            return Response(status_code=499)
        text, finish, prompt_tuco, tucos = result
        self.metrics.finished(route, "200", started)
        return JSONResponse(shape.whole(text, finish, self.summary(prompt_tuco, tucos), len(tucos)))

    async def events_as_sse(
        self, queue: asyncio.Queue, submission: Submission, shape: Shape, include_usage: bool
    ) -> AsyncIterator[str]:
        """The server-sent events of one streamed request; a client that leaves cancels its row."""
        tucos: list[float | None] = []
        prompt_tuco = None
        try:
            if shape.kind == "chat":
                yield _sse(shape.chunk("", role="assistant"))
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    yield _sse({"error": {"message": f"generation failed: {item}", "type": "server_error"}})
                    break
                if isinstance(item, Blocked):
                    prompt_tuco = item.prompt_tuco
                    yield _sse(shape.chunk(REFUSAL, tuco={"prompt": prompt_tuco}))
                    yield _sse(shape.chunk(None, "content_filter", tuco=self.summary(prompt_tuco, [])))
                    break
                tucos.append(item.tuco)
                token: dict[str, Any] = {"token": item.tuco}
                if item.prompt_tuco is not None:
                    prompt_tuco = token["prompt"] = item.prompt_tuco
                yield _sse(shape.chunk(item.text, tuco=token))
                if item.finish_reason is not None:
                    yield _sse(shape.chunk(None, item.finish_reason, tuco=self.summary(prompt_tuco, tucos)))
                    break
            if include_usage:
                usage = {**shape.meta, "object": shape.chunk("")["object"], "choices": []}
                yield _sse(usage | {"usage": shape.usage(len(tucos))})
            yield _sse("[DONE]")
        finally:
            submission.cancel()  # finished already, or the client left: its slot is free either way

    async def timed(self, stream: AsyncIterator[str], route: str, started: float) -> AsyncIterator[str]:
        """A stream counted in ``/metrics`` when it ends: 200, or 499 if the client left."""
        status = "200"
        try:
            async for part in stream:
                yield part
        except asyncio.CancelledError:
            status = "499"
            raise
        finally:
            self.metrics.finished(route, status, started)


async def collect(
    queue: asyncio.Queue, submission: Submission, disconnected: Callable[[], Awaitable[bool]]
) -> tuple[str, str, float | None, list[float | None]] | BaseException | None:
    """(text, finish_reason, prompt TuCo, token TuCos), an exception, or None if the client left."""
    text, tucos, prompt_tuco = "", [], None
    while True:
        try:
            item = await asyncio.wait_for(queue.get(), timeout=0.5)
        except TimeoutError:
            if await disconnected():
                submission.cancel()
                return None
            continue
        if isinstance(item, BaseException):
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
