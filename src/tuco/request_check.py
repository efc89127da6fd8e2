"""The checks a completion request passes before it is queued: its body parsed field by field
(``tuco.request_body``), each prompt tokenised (chat template, token ids) and fitted to the context,
its sampling settings built. ``validate`` tokenises, so the server runs it off the event loop.

    >>> parsed, choices = validate(pair, b'{"prompt": "Hi", "max_tokens": 5}', "completion")
    >>> choices[0].ids, choices[0].sampling.max_new_tokens
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .pair_base import PairBase
from .request_body import DEFAULT_MAX_TOKENS, BadRequest, Parsed, decode_json, parse
from .sampling import Sampling


@dataclass
class Choice:
    """One prompt of a request: its ids, how to decode it (None: nothing to generate, ``max_tokens``
    0 with ``echo``) and its text for ``echo``."""

    index: int
    ids: list[int]
    sampling: Sampling | None
    text: str


def validate(pair: PairBase, body: bytes, kind: str) -> tuple[Parsed, list[Choice]]:
    """The request and its choices (ids, sampling settings); ``ValueError`` (``BadRequest``
    naming its field, or ``Sampling``'s own checks) for a body the server refuses. It tokenises:
    the server runs it off the event loop."""
    parsed = parse(decode_json(body), kind)
    choices = []
    for index, prompt in enumerate(parsed.prompts):
        ids, budget = token_ids(pair, parsed, prompt)
        sampling = None
        if budget > 0:
            sampling = Sampling(
                max_new_tokens=budget,
                temperature=parsed.temperature,
                top_p=parsed.top_p,
                top_k=parsed.top_k,
                seed=parsed.seed,
                stop=parsed.stop,
                logprobs=parsed.logprobs,
            )
        text = prompt if isinstance(prompt, str) else ""
        choices.append(Choice(index, ids, sampling, text))
    return parsed, choices


def token_ids(pair: PairBase, parsed: Parsed, prompt: Any) -> tuple[list[int], int]:
    """A prompt's ids and its token budget (``max_tokens``, else the route's default within the
    context), or ``BadRequest`` naming the field."""
    field = "messages" if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict) else "prompt"
    try:
        ids = pair.encode([prompt])[0]
    except Exception as e:  # bad text, or the chat template refuses the messages (jinja's errors)
        raise BadRequest(f"cannot format the {field}: {str(e)[:300]}", field) from None
    context, room = pair.context_length, pair.room(len(ids))
    if room is not None and room < (0 if parsed.echo and parsed.max_tokens == 0 else 1):
        raise BadRequest(
            f"the prompt has {len(ids)} tokens; the model's context is {context}: shorten it", field
        )
    default = DEFAULT_MAX_TOKENS["chat" if field == "messages" else "completion"]
    wanted = parsed.max_tokens if parsed.max_tokens is not None else min(default, room or 2**31)
    if room is not None and wanted > room:
        raise BadRequest(
            f"max_tokens {wanted} + the prompt's {len(ids)} tokens is more than the model's context of "
            f"{context}: ask for at most {room}",
            "max_tokens",
        )
    try:
        pair.check_prompts([ids], wanted)
    except ValueError as e:
        raise BadRequest(str(e), field) from None
    return ids, wanted
