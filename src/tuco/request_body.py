"""The OpenAI-style request bodies ``tuco serve`` takes, checked field by field.

``parse(body, kind)`` turns a decoded JSON body of ``/v1/chat/completions`` (kind "chat") or
``/v1/completions`` (kind "completion") into a ``Parsed`` request, or raises ``BadRequest`` naming
the field and what it takes, which the server answers as an OpenAI error object with status 400.
Fields outside the OpenAI API the server understands are refused, not ignored, except ``alpha``
(FTC-alpha of this request) and ``top_k``; OpenAI fields it cannot honour are refused unless they
hold their default (``n`` 1, penalties 0, no logprobs).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, cast

from .inputs import chat_problem

COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options"}
COMMON |= {"n", "user", "alpha", "presence_penalty", "frequency_penalty", "logprobs"}
FIELDS = {"chat": COMMON | {"messages", "max_completion_tokens"}, "completion": COMMON | {"prompt", "echo"}}
DEFAULT_MAX_TOKENS = {"chat": 256, "completion": 16}  # OpenAI's legacy completions default is 16


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Parsed:
    prompt: Any  # a chat (list of messages) or a string
    max_tokens: int | None  # None: the default, within the context
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    alpha: float = 1.0
    model: str | None = None
    extra: dict = field(default_factory=dict)


def _number(body: dict, name: str, default, low: float, high: float, *, integer=False, open_low=False):
    value = body.get(name)
    if value is None:
        return default
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise BadRequest(
            f"'{name}' must be {'an integer' if integer else 'a number'}, not {value!r:.40}", name
        )
    number = cast(float, value)  # an int or a float, checked above (not converted: large ints stay exact)
    if number < low or number > high or (open_low and number == low):
        bounds = f"{'above' if open_low else 'at least'} {low:g} and at most {high:g}"
        raise BadRequest(f"'{name}' must be {bounds}, not {value!r}", name)
    return int(number) if integer else float(number)


def _chat(messages) -> list[dict]:
    if not isinstance(messages, list):
        raise BadRequest(f"'messages' must be a list of messages, not {type(messages).__name__}", "messages")
    chat = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # content parts: only text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise BadRequest(f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if isinstance(m, dict) and content is not None:
            m = {"role": m.get("role"), "content": content}
        if (problem := chat_problem([m])) is not None:
            raise BadRequest(f"messages: {problem.replace('message 0', f'message {i}')}", "messages")
        if m["role"] not in ("system", "user", "assistant", "developer"):
            raise BadRequest(
                f"messages[{i}].role: {m['role']!r} is not system, user or assistant", "messages"
            )
        chat.append({"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]})
    if not chat:
        raise BadRequest("'messages' is empty: give at least one message", "messages")
    if not any(m["content"].strip() for m in chat):
        raise BadRequest("'messages' holds no text", "messages")
    return chat


def parse(body: Any, kind: str) -> Parsed:
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - FIELDS[kind])
    if unknown:
        raise BadRequest(
            f"unknown field {unknown[0]!r}; this server takes {', '.join(sorted(FIELDS[kind]))}", unknown[0]
        )
    if kind == "chat":
        if "messages" not in body:
            raise BadRequest("'messages' is required", "messages")
        prompt: Any = _chat(body["messages"])
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRequest("'prompt' must be one non-empty string", "prompt")
        if body.get("echo"):
            raise BadRequest("'echo' is not supported", "echo")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"'model' must be a string, not {type(model).__name__}", "model")
    for name, default in (("n", 1), ("presence_penalty", 0), ("frequency_penalty", 0), ("logprobs", None)):
        if body.get(name) not in (default, None, False if name == "logprobs" else default):
            raise BadRequest(f"'{name}' is not supported (only {default!r})", name)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (
        isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop)
    ):
        raise BadRequest("'stop' must be a non-empty string or a list of up to 4 of them", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise BadRequest(f"'stream' must be true or false, not {stream!r:.40}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not set(options) <= {"include_usage"}:
        raise BadRequest("'stream_options' takes {\"include_usage\": true|false} only", "stream_options")
    return Parsed(
        prompt=prompt,
        max_tokens=_number(body, name, None, 1, 1e9, integer=True),
        temperature=_number(body, "temperature", 1.0, 0, 2),
        top_p=_number(body, "top_p", 1.0, 0, 1, open_low=True),
        top_k=_number(body, "top_k", 0, 0, 1e9, integer=True),
        seed=_number(body, "seed", None, 0, 2**63 - 1, integer=True),
        stop=tuple(stop or ()),
        stream=bool(stream),
        include_usage=bool(options.get("include_usage")),
        alpha=_number(body, "alpha", 1.0, -1e6, 1e6),
        model=model,
    )
