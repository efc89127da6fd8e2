"""TuCo for gateways: score traffic tuco did not generate, and answer as a moderation service.

    POST /v1/tuco          {"input": [{"messages": [...], "response": "..."}], "layers": false}
    POST /v1/moderations   {"input": "text" | ["text", ...]}        (OpenAI's moderation schema)

``/v1/tuco`` gives each item's ``prompt_tuco`` (what ``ModelPair.score`` gives for the prompt) and,
with a response, ``tokens`` and ``tokens_tuco``: what ``generate_with_tuco`` would have reported had
it generated those tokens, from one forward pass over prompt + response (no decoding). Both routes
flag with the server's guard (``flagged`` false without one, unless the request gives its own
``guard_threshold``); a TuCo that cannot be computed is flagged or passed by ``--guard-on-error``.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse, Response

from .engine import ClientLeft, Engine, Overloaded
from .guard import Guard, verdict
from .inputs import as_chat
from .openai_shapes import busy_response, error_response
from .pair import ModelPair
from .request_body import BadRequest, ScoreItem, decode_json, parse_moderation, parse_tuco
from .serve_metrics import ServeMetrics


def score_items(pair: ModelPair, items: list[ScoreItem], layers: bool) -> list[dict]:
    """Every item's prompt TuCo (and per-layer norms), and its response tokens' TuCo; ``ValueError``
    for a prompt or response the model cannot take."""
    tok = pair.tokenizer
    prompts = [pair.encode([item.prompt])[0] for item in items]
    responses = [
        None
        if item.response is None
        else list(item.response)
        if isinstance(item.response, list)
        else tok(item.response, add_special_tokens=False)["input_ids"]
        for item in items
    ]
    # one pass per item: prompt + response[:-1] with per-token TuCo (its value at the prompt's last
    # token is the prompt's TuCo); a prompt alone takes the last-token fast path
    joined = [p + r[:-1] if r is not None else p for p, r in zip(prompts, responses, strict=True)]
    pair.check_prompts(joined)
    alone = [i for i, r in enumerate(responses) if r is None]
    with_response = [i for i, r in enumerate(responses) if r is not None]
    results: list[Any] = [None] * len(items)
    for i, r in zip(alone, pair.score([joined[i] for i in alone]) if alone else [], strict=True):
        results[i] = r
    scored = (
        pair.score([joined[i] for i in with_response], per_token=True, fast=False) if with_response else []
    )
    for i, r in zip(with_response, scored, strict=True):
        results[i] = r
    out = []
    for ids, response, result in zip(prompts, responses, results, strict=True):
        entry: dict[str, Any] = {"prompt_tuco": result.tuco, "prompt_tokens": len(ids)}
        if response is not None:
            tucos = result.tuco_tokens
            entry["prompt_tuco"] = tucos[len(ids) - 1]
            entry |= {
                "tokens": [tok.decode([t]) for t in response],
                "tokens_tuco": tucos[len(ids) - 1 : len(ids) - 1 + len(response)],
            }
        if layers:  # the prompt's own last-token norms
            prompt_only = result if response is None else pair.score([ids])[0]
            entry |= {"ptc_layers": prompt_only.ptc_layers, "ftc_layers": prompt_only.ftc_layers}
        out.append(entry)
    return out


class Scoring:
    """``/v1/tuco`` and ``/v1/moderations`` of one server."""

    def __init__(
        self,
        pair: ModelPair,
        engine: Engine,
        metrics: ServeMetrics,
        *,
        name: str = "tuco",
        guard: Guard | None = None,
        guard_on_error: str = "open",
    ):
        self.pair, self.engine, self.metrics, self.name = pair, engine, metrics, name
        self.guard, self.guard_on_error = guard, guard_on_error

    def flagged(self, tuco: float | None, threshold: float | None) -> bool:
        flag = verdict(self.guard, tuco, threshold=threshold, on_error=self.guard_on_error)
        if flag:
            self.metrics.flagged.inc()
        return flag

    async def respond(self, body: bytes, route: str, disconnected: Callable[[], Awaitable[bool]]) -> Response:
        started = time.monotonic()
        try:
            decoded = decode_json(body)
            if route == "/v1/tuco":
                items, layers, threshold = parse_tuco(decoded)
            else:
                chats = self.pair.formats_chats
                texts = parse_moderation(decoded)
                items, layers, threshold = [ScoreItem(as_chat(t) if chats else t) for t in texts], False, None
            rows = await self.engine.call_async(lambda: score_items(self.pair, items, layers), disconnected)
        except (BadRequest, ValueError) as e:
            self.metrics.finished(route, "400")
            return error_response(400, str(e)[:500], getattr(e, "param", None) or "input")
        except Overloaded as e:
            self.metrics.finished(route, "503")
            return busy_response(e)
        except ClientLeft:
            self.metrics.finished(route, "499")
            return Response(status_code=499)
        for row in rows:  # a TuCo that could not be computed is null (and the guard's on_error decides)
            row["prompt_tuco"] = _finite(row["prompt_tuco"])
            if "tokens_tuco" in row:
                row["tokens_tuco"] = [_finite(t) for t in row["tokens_tuco"]]
            if row["prompt_tuco"] is not None:
                self.metrics.prompt.observe(row["prompt_tuco"])
        model = decoded.get("model") or self.name
        if route == "/v1/tuco":
            data = []
            for i, row in enumerate(rows):
                answer_flagged = self.guard is not None and self.guard.answer_flags(
                    row.get("tokens_tuco") or []
                )
                flagged = self.flagged(row["prompt_tuco"], threshold) or answer_flagged
                data.append({"index": i, **row, "flagged": flagged, "answer_flagged": answer_flagged})
            answer = {"object": "list", "model": model, "data": data}
        else:
            answer = {
                "id": f"modr-{uuid.uuid4().hex[:24]}",
                "model": model,
                "results": [self.moderation(r) for r in rows],
            }
        self.metrics.finished(route, "200", started)
        return JSONResponse(answer)

    def moderation(self, row: dict) -> dict:
        tuco = row["prompt_tuco"]
        flag = self.flagged(tuco, None)
        guard = self.guard
        return {
            "flagged": flag,
            "categories": {"tuco": flag},
            "category_scores": {"tuco": tuco},
            "category_applied_input_types": {"tuco": ["text"]},
            "tuco": {
                "prompt": tuco,
                "threshold": guard.threshold if guard is not None else None,
                "direction": guard.direction if guard is not None else None,
            },
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
