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
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from .engine import ClientLeft, Engine, Overloaded, RowError, Submission, TooLarge
from .guard import Guard, verdict
from .openai_shapes import Entry, Shape, busy_response, chat_logprobs, error_response, legacy_logprobs
from .pair import ModelPair
from .request_body import Parsed
from .request_check import Choice, validate
from .rows import PromptTuco, TokenEvent
from .sampling import Sampling
from .serve_metrics import ServeMetrics

log = logging.getLogger("tuco")
REFUSAL = "I can't help with that."
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ROUTES = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


class Blocked:
    """The guard stopped a request after its prefill (``--guard-action block``)."""

    def __init__(self, prompt_tuco: float | None):
        self.prompt_tuco = prompt_tuco


class Stopped:
    """The guard's answer rule stopped a request mid-generation (``--guard-action block``)."""


Item = TokenEvent | PromptTuco | Blocked | Stopped | BaseException  # what the engine hands a request's queue


@dataclass
class Answer:
    """What one choice produced."""

    text: str
    finish: str
    prompt_tuco: float | None
    events: list[TokenEvent]
    echo: list | None = None  # the prompt's token logprobs (``ModelPair.token_logprobs``)
    stopped: bool = False  # the guard's answer rule ended it

    @property
    def tucos(self) -> list[float | None]:
        return [e.tuco for e in self.events]


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
        guard_on_error: str = "open",
    ):
        self.pair, self.engine, self.metrics = pair, engine, metrics
        self.name, self.guard, self.guard_action, self.monitor = name, guard, guard_action, monitor
        self.guard_on_error = guard_on_error

    def validate(self, body: bytes, kind: str) -> tuple[Parsed, list[Choice]]:
        """The request and its choices, or ``ValueError`` naming the field (``tuco.request_check``)."""
        return validate(self.pair, body, kind)

    def summary(
        self,
        prompt_tuco: float | None,
        tokens: list[float | None],
        threshold: float | None = None,
        stopped: bool = False,
    ) -> dict:
        """The ``tuco`` object of a whole answer."""
        guard = self.guard
        values = [t for t in tokens if t is not None]
        answer_flagged = stopped or (guard is not None and guard.token_flags(tokens))
        return {
            "prompt": prompt_tuco,
            "tokens": values if self.monitor == "tokens" else None,
            "min": min(values) if values else None,
            "mean": sum(values) / len(values) if values else None,
            "flagged": verdict(guard, prompt_tuco, threshold=threshold, on_error=self.guard_on_error)
            or answer_flagged,
            "answer_flagged": answer_flagged,
            "threshold": threshold
            if threshold is not None
            else guard.threshold
            if guard is not None
            else None,
            "direction": guard.direction if guard is not None else "below" if threshold is not None else None,
        }

    # ------------------------------------------------------------------ schedule
    def schedule(
        self, ids: list[int], sampling: Sampling, alpha: float, parsed: Parsed | None = None
    ) -> tuple[Submission, asyncio.Queue]:
        """Submit to the engine (``Overloaded`` when full); the request's items arrive on the queue."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue[Item]()
        metrics, guard = self.metrics, self.guard

        def deliver(item: Item) -> None:  # from the engine's thread; every generated token is counted here
            if isinstance(item, TokenEvent):
                metrics.tokens.inc()
                if item.tuco is not None:
                    metrics.token.observe(item.tuco)
            loop.call_soon_threadsafe(queue.put_nowait, item)

        threshold = parsed.guard_threshold if parsed is not None else None
        action = (parsed.guard_action if parsed is not None else None) or self.guard_action

        def on_first(event: TokenEvent) -> bool:
            if event.prompt_tuco is not None:
                metrics.prompt.observe(event.prompt_tuco)
            if verdict(guard, event.prompt_tuco, threshold=threshold, on_error=self.guard_on_error):
                metrics.flagged.inc()
                if action == "block":
                    deliver(Blocked(event.prompt_tuco))
                    return True
            return False

        running: list[float | None] = []

        def on_token(event: TokenEvent) -> bool:  # the answer rule, token by token
            running.append(event.tuco)
            if guard is None or not guard.token_flags(running):
                return False
            if len(running) == guard.token_window:  # counted once, when the rule first fires
                metrics.flagged.inc()
            if action == "block":
                deliver(Stopped())
                return True
            return False

        # a stream nothing judges by its prompt's TuCo sends its first token without waiting for it
        streamed = parsed is not None and parsed.stream
        prompt_first = not streamed or guard is not None or threshold is not None
        submission = self.engine.submit(
            ids,
            sampling,
            alpha=alpha,
            deliver=deliver,
            on_first=on_first,
            on_token=on_token,
            prompt_first=prompt_first,
        )
        return submission, queue

    # ------------------------------------------------------------------ respond
    async def respond(self, body: bytes, kind: str, disconnected: Callable[[], Awaitable[bool]]) -> Response:
        """The whole flow for one request body of route ``kind`` ("chat" or "completion")."""
        route, started = ROUTES[kind], time.monotonic()
        try:
            parsed, choices = await asyncio.to_thread(self.validate, body, kind)
        except ValueError as e:
            self.metrics.finished(route, "400")
            return error_response(400, str(e), getattr(e, "param", None))
        meta = {
            "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": parsed.model or self.name,
        }
        shape = Shape(kind, meta, sum(len(c.ids) for c in choices))
        try:
            if parsed.stream:
                sampling = choices[0].sampling
                assert sampling is not None  # streams generate at least one token
                submission, queue = self.schedule(choices[0].ids, sampling, parsed.alpha, parsed)
                events = self.events_as_sse(queue, submission, shape, parsed)
                stream = self.timed(events, route, started)
                return StreamingResponse(stream, media_type="text/event-stream", headers=STREAM_HEADERS)
            answers = await asyncio.gather(*(self.answer(c, parsed, disconnected) for c in choices))
        except Overloaded as e:
            self.metrics.finished(route, "503")
            return busy_response(e)
        except TooLarge as e:
            self.metrics.finished(route, "400")
            return error_response(400, str(e), "max_tokens")
        except ClientLeft:
            self.metrics.finished(route, "499")
            return Response(status_code=499)
        except Exception as e:  # a row failed (RowError) or a call did: this request alone
            if isinstance(e, RowError) and e.overflow:  # the request's own alpha
                self.metrics.finished(route, "400")
                message = (
                    f"alpha {parsed.alpha:g} makes this model's logits overflow: ask for alpha closer to 1"
                )
                return error_response(400, message, "alpha")
            log.warning("tuco serve: a request failed: %s", e)
            self.metrics.finished(route, "500")
            return error_response(500, "generation failed for this request; retry it", kind="server_error")
        out = [
            self.choice_object(shape, c, a, parsed, len(choices) > 1)
            for c, a in zip(choices, answers, strict=True)
        ]
        self.metrics.finished(route, "200", started)
        completion = sum(len(a.events) for a in answers)
        return JSONResponse(
            shape.whole(
                out,
                completion,
                self.summary(
                    answers[0].prompt_tuco, answers[0].tucos, parsed.guard_threshold, answers[0].stopped
                ),
            )
        )

    async def answer(
        self, choice: Choice, parsed: Parsed, disconnected: Callable[[], Awaitable[bool]]
    ) -> Answer:
        """One choice: the prompt's logprobs under ``echo``, then its generation (if any)."""
        echo = None
        if parsed.echo and parsed.logprobs is not None:
            top, ids = parsed.logprobs, choice.ids
            echo = await self.engine.call_async(
                lambda: self.pair.token_logprobs([ids], parsed.alpha, top=top)[0], disconnected
            )
        if choice.sampling is None:
            return Answer("", "length", None, [], echo)
        submission, queue = self.schedule(choice.ids, choice.sampling, parsed.alpha, parsed)
        answer = await collect(queue, submission, disconnected)
        if isinstance(answer, BaseException):
            raise answer
        if answer is None:
            raise ClientLeft
        answer.echo = echo
        return answer

    def choice_object(
        self, shape: Shape, choice: Choice, answer: Answer, parsed: Parsed, own_tuco: bool
    ) -> dict:
        tok = self.pair.tokenizer
        text = (choice.text or tok.decode(choice.ids)) + answer.text if parsed.echo else answer.text
        logprobs = None
        if parsed.logprobs is not None:
            generated: list[Entry] = [(e.token_id, e.logprob, e.top_logprobs) for e in answer.events]
            if shape.kind == "chat":
                logprobs = chat_logprobs(tok, generated)
            else:
                prompt: list[Entry] = []
                if answer.echo is not None:
                    prompt = [
                        (t, None, None) if lp is None else (t, lp[0], lp[1])
                        for t, lp in zip(choice.ids, answer.echo, strict=True)
                    ]
                logprobs = legacy_logprobs(tok, prompt + generated)
        extra = (
            {"tuco": self.summary(answer.prompt_tuco, answer.tucos, parsed.guard_threshold, answer.stopped)}
            if own_tuco
            else {}
        )
        return shape.choice(choice.index, text, answer.finish, logprobs, **extra)

    async def events_as_sse(
        self, queue: asyncio.Queue, submission: Submission, shape: Shape, parsed: Parsed
    ) -> AsyncIterator[str]:
        """The server-sent events of one streamed request; a client that leaves cancels its row."""
        tucos: list[float | None] = []
        prompt_tuco, tok = None, self.pair.tokenizer
        try:
            if shape.kind == "chat":
                yield _sse(shape.chunk("", role="assistant"))
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    log.warning("tuco serve: a streamed request failed: %s", item)
                    error = {
                        "message": "generation failed for this request; retry it",
                        "type": "server_error",
                    }
                    yield _sse({"error": error})
                    break
                if isinstance(item, Stopped):
                    summary = self.summary(prompt_tuco, tucos, parsed.guard_threshold, stopped=True)
                    yield _sse(shape.chunk(None, "content_filter", tuco=summary))
                    break
                if isinstance(item, Blocked):
                    prompt_tuco = item.prompt_tuco
                    yield _sse(shape.chunk(REFUSAL, tuco={"prompt": prompt_tuco}))
                    yield _sse(
                        shape.chunk(
                            None, "content_filter", tuco=self.summary(prompt_tuco, [], parsed.guard_threshold)
                        )
                    )
                    break
                if isinstance(item, PromptTuco):  # after the first token: a chunk of its own
                    prompt_tuco = item.prompt_tuco
                    yield _sse(shape.chunk(None, tuco={"prompt": prompt_tuco}))
                    continue
                tucos.append(item.tuco)
                token: dict[str, Any] = {"token": item.tuco}
                if item.prompt_tuco is not None:
                    prompt_tuco = token["prompt"] = item.prompt_tuco
                logprobs = None
                if parsed.logprobs is not None:
                    entry: list[Entry] = [(item.token_id, item.logprob, item.top_logprobs)]
                    logprobs = (
                        chat_logprobs(tok, entry) if shape.kind == "chat" else legacy_logprobs(tok, entry)
                    )
                yield _sse(shape.chunk(item.text, tuco=token, logprobs=logprobs))
                if item.finish_reason is not None:
                    yield _sse(
                        shape.chunk(
                            None,
                            item.finish_reason,
                            tuco=self.summary(prompt_tuco, tucos, parsed.guard_threshold),
                        )
                    )
                    break
            if parsed.include_usage:
                usage = {**shape.meta, "object": shape.object, "choices": []}
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
) -> Answer | BaseException | None:
    """The whole answer, an exception, or None if the client left (noticed at the next token, or
    within a quarter second while none comes)."""
    text, prompt_tuco = "", None
    events: list[TokenEvent] = []
    checked = time.monotonic()
    while True:
        try:
            item = await asyncio.wait_for(queue.get(), timeout=0.25)
        except TimeoutError:
            item = None
        if item is None or time.monotonic() - checked > 0.1:
            checked = time.monotonic()
            if await disconnected():
                submission.cancel()
                return None
            if item is None:
                continue
        if isinstance(item, BaseException):
            return item
        if isinstance(item, Blocked):
            return Answer(REFUSAL, "content_filter", item.prompt_tuco, [])
        if isinstance(item, Stopped):
            return Answer(text, "content_filter", prompt_tuco, events, stopped=True)
        if isinstance(item, PromptTuco):  # (an engine that sent the first token before it)
            prompt_tuco = item.prompt_tuco
            continue
        text += item.text
        events.append(item)
        prompt_tuco = item.prompt_tuco if item.prompt_tuco is not None else prompt_tuco
        if item.finish_reason is not None:
            return Answer(text, item.finish_reason, prompt_tuco, events)


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
