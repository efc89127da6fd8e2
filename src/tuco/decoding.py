"""Generation that reports TuCo as it goes: ``ModelPair.generate_with_tuco`` and ``stream_with_tuco``.

    >>> for event in pair.stream_with_tuco(["Hi!", "Tell me a joke."], max_new_tokens=20):
    ...     print(event.index, repr(event.text), event.tuco)
    >>> gen = pair.generate_with_tuco(["Tell me a joke."], temperature=0.7, seed=1)[0]
    >>> gen.text, gen.prompt_tuco, gen.tokens_tuco          # one TuCo per generated token

Decoding is the FTC-alpha model's own, one forward pass per token with KV caches (the PT blocks keep
their own), and TuCo is read off the pass that runs anyway, never from an extra one:

- the prompt's TuCo: the prefill's components at the last prompt token (what ``score`` gives);
- generated token k's TuCo: the components at the position that chose it. Token 1 was chosen at the
  prompt's last token (``tokens_tuco[0] == prompt_tuco``), token k at token k-1; without a cache,
  ``score(prompt + tokens[:-1], per_token=True)`` gives the same numbers at those positions.

``monitor="prompt"`` records the prefill only; at alpha = 1 its PT blocks run at the last position
only (``tuco.lastpos``) and decoding is the FT model alone, at plain generation's cost.

Each prompt has its own ``Sampling`` (greedy at temperature 0, else its own seeded generator) and
rows never mix, so a result does not depend on what else is in its batch; a finished row (end of
sequence, a stop string, its token budget, or ``cancelled``) leaves the batch and both caches at once.
The loop is ``tuco.batcher``'s continuous batching: ``decode`` adds every prompt at once, ``tuco
serve`` adds requests as they come.

Why a loop of tuco's own beside transformers' ``generate`` (which ``ModelPair.generate`` uses): TuCo
is read per token off each step, rows leave both caches as they finish, and each row samples from its
own seeded generator, none of which ``generate`` offers; ``generate`` keeps beam search and its other
options for plain generation. Both take their settings from ``tuco.sampling.Sampling``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .batcher import Batcher
from .errors import Alpha, check_alpha
from .pair_base import PairBase
from .rows import MONITORS, TokenEvent
from .sampling import Sampling

__all__ = ["MONITORS", "Generation", "TokenEvent", "decode", "generate", "stream"]


@dataclass
class Generation:
    """What ``generate_with_tuco`` returns for one prompt; ``tokens_tuco`` has one TuCo per entry of
    ``token_ids`` (None with ``monitor="prompt"``)."""

    text: str
    token_ids: list[int]
    prompt_tuco: float
    tokens_tuco: list[float] | None
    finish_reason: str
    prompt_tokens: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def decode(
    pair: PairBase,
    ids: list[list[int]],
    samplings: Sequence[Sampling],
    *,
    alpha: Alpha = 1.0,
    monitor: str = "tokens",
    norm: str = "l1",
    cancelled: Callable[[int], bool] | None = None,
) -> Iterator[list[TokenEvent]]:
    """Decode one batch of prompts (token ids) together: one list of events per step, one event per
    row still running. ``cancelled(i)`` true drops prompt i at the next step, with no more events.
    (``tuco.batcher`` with every row added at once; ``tuco serve`` adds them as they come.)"""
    alpha = check_alpha(alpha)
    if len(samplings) != len(ids):
        raise ValueError(f"{len(ids)} prompts but {len(samplings)} sampling settings")
    batcher = Batcher(pair, monitor=monitor, norm=norm, prefill_tokens=2**62, cancelled=cancelled)
    for i, (prompt, sampling) in enumerate(zip(ids, samplings, strict=True)):
        try:
            batcher.add(i, prompt, sampling, alpha)
        except ValueError as e:
            raise ValueError(str(e).replace("prompt 0", f"prompt {i}", 1)) from None
    while batcher.busy:  # every row prompt_first: its prompt's TuCo with its first token, no PromptTuco
        events = [event for event in batcher.step() if isinstance(event, TokenEvent)]
        if events:
            yield events


def stream(
    pair: PairBase,
    ids: list[list[int]],
    sampling: Sampling,
    *,
    alpha: Alpha = 1.0,
    monitor: str = "tokens",
    norm: str = "l1",
    batch_size: int = 8,
) -> Iterator[TokenEvent]:
    """Every prompt's events as they come, ``batch_size`` prompts decoded together, in the pair's
    length-sorted batches (longest prompts first: less padding); ``event.index`` is the prompt's
    place in ``ids``."""
    for chunk in pair.sorted_batches(ids, batch_size, sampling.max_new_tokens):
        prompts = [ids[i] for i in chunk]
        for events in decode(pair, prompts, [sampling] * len(chunk), alpha=alpha, monitor=monitor, norm=norm):
            for event in events:
                yield dataclasses.replace(event, index=chunk[event.index])


def generate(pair: PairBase, ids: list[list[int]], sampling: Sampling, **options) -> list[Generation]:
    """``stream`` collected: one ``Generation`` per prompt, in input order."""
    tokens: list[list[int]] = [[] for _ in ids]
    tucos: list[list[float]] = [[] for _ in ids]
    texts, prompt_tucos, finish = [""] * len(ids), [0.0] * len(ids), [""] * len(ids)
    for event in stream(pair, ids, sampling, **options):
        i = event.index
        tokens[i].append(event.token_id)
        texts[i] += event.text
        if event.tuco is not None:
            tucos[i].append(event.tuco)
        if event.prompt_tuco is not None:
            prompt_tucos[i] = event.prompt_tuco
        if event.finish_reason is not None:
            finish[i] = event.finish_reason
    monitored = options.get("monitor", "tokens") == "tokens"
    return [
        Generation(
            texts[i], tokens[i], prompt_tucos[i], tucos[i] if monitored else None, finish[i], len(ids[i])
        )
        for i in range(len(ids))
    ]
