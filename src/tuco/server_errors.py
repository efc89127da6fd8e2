"""One error contract for ``tuco serve``: every status it answers carries an OpenAI error object,
and no exception text or traceback reaches a client (the log gets one line; the traceback too with
``--debug``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from .gate import BodyTooLarge
from .openai_shapes import error_response

log = logging.getLogger("tuco")
KINDS = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


def install(app: FastAPI, debug: bool = False) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        status = error.status_code
        message = {
            404: f"no route {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }
        text = message.get(status, str(error.detail))
        return error_response(status, text, kind=KINDS.get(status, "invalid_request_error"))

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, error: BodyTooLarge):
        return error_response(413, "the body is larger than this server takes (--max-body-bytes)")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return error_response(400, "the request does not match this route's parameters")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.error(
            "tuco serve: %s %s failed: %s",
            request.method,
            request.url.path,
            type(error).__name__,
            exc_info=debug,
        )
        return error_response(500, "the server failed on this request; retry it", kind="server_error")
