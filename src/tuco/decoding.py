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

Why a loop of tuco's own beside transformers' ``generate`` (which ``ModelPair.generate`` uses): TuCo
is read per token off each step, rows leave both caches as they finish, and each row samples from its
own seeded generator, none of which ``generate`` offers; ``generate`` keeps beam search and its other
options for plain generation. Both take their settings from ``tuco.sampling.Sampling``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import inputs, metrics
from .blocks import unwrap
from .decompose import pt_blocks_needed
from .errors import Alpha, check_alpha, check_choice
from .pair_base import PairBase
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


class _Row:
    """One prompt being decoded: its tokens, the text sent so far, its random generator."""

    def __init__(self, index: int, sampling: Sampling, tokenizer: Any, eos: set[int], device: torch.device):
        self.index, self.sampling, self.tokenizer, self.eos = index, sampling, tokenizer, eos
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


@torch.inference_mode()
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
    row still running. ``cancelled(i)`` true drops prompt i at the next step, with no more events."""
    alpha = check_alpha(alpha)
    check_choice(monitor, "monitor", MONITORS)
    check_choice(norm, "norm", ("l1", "l2"))
    if len(samplings) != len(ids):
        raise ValueError(f"{len(ids)} prompts but {len(samplings)} sampling settings")
    for i, (prompt, sampling) in enumerate(zip(ids, samplings, strict=True)):
        try:
            pair.check_prompts([prompt], sampling.max_new_tokens)
        except ValueError as e:
            raise ValueError(str(e).replace("prompt 0", f"prompt {i}", 1)) from None
    p = int(norm[1])
    # the prefill reads the prompt's last token; with TuCo on every token, the PT caches are kept too
    light = pt_blocks_needed(alpha, "last" if monitor == "prompt" else "all") == "last"
    batch = pair.body_inputs({k: v.to(pair.device) for k, v in inputs.pad(ids, pair.pad_id, "left").items()})
    eos = pair.eos_ids()
    rows = [_Row(i, s, pair.tokenizer, eos, pair.device) for i, s in enumerate(samplings)]
    dec = pair.steer(alpha, last_only=light)
    dec.__enter__()
    try:
        rec = dec.record(torch.full((len(ids),), batch["input_ids"].shape[1] - 1), p=p, layers=False)
        out = pair.finetuned(**batch, use_cache=True, logits_to_keep=1)
        prompt_tucos = tucos = _finite(metrics.tuco(*rec.sums(), p).tolist())
        if light:  # decoding reads nothing at alpha = 1: the FT model alone
            dec.__exit__(None, None, None)
        # transformers 5.24 renamed past_key_values to cache (argument and output)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        takes_cache = "cache" in inspect.signature(unwrap(pair.finetuned).forward).parameters
        cache_name = "cache" if takes_cache else "past_key_values"
        mask = batch["attention_mask"]
        positions = batch["position_ids"][:, -1:] if "position_ids" in batch else None
        # rows leave the batch as they finish, where every cache layer can drop rows (not recurrent ones)
        droppable = all(hasattr(layer, "batch_select_indices") for layer in getattr(cache, "layers", [cache]))
        first = True
        while True:
            logits = out.logits[:, -1].float()
            greedy = logits.argmax(-1).tolist()
            finite = torch.isfinite(logits).all(-1).tolist()
            wanted = [row.sampling.logprobs for row in rows]
            logp = torch.log_softmax(logits, -1) if any(k is not None for k in wanted) else None
            chosen, events = list(greedy), []
            for j, row in enumerate(rows):
                if row.done or (cancelled is not None and cancelled(row.index)):
                    row.done = True
                    continue
                prompt_tuco = prompt_tucos[j] if first else None
                try:  # a row that fails ends alone, with its error; the others go on
                    if not finite[j]:
                        raise FloatingPointError("the logits are not finite (alpha too far from 1 here?)")
                    chosen[j] = token = row.choose(logits[j], greedy[j])
                    text, finish = row.add(token)
                except (RuntimeError, ValueError, FloatingPointError) as e:
                    overflow = isinstance(e, FloatingPointError)
                    failed = TokenEvent(
                        row.index, -1, "", None, prompt_tuco, "error", error=str(e), overflow=overflow
                    )
                    events.append(failed)
                    row.done = True
                    continue
                event = TokenEvent(row.index, token, text, tucos[j] if monitor == "tokens" else None)
                event.prompt_tuco, event.finish_reason = prompt_tuco, finish
                k = wanted[j]
                if logp is not None and k is not None:
                    event.logprob = float(logp[j, token])
                    top = torch.topk(logp[j], k)
                    event.top_logprobs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
                events.append(event)
                row.done = finish is not None
            first = False
            if events:
                yield events
            keep = [j for j, row in enumerate(rows) if not row.done]
            if not keep:
                return
            if droppable and len(keep) < len(rows):  # finished rows leave the batch and both caches
                index = torch.tensor(keep, device=mask.device)
                cache.batch_select_indices(index)
                dec.keep_rows(index)
                rows, chosen, mask = [rows[j] for j in keep], [chosen[j] for j in keep], mask[index]
                positions = None if positions is None else positions[index]
            step = {"attention_mask": torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)}
            mask = step["attention_mask"]
            if positions is not None:
                positions = step["position_ids"] = positions + 1
            if monitor == "tokens":
                rec = dec.record(torch.zeros(len(rows), dtype=torch.long), p=p, layers=False)
            next_ids = torch.tensor(chosen, device=mask.device)[:, None]
            out = pair.finetuned(input_ids=next_ids, **step, **{cache_name: cache}, use_cache=True)
            if monitor == "tokens":
                tucos = _finite(metrics.tuco(*rec.sums(), p).tolist())
    finally:
        dec.__exit__(None, None, None)


def _finite(values: list[float]) -> list[float | None]:
    """TuCo values, None where one could not be computed (0 / 0: no component at all)."""
    return [v if math.isfinite(v) else None for v in values]


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
