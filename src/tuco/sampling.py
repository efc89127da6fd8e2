"""How a prompt is decoded: ``Sampling``, the one vocabulary of sampling settings, and its one
translation into each decoder's terms.

Two decoders take it: tuco's own loop (``tuco.decoding``: TuCo of every token, rows leaving the
batch as they finish, a seeded generator per prompt) and transformers' ``generate`` (behind
``ModelPair.generate``: all of generate's other options, beam search included)::

    >>> s = Sampling(max_new_tokens=20, temperature=0.7, top_p=0.9, seed=1)
    >>> s.generate_kwargs()              # for model.generate: do_sample, temperature, top_p, ...
    >>> Sampling.of_model(model.generation_config, do_sample=True)   # what generate would sample with
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from .errors import check_int, check_number

MIN_TEMPERATURE = 1e-3  # below it (but above 0) logits / temperature can overflow float32: use 0
DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}  # transformers' own, for unset fields


@dataclass(frozen=True)
class Sampling:
    """How one prompt is decoded: greedy at ``temperature`` 0, else sampled with ``top_p`` / ``top_k``
    (0: off) from a generator seeded with ``seed`` (None: a random seed). Generation stops at the end
    of sequence token, at any ``stop`` string (not included in the text), or after ``max_new_tokens``.
    ``logprobs`` (reporting only): each token's log-probability under the model, and the ``logprobs``
    most likely tokens' (``tuco.decoding``; transformers' ``generate`` ignores it)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # report each token's log-probability and the k most likely (None: not)

    def __post_init__(self) -> None:
        check_int(self.max_new_tokens, "max_new_tokens")
        check_int(self.top_k, "top_k", 0)
        if not 0 <= check_number(self.temperature, "temperature"):
            raise ValueError(f"temperature must be at least 0, not {self.temperature}")
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise ValueError(
                f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, not {self.temperature}"
            )
        if not 0 < check_number(self.top_p, "top_p") <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.seed is not None:
            check_int(self.seed, "seed", 0)
        if self.logprobs is not None:
            check_int(self.logprobs, "logprobs", 0)
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop must be non-empty strings, not {self.stop!r}")
        object.__setattr__(self, "stop", stop)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def of_model(cls, generation_config: Any, do_sample: bool, **given: Any) -> Sampling:
        """Greedy without ``do_sample``; with it, the settings ``given``, else the model's generation
        config's, else transformers' defaults (temperature 1, top-p 1, top-k 50)."""
        settings: dict[str, Any] = {"temperature": 0.0}
        if do_sample:
            settings = {k: getattr(generation_config, k, None) for k in DEFAULTS}
            settings = {k: d if settings[k] is None else settings[k] for k, d in DEFAULTS.items()}
            given = {k: v for k, v in given.items() if v is not None}
        else:
            given = {k: v for k, v in given.items() if k not in DEFAULTS}
        return cls(**settings | given)

    def generate_kwargs(self, tokenizer: Any = None) -> dict[str, Any]:
        """These settings as transformers' ``generate`` takes them. ``seed`` has no such argument:
        ``generate`` samples from torch's global generator (``torch.manual_seed``)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.temperature > 0}
        if self.logprobs is not None:
            raise ValueError("logprobs: transformers' generate reports none here; use generate_with_tuco")
        if self.temperature > 0:
            kwargs |= {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        if self.stop:
            kwargs |= {"stop_strings": list(self.stop), "tokenizer": tokenizer}
        return kwargs

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The prompt's own random generator (None when greedy), seeded with ``seed`` or at random."""
        if self.temperature == 0:
            return None
        generator = torch.Generator(device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator

    def next_token(self, logits: torch.Tensor, greedy: int, generator: torch.Generator | None) -> int:
        """The next token from float32 ``logits`` [vocab] (``greedy``: their argmax, computed batched)."""
        if self.temperature == 0:
            return greedy
        scores = (logits - logits.max()) / self.temperature  # <= 0: no overflow, whatever the scale
        if self.top_k:
            kth = torch.topk(scores, min(self.top_k, scores.shape[-1])).values[-1]
            scores = scores.masked_fill(scores < kth, -torch.inf)
        if self.top_p < 1:
            ordered, order = scores.sort(descending=True)
            probs = torch.softmax(ordered, -1)
            outside = probs.cumsum(-1) - probs >= self.top_p  # the smallest set reaching top_p stays
            outside[0] = False  # the most likely token always stays (a top_p that rounds to 0 in float32)
            scores = scores.index_fill(0, order[outside], -torch.inf)
        probs = torch.softmax(scores, -1)
        return int(torch.multinomial(probs, 1, generator=generator))
