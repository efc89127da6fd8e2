"""OpenAI's response objects for ``tuco serve``: completions and chunks, logprobs in the legacy and
the chat shape, error objects.

    >>> shape = Shape("completion", meta, prompt_tokens=12)
    >>> shape.whole([choice(0, "text", "length", tuco, logprobs=legacy_logprobs(tok, entries))], 5, tuco)

A logprob entry is ``(token_id, logprob, top)``: ``top`` a list of ``(token_id, logprob)``, and
``logprob``/``top`` None for the first prompt token under ``echo`` (nothing comes before it).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

Entry = tuple[int, float | None, list[tuple[int, float]] | None]


def error_response(
    status: int, message: str, param: str | None = None, kind: str = "invalid_request_error", **headers: str
) -> JSONResponse:
    """An OpenAI error object."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def busy_response(error: Exception) -> JSONResponse:
    """503 with Retry-After: the engine's queue is full (``tuco.engine.Overloaded``)."""
    return error_response(
        503, f"the server is busy: {error}; retry shortly", kind="server_busy", **{"Retry-After": "1"}
    )


def legacy_logprobs(tokenizer: Any, entries: list[Entry], offset: int = 0) -> dict:
    """``choices[i].logprobs`` of ``/v1/completions``: tokens, token_logprobs, top_logprobs (a dict
    token text -> logprob per position) and text_offset (characters from the start of the text)."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token_id, logprob, top in entries:
        text = tokenizer.decode([token_id])
        out["tokens"].append(text)
        out["token_logprobs"].append(logprob)
        out["top_logprobs"].append(None if top is None else {tokenizer.decode([i]): v for i, v in top})
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def chat_logprobs(tokenizer: Any, entries: list[Entry]) -> dict:
    """``choices[i].logprobs`` of ``/v1/chat/completions``: ``{"content": [{token, logprob, bytes,
    top_logprobs: [{token, logprob, bytes}]}]}``."""

    def one(token_id: int, logprob: float | None) -> dict:
        text = tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            one(token_id, logprob) | {"top_logprobs": [one(i, v) for i, v in top or []]}
            for token_id, logprob, top in entries
        ]
    }


class Shape:
    """OpenAI's response and chunk objects for one request."""

    def __init__(self, kind: str, meta: dict, prompt_tokens: int):
        self.kind, self.meta, self.prompt_tokens = kind, meta, prompt_tokens

    @property
    def object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    def usage(self, completion: int) -> dict:
        total = self.prompt_tokens + completion
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion, "total_tokens": total}

    def choice(self, index: int, text: str, finish: str, logprobs: dict | None = None, **extra: Any) -> dict:
        choice: dict[str, Any] = {"index": index}
        if self.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return choice | {"logprobs": logprobs, "finish_reason": finish, **extra}

    def whole(self, choices: list[dict], completion: int, tuco: dict) -> dict:
        kind = "chat.completion" if self.kind == "chat" else "text_completion"
        return {
            **self.meta,
            "object": kind,
            "choices": choices,
            "usage": self.usage(completion),
            "tuco": tuco,
        }

    def chunk(
        self,
        text: str | None,
        finish: str | None = None,
        role: str | None = None,
        logprobs: dict | None = None,
        **extra: Any,
    ) -> dict:
        choice: dict[str, Any]
        if self.kind == "chat":
            delta = ({} if role is None else {"role": role}) | ({} if text is None else {"content": text})
            choice = {"index": 0, "delta": delta, "logprobs": logprobs}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": logprobs}
        choice["finish_reason"] = finish
        return {**self.meta, "object": self.object, "choices": [choice], **extra}
