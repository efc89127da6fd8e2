"""JSON schemas of ``tuco serve``'s request and response bodies, for ``/openapi.json`` (clients that
read schemas, and fuzzers). They describe what ``tuco.request_body`` accepts; it stays the judge."""

from __future__ import annotations

from typing import Any

_NUMBER = {"type": "number"}
_TEXT_PART = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
_MESSAGE = {
    "type": "object",
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]},
    },
    "required": ["role", "content"],
}
_STOP = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4},
    ]
}
_COMMON: dict[str, Any] = {
    "model": {"type": "string"},
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"anyOf": [{"const": 0}, {"type": "number", "minimum": 0.001, "maximum": 2}]},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 0},
    "seed": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    "stop": _STOP,
    "stream": {"type": "boolean"},
    "stream_options": {
        "type": "object",
        "properties": {"include_usage": {"type": "boolean"}},
        "additionalProperties": False,
    },
    "n": {"const": 1},
    "user": {"type": "string"},
    "alpha": {"type": "number", "minimum": -100, "maximum": 100, "description": "FTC-alpha of this request"},
    "presence_penalty": {"const": 0},
    "frequency_penalty": {"const": 0},
    "response_format": {"const": {"type": "text"}},
    "tool_choice": {"const": "none"},
    "tools": {"type": "array", "maxItems": 0},
    "parallel_tool_calls": {"type": "boolean"},
    "logit_bias": {"type": "object", "maxProperties": 0},
    "store": {"const": False},
    "guard_threshold": {"type": "number", "description": "this request's own guard threshold"},
    "guard_action": {"enum": ["flag", "block"], "description": "this request's own guard action"},
}
_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
REQUESTS: dict[str, dict] = {
    "chat": {
        "type": "object",
        "properties": _COMMON
        | {
            "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "logprobs": {"type": "boolean"},
            "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
        },
        "required": ["messages"],
        "additionalProperties": False,
    },
    "completion": {
        "type": "object",
        "properties": _COMMON
        | {
            "prompt": {
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                    _IDS,
                    {"type": "array", "items": _IDS, "minItems": 1},
                ]
            },
            "echo": {"type": "boolean"},
            "logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
            "max_tokens": {"type": "integer", "minimum": 0},
        },
        "required": ["prompt"],
        "additionalProperties": False,
    },
}
_ITEM = {
    "type": "object",
    "properties": {
        "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
        "prompt": {"anyOf": [{"type": "string", "minLength": 1}, _IDS]},
        "response": {"anyOf": [{"type": "string", "minLength": 1}, _IDS]},
    },
    "additionalProperties": False,
}
REQUESTS["tuco"] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "input": {"anyOf": [_ITEM, {"type": "array", "items": _ITEM, "minItems": 1, "maxItems": 256}]},
        "layers": {"type": "boolean"},
        "guard_threshold": {"type": "number"},
    },
    "required": ["input"],
    "additionalProperties": False,
}
REQUESTS["moderation"] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "input": {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "minItems": 1,
                    "maxItems": 256,
                },
            ]
        },
    },
    "required": ["input"],
    "additionalProperties": False,
}
_TUCO = {
    "type": "object",
    "description": "TuCo of the prompt and of each generated token, and the guard's verdict",
    "properties": {
        "prompt": {"type": ["number", "null"]},
        "tokens": {"type": ["array", "null"], "items": {"type": ["number", "null"]}},
        "min": {"type": ["number", "null"]},
        "mean": {"type": ["number", "null"]},
        "flagged": {"type": "boolean"},
        "threshold": {"type": ["number", "null"]},
    },
}
_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {},
                "code": {},
            },
            "required": ["message", "type"],
        }
    },
    "required": ["error"],
}
_RESPONSE = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}},
        "usage": {"type": "object"},
        "tuco": _TUCO,
    },
    "required": ["id", "object", "choices", "tuco"],
}


def operation(kind: str) -> dict:
    """``openapi_extra`` of a POST route: its request body and its answers."""
    error = {"application/json": {"schema": _ERROR}}
    if kind in ("tuco", "moderation"):
        answer = {
            "type": "object",
            "properties": {"data" if kind == "tuco" else "results": {"type": "array"}},
        }
        return {
            "requestBody": {"required": True, "content": {"application/json": {"schema": REQUESTS[kind]}}},
            "responses": {
                "200": {"description": "the scores", "content": {"application/json": {"schema": answer}}},
                **{str(s): {"description": d, "content": error} for s, d in ERRORS.items()},
            },
        }
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": REQUESTS[kind]}}},
        "responses": {
            "200": {
                "description": "the completion (or, with stream, server-sent events of chunks)",
                "content": {
                    "application/json": {"schema": _RESPONSE},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            **{str(s): {"description": d, "content": error} for s, d in ERRORS.items()},
        },
    }


ERRORS = {
    400: "a field the server refuses (named in param)",
    401: "no or a wrong API key",
    413: "the body is too large",
    415: "the body is not application/json",
    499: "the client left",
    500: "this request failed",
    503: "the server is busy: retry after Retry-After",
}
