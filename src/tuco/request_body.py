"""The OpenAI-style request bodies ``tuco serve`` takes, checked field by field.

``parse(body, kind)`` turns a decoded JSON body of ``/v1/chat/completions`` (kind "chat") or
``/v1/completions`` (kind "completion") into a ``Parsed`` request, or raises ``BadRequest`` naming
the field and what it takes, which the server answers as an OpenAI error object with status 400.
Fields outside the OpenAI API the server understands are refused, not ignored, except ``alpha``
(FTC-alpha of this request) and ``top_k``; OpenAI fields it cannot honour are refused unless they
hold a value that asks for nothing (``n`` 1, penalties 0, ``response_format`` text, ``tool_choice``
none, no tools, an empty ``logit_bias``). Numbers are checked against the domain the computation
needs, not only OpenAI's documented range (a temperature of 1e-300 would overflow the sampler).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, cast

from .inputs import chat_problem
from .sampling import MIN_TEMPERATURE

COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options"}
COMMON |= {"n", "user", "alpha", "presence_penalty", "frequency_penalty", "logprobs"}
COMMON |= {"guard_threshold", "guard_action"}  # this request's own guard settings (tuco's extras)
NO_OPS = {  # fields OpenAI clients send with a value that asks for nothing: accepted at that value only
    "response_format": ({"type": "text"},),
    "tool_choice": ("none",),
    "tools": ([],),
    "parallel_tool_calls": (True, False),
    "logit_bias": ({},),
    "store": (False,),
}
COMMON |= set(NO_OPS)
FIELDS = {
    "chat": COMMON | {"messages", "max_completion_tokens", "top_logprobs"},
    "completion": COMMON | {"prompt", "echo"},
}
DEFAULT_MAX_TOKENS = {"chat": 256, "completion": 16}  # OpenAI's legacy completions default is 16
MAX_TOP_LOGPROBS = 20
ALPHA_RANGE = 100.0  # |alpha| beyond this overflows the stream of real models (x + PTC + alpha * FTC)


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Parsed:
    prompts: list[Any]  # chats (lists of messages), strings or token-id lists: one choice each
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
    echo: bool = False  # completions: the prompt's text (and logprobs) before the answer
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the k most likely
    guard_threshold: float | None = None  # this request's own threshold (None: the server guard's)
    guard_action: str | None = None  # "flag" or "block" for this request (None: the server's)
    extra: dict = field(default_factory=dict)

    @property
    def prompt(self) -> Any:
        """The one prompt of a chat request (or the first of a completion's list)."""
        return self.prompts[0]


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


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false, not {value!r:.40}", name)
    return bool(value)


def _is_ids(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def _completion_prompts(prompt: Any) -> list[Any]:
    """A completion's prompts: a string, a list of strings, token ids, or a list of token-id lists."""
    if isinstance(prompt, str) or _is_ids(prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string, a list of them, or token ids", "prompt")
    for i, p in enumerate(prompt):
        if not (isinstance(p, str) and p.strip()) and not _is_ids(p):
            raise BadRequest(f"'prompt'[{i}] must be a non-empty string or a list of token ids", "prompt")
    return prompt


def decode_json(body: bytes) -> Any:
    """A request body's JSON, or ``BadRequest`` (bad JSON, bad UTF-8, nesting too deep)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"the body is not valid JSON: {str(e)[:200]}") from None


def parse(body: Any, kind: str) -> Parsed:
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - FIELDS[kind])
    if unknown:
        raise BadRequest(
            f"unknown field {unknown[0]!r}; this server takes {', '.join(sorted(FIELDS[kind]))}", unknown[0]
        )
    for name, values in NO_OPS.items():
        if body.get(name) is not None and body[name] not in values:
            allowed = " or ".join(json.dumps(v) for v in values)
            raise BadRequest(f"'{name}' is not supported here (only {allowed}, which ask for nothing)", name)
    echo, logprobs = False, None
    if kind == "chat":
        if "messages" not in body:
            raise BadRequest("'messages' is required", "messages")
        prompts: list[Any] = [_chat(body["messages"])]
        if _flag(body, "logprobs"):
            logprobs = _number(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, integer=True)
        elif body.get("top_logprobs") is not None:
            raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    else:
        prompts = _completion_prompts(body.get("prompt"))
        echo = _flag(body, "echo")
        logprobs = _number(body, "logprobs", None, 0, MAX_TOP_LOGPROBS, integer=True)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"'model' must be a string, not {type(model).__name__}", "model")
    if body.get("n") not in (None, 1):
        raise BadRequest("'n' is not supported (only 1): send one request per answer you want", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0):
            raise BadRequest(f"'{name}' is not supported (only 0)", name)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    fewest = 0 if echo else 1  # max_tokens 0 with echo: the prompt's log-likelihood alone
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (
        isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop)
    ):
        raise BadRequest("'stop' must be a non-empty string or a list of up to 4 of them", "stop")
    stream = _flag(body, "stream")
    if stream and echo:
        raise BadRequest("'echo' is not supported with 'stream': ask without streaming", "echo")
    if stream and len(prompts) > 1:
        raise BadRequest("a streamed completion takes one prompt: send one request per prompt", "prompt")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not set(options) <= {"include_usage"}:
        raise BadRequest("'stream_options' takes {\"include_usage\": true|false} only", "stream_options")
    temperature = _number(body, "temperature", 1.0, 0, 2)
    if 0 < temperature < MIN_TEMPERATURE:  # logits / temperature must stay finite in float32
        raise BadRequest(
            f"'temperature' must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, not {temperature!r}",
            "temperature",
        )
    action = body.get("guard_action")
    if action is not None and action not in ("flag", "block"):
        raise BadRequest(f"'guard_action' must be flag or block, not {action!r:.40}", "guard_action")
    return Parsed(
        guard_threshold=_number(body, "guard_threshold", None, -1e9, 1e9),
        guard_action=action,
        prompts=prompts,
        max_tokens=_number(body, name, None, fewest, 1e9, integer=True),
        temperature=temperature,
        top_p=_number(body, "top_p", 1.0, 0, 1, open_low=True),
        top_k=_number(body, "top_k", 0, 0, 1e9, integer=True),
        seed=_number(body, "seed", None, 0, 2**63 - 1, integer=True),
        stop=tuple(stop or ()),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        alpha=_number(body, "alpha", 1.0, -ALPHA_RANGE, ALPHA_RANGE),
        model=model,
        echo=echo,
        logprobs=logprobs,
    )


@dataclass
class ScoreItem:
    """One item of ``POST /v1/tuco``: a prompt (a chat, text or token ids) and an optional response
    (text or token ids) whose tokens' TuCo is wanted."""

    prompt: Any
    response: str | list[int] | None = None


def parse_tuco(body: Any) -> tuple[list[ScoreItem], bool, float | None]:
    """``POST /v1/tuco``'s body: its items, whether per-layer norms are asked, a threshold of its own."""
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - {"model", "input", "layers", "guard_threshold", "user"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; /v1/tuco takes model, input, layers", unknown[0])
    raw = body.get("input")
    raw = [raw] if isinstance(raw, dict) else raw
    if not isinstance(raw, list) or not raw or len(raw) > 256:
        raise BadRequest("'input' must be an item or a list of 1 to 256 items", "input")
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not set(item) <= {"messages", "prompt", "response"}:
            raise BadRequest(f'input[{i}] must be {{"messages" or "prompt", "response"?}}', "input")
        if ("messages" in item) == ("prompt" in item):
            raise BadRequest(f"input[{i}] needs one of 'messages' and 'prompt'", "input")
        prompt = _chat(item["messages"]) if "messages" in item else item["prompt"]
        if "prompt" in item and not ((isinstance(prompt, str) and prompt.strip()) or _is_ids(prompt)):
            raise BadRequest(f"input[{i}].prompt must be a non-empty string or token ids", "input")
        response = item.get("response")
        if response is not None and not ((isinstance(response, str) and response) or _is_ids(response)):
            raise BadRequest(f"input[{i}].response must be a non-empty string or token ids", "input")
        items.append(ScoreItem(prompt, response))
    return items, _flag(body, "layers"), _number(body, "guard_threshold", None, -1e9, 1e9)


def parse_moderation(body: Any) -> list[str]:
    """``POST /v1/moderations``' inputs (OpenAI's schema: a string, a list of them, or text parts)."""
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - {"model", "input"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; /v1/moderations takes model and input", unknown[0])
    raw = body.get("input")
    raw = [raw] if isinstance(raw, str | dict) else raw
    if not isinstance(raw, list) or not raw or len(raw) > 256:
        raise BadRequest("'input' must be a string or a list of 1 to 256 strings", "input")
    texts = []
    for i, x in enumerate(raw):
        if isinstance(x, dict) and x.get("type") == "text":
            x = x.get("text")
        if not isinstance(x, str) or not x.strip():
            raise BadRequest(f"input[{i}] must be non-empty text (only text is moderated here)", "input")
        texts.append(x)
    return texts
