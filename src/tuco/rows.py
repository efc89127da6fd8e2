"""One prompt's decoding state and the events it yields: what ``tuco.batcher`` and ``tuco.decoding`` share.

>>> row = Row(7, ids, Sampling(max_new_tokens=20), 1.0, tokenizer, eos={2}, device=device)
>>> token = row.choose(logits, greedy)        # its own sampling, its own seeded generator
>>> text, finish = row.add(token)              # the text to send, "stop" / "length" / None
>>> events, next_ids = choose(rows, logits, tucos, prompt_tucos, cancelled)   # a batch's step
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import Alpha
from .sampling import Sampling

MONITORS = ("tokens", "prompt")


@dataclass
class TokenEvent:
    """One generated token of prompt ``index``: the text it adds (may be "" while a character or a
    possible stop string is incomplete), its TuCo (None with ``monitor="prompt"``); the prompt's
    TuCo on its first token, the ``finish_reason`` ("stop" or "length") on its last."""

    index: int
    token_id: int
    text: str
    tuco: float | None
    prompt_tuco: float | None = None
    finish_reason: str | None = None
    logprob: float | None = None  # with Sampling.logprobs: the token's log-probability
    top_logprobs: list[tuple[int, float]] | None = None  # ... and the most likely tokens' (id, logprob)
    error: str | None = None  # this row failed (finish_reason "error"); the batch goes on
    overflow: bool = False  # ... because its logits are not finite (its own alpha, too far from 1)


@dataclass
class PromptTuco:
    """The TuCo of prompt ``index``, after its first token: for a row added with
    ``prompt_first=False`` (``tuco.batcher``), whose first token was sent before it was known."""

    index: int
    prompt_tuco: float | None


class Row:
    """One prompt being decoded: its key (``TokenEvent.index``), prompt, settings and alpha, the
    tokens chosen and the text sent so far, its own random generator."""

    def __init__(
        self,
        index: int,
        ids: list[int],
        sampling: Sampling,
        alpha: Alpha,
        tokenizer: Any,
        eos: set[int],
        device: torch.device,
        prompt_first: bool = True,
    ):
        self.index, self.ids, self.sampling, self.alpha = index, ids, sampling, alpha
        self.prompt_first = prompt_first  # its prompt's TuCo with its first token (else: a PromptTuco after)
        self.tokenizer, self.eos = tokenizer, eos
        self.token_ids: list[int] = []
        self.done = False
        self.text = ""  # sent so far: the concatenated events' text
        self.generator = sampling.generator(device)

    def choose(self, logits: torch.Tensor, greedy: int) -> int:
        return self.sampling.next_token(logits, greedy, self.generator)

    def add(self, token_id: int) -> tuple[str, str | None]:
        """Append a token: (the new text to send, the finish reason or None)."""
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        finish = "stop" if token_id in self.eos else None
        stops = self.sampling.stop
        cuts = [i for i in (text.find(s, max(0, len(self.text) - len(s))) for s in stops) if i >= 0]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        elif finish is None and len(self.token_ids) >= self.sampling.max_new_tokens:
            finish = "length"
        if finish is None:  # hold back a half-decoded character and a possible start of a stop string
            text = text.rstrip("\ufffd")
            held = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            text = text[: len(text) - held]
        new = text[len(self.text) :] if text.startswith(self.text) and len(text) > len(self.text) else ""
        self.text += new
        return new, finish


def choose(
    rows: list[Row],
    logits: torch.Tensor,
    tucos: list | None,
    prompt_tucos: list | None,
    cancelled: Callable[[int], bool],
) -> tuple[list[TokenEvent], list[int]]:
    """Each row's next token from ``logits`` [b, vocab]: its event (or its error: that row ends
    alone), and the ids the batch feeds next (finished and cancelled rows: their greedy token)."""
    greedy = logits.argmax(-1).tolist()
    # a NaN or an infinity anywhere in a row makes its sum one: one cheap pass over [b, vocab]
    # (isfinite().all(): 28x as long at a 262k vocabulary); a sum that overflowed is checked again
    finite = torch.isfinite(logits.sum(-1)).tolist()
    finite = [ok or bool(torch.isfinite(logits[j]).all()) for j, ok in enumerate(finite)]
    wanted = [row.sampling.logprobs for row in rows]
    logp = torch.log_softmax(logits, -1) if any(k is not None for k in wanted) else None
    next_ids, events = list(greedy), []
    for j, row in enumerate(rows):
        if row.done or cancelled(row.index):
            row.done = True
            continue
        prompt_tuco = prompt_tucos[j] if prompt_tucos is not None else None
        try:
            if not finite[j]:
                raise FloatingPointError("the logits are not finite (alpha too far from 1 here?)")
            next_ids[j] = token = row.choose(logits[j], greedy[j])
            text, finish = row.add(token)
        except (RuntimeError, ValueError, FloatingPointError) as e:
            overflow = isinstance(e, FloatingPointError)
            events.append(
                TokenEvent(row.index, -1, "", None, prompt_tuco, "error", error=str(e), overflow=overflow)
            )
            row.done = True
            continue
        event = TokenEvent(
            row.index, token, text, tucos[j] if tucos is not None else None, prompt_tuco, finish
        )
        k = wanted[j]
        if logp is not None and k is not None:
            event.logprob = float(logp[j, token])
            top = torch.topk(logp[j], k)
            event.top_logprobs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        events.append(event)
        row.done = finish is not None
    return events, next_ids
