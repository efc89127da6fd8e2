"""What a request must pass before ``tuco serve`` reads it, as one plain ASGI middleware::

    >>> app = Gate(app, metrics, api_keys=["sk-..."], loopback=True, max_body_bytes=4 << 20)

In order: the ``Host`` header (with a loopback bind, only localhost / 127.0.0.1 / [::1] at any port:
a web page cannot reach the server by DNS rebinding), the API key (``Authorization: Bearer KEY`` on
every ``/v1`` route, and on ``/metrics`` unless ``metrics_open``; ``/health``, ``/openapi.json`` and
the page stay open), the content type (a POST body must be ``application/json``: a cross-origin
``text/plain`` form post, which browsers send without asking, is refused), and the body size (413
from ``Content-Length`` before anything is read, or as soon as a chunked body passes the limit).
Every refusal is an OpenAI error object, and every response the routes did not count themselves is
counted in ``/metrics`` by route and status.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .serve_metrics import ServeMetrics

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}


class BodyTooLarge(Exception):
    """A request body passed ``--max-body-bytes`` while it was read."""


def host_name(host: str) -> str:
    """The name of a Host header without its port: "127.0.0.1:8000" -> "127.0.0.1", "[::1]:80" -> "[::1]"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Gate:
    def __init__(
        self,
        app: ASGIApp,
        metrics: ServeMetrics,
        *,
        api_keys: Iterable[str] = (),
        loopback: bool = True,
        max_body_bytes: int = 4 << 20,
        metrics_open: bool = False,
        routes: Iterable[str] = (),
    ):
        self.app, self.metrics = app, metrics
        self.keys = [k.encode() for k in api_keys if k]
        self.loopback, self.max_body_bytes, self.metrics_open = loopback, max_body_bytes, metrics_open
        self.routes = set(routes)  # paths counted by their own name (others: "unmatched")

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, headers = scope["path"], _headers(scope)
        label = path if path in self.routes else "unmatched"
        refusal = self.refusal(scope, path, headers)
        if refusal is not None:
            status, message, kind, extra = refusal
            self.metrics.finished(label, str(status))
            await _send_error(send, status, message, kind, extra)
            return
        seen, answered = 0, [500]

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge
            return message

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                answered[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, counting_send)
        finally:
            if not scope.get("state", {}).get("counted"):
                self.metrics.finished(label, str(answered[0]))

    def refusal(self, scope: Scope, path: str, headers: dict[str, str]) -> tuple[int, str, str, dict] | None:
        """(status, message, type, headers) of a request refused at the gate, or None."""
        if self.loopback and host_name(headers.get("host", "")) not in LOOPBACK_NAMES:
            message = "this server answers to localhost only: the Host header names another host"
            return 400, message, "invalid_request_error", {}
        guarded = path.startswith("/v1") or (path == "/metrics" and not self.metrics_open)
        if self.keys and guarded:  # /health, /openapi.json and the page are never guarded
            given = headers.get("authorization", "")
            token = given[7:].strip().encode() if given[:7].lower() == "bearer " else b""
            if not any(hmac.compare_digest(token, key) for key in self.keys):
                what = "a wrong API key" if token else "no API key"
                message = f"{what}: send Authorization: Bearer KEY (tuco serve --api-key)"
                return 401, message, "authentication_error", {"www-authenticate": "Bearer"}
        if scope["method"] == "POST":
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "application/json":
                message = f"the body must be application/json, not {content_type or 'unnamed'}"
                return 415, message, "invalid_request_error", {}
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body_bytes:
                message = f"the body is {int(length)} bytes; this server takes at most {self.max_body_bytes}"
                return 413, message, "invalid_request_error", {}
        return None


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _send_error(send: Callable, status: int, message: str, kind: str, extra: dict) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
