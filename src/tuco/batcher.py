"""Continuous batching: rows join the running batch at the next step and leave as they finish.

    >>> batcher = Batcher(pair, monitor="tokens")
    >>> batcher.add(7, ids, Sampling(max_new_tokens=20), alpha=0.8)   # 7: the events' index
    >>> while batcher.busy:
    ...     for event in batcher.step():          # at most one TokenEvent per row and step
    ...         print(event.index, repr(event.text), event.tuco)

``step`` runs (a chunk of) the prefill of the rows added since, then one decoding step of every
running row, then ``settle``. A prefilled row's first token comes with that step, and the row
joins the running batch for the next one (``tuco.kvrows`` joins the FT cache and the PT blocks'
caches alike): a newcomer waits at most one step, a long prompt is prefilled about
``prefill_tokens`` tokens at a time between the others' steps, and a row leaves the batch and its
caches as soon as it finishes or ``cancelled(index)`` says so.

Rows run in lanes, by what their decoding steps need (each lane steps once per ``step``):

- ``monitor="tokens"``, or alpha != 1: the PT blocks run at every step. Rows of any float alpha
  share one lane, each row at its own alpha (``Decomposition(row_alpha=...)``); an attention / MLP
  alpha or a chain's per-stage alpha has a lane of its own.
- ``monitor="prompt"`` at alpha = 1: the FT model alone (a short prompt's prefill runs the PT blocks
  at its last token only, ``tuco.lastpos``). A row added with ``prompt_first=False`` (a server's
  stream with no guard to wait for) gets its first token before its prompt's TuCo: the PT blocks
  run in ``settle``, after that token's step, and a ``PromptTuco`` event brings it.

A row's tokens (at temperature 0, or from its own seeded generator) and its TuCo do not depend on
what runs beside it or when it came: rows never mix, padding is masked out, and every row goes
through the same per-row path. Caches that cannot be joined (static, quantized, recurrent layers)
keep one batch per lane: newcomers wait until it has finished.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import inputs, kvrows, metrics
from .blocks import unwrap
from .errors import Alpha, check_alpha, check_choice
from .pair_base import PairBase
from .rows import MONITORS, PromptTuco, Row, TokenEvent, choose
from .sampling import Sampling

FIRST_TOKEN = ("ride", "alone")  # a prefill's unembedding: with the next decoding pass, or its own
LaneKey = tuple[Any, bool]  # (None for float alphas, else the alpha itself; whether the PT blocks run)


@dataclass
class _Batch:
    """Rows that run forward passes together, left-padded: [b, T] mask, [b, 1] positions of the
    last token (None where the model takes no position ids), their FT and PT caches."""

    key: LaneKey
    rows: list[Row]
    mask: torch.Tensor
    positions: torch.Tensor | None = None
    cache: Any = None
    pt_caches: dict[int, Any] = field(default_factory=dict)
    next_ids: list[int] = field(default_factory=list)


@dataclass
class _Prefill(_Batch):
    """Rows being prefilled: their padded prompts [b, T], the first ``at`` columns done."""

    input_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    position_ids: torch.Tensor | None = None
    at: int = 0
    hidden: torch.Tensor | None = None  # [b, 1, d] last hidden states, unembedded with the next step
    tucos: list[float | None] | None = None
    later: tuple | None = None  # (decomposition, record, rows): the PT blocks of a prefill run in settle()


class Batcher:
    def __init__(
        self,
        pair: PairBase,
        *,
        monitor: str = "tokens",
        norm: str = "l1",
        prefill_tokens: int = 2048,
        cancelled: Callable[[int], bool] | None = None,
        first_token: str = "ride",
    ):
        check_choice(monitor, "monitor", MONITORS)
        check_choice(norm, "norm", ("l1", "l2"))
        self.pair, self.monitor, self.p = pair, monitor, int(norm[1])
        self.prefill_tokens = prefill_tokens
        check_choice(first_token, "first_token", FIRST_TOKEN)
        self.first_token = first_token
        self.cancelled = cancelled or (lambda index: False)
        self.eos = pair.eos_ids()
        self.lanes: dict[LaneKey, _Batch] = {}
        self.prefills: list[_Prefill] = []
        self._ready: list[_Prefill] = []  # prefilled, joining their lane after the next decoding step
        self._deferred: list[_Prefill] = []  # prefilled but for the unembedding: it rides the next step's
        self._settling: list[_Prefill] = []  # first tokens out, their prompts' PT blocks to run (settle)
        self.joinable: bool | None = None  # known after the first prefill
        takes_cache = "cache" in inspect.signature(unwrap(pair.finetuned).forward).parameters
        self.cache_name = "cache" if takes_cache else "past_key_values"  # renamed in transformers 5.24
        body_takes_cache = "cache" in inspect.signature(pair.body.forward).parameters
        self.body_cache_name = "cache" if body_takes_cache else "past_key_values"

    # ------------------------------------------------------------------ what callers see
    def add(
        self, index: int, ids: list[int], sampling: Sampling, alpha: Alpha = 1.0, prompt_first: bool = True
    ) -> None:
        """A new row: it is prefilled at the next ``step`` (``ValueError`` if it does not fit).
        ``prompt_first=False``: its first token may come before its prompt's TuCo (``settle``)."""
        alpha = check_alpha(alpha)
        self.pair.check_prompts([ids], sampling.max_new_tokens)
        row = Row(index, ids, sampling, alpha, self.pair.tokenizer, self.eos, self.pair.device, prompt_first)
        key = self._key(alpha)
        waiting = next((p for p in self.prefills if p.key == key and not p.at), None)
        if waiting is None:
            self.prefills.append(waiting := _Prefill(key, [], torch.zeros(0)))
        waiting.rows.append(row)

    @property
    def busy(self) -> bool:
        return bool(self.lanes or self.prefills or self._ready or self._deferred or self._settling)

    def indices(self) -> set[int]:
        """The rows running or waiting for their prefill."""
        batches = [*self.lanes.values(), *self.prefills, *self._ready, *self._deferred]
        return {row.index for batch in batches for row in batch.rows}

    def step(self) -> list[TokenEvent | PromptTuco]:
        """``prefill()``, ``decode()``, ``settle()``: the events of all three."""
        return [*self.prefill(), *self.decode(), *self.settle()]

    @torch.inference_mode()
    def prefill(self) -> list[TokenEvent]:
        """A prefill chunk of every waiting group: the first tokens of the groups it completes (of
        those whose unembedding rides the next ``decode``: with it); they join the running batch
        after that ``decode``."""
        events: list[TokenEvent] = []
        for group in list(self.prefills):
            if self._may_start(group):
                events += self._prefill(group)
        return events

    @torch.inference_mode()
    def decode(self) -> list[TokenEvent]:
        """One decoding step of every running row (the first tokens of groups whose prefill was
        done but for the unembedding come with it); then the rows prefilled since join them."""
        events: list[TokenEvent] = []
        deferred, self._deferred = self._deferred, []
        for key, lane in list(self.lanes.items()):
            events += self._decode(lane, deferred)
            deferred = []
            if not lane.rows:
                del self.lanes[key]
        if deferred:  # prefill() lets a group ride only when a lane runs: decode() must follow it
            raise RuntimeError("prefilled rows had no decoding pass to ride: call decode() after prefill()")
        ready, self._ready = self._ready, []
        for group in ready:
            if group.rows:
                self._join(group)
        return events

    @torch.inference_mode()
    def settle(self) -> list[PromptTuco]:
        """The prompts' TuCo of rows whose first tokens went out without it (``prompt_first=False``):
        their PT blocks run now, at the last prompt token, on what the prefill kept."""
        events: list[PromptTuco] = []
        settling, self._settling = self._settling, []
        for group in settling:
            rows, tucos = self._run_later(group)
            for row, tuco in zip(rows, tucos, strict=True):
                if not (row.done or self.cancelled(row.index)):
                    events.append(PromptTuco(row.index, tuco))
        return events

    def _run_later(self, group: _Prefill) -> tuple[list[Row], list[float | None]]:
        assert group.later is not None
        (dec, rec, rows), group.later = group.later, None
        dec.run_later()
        return rows, self._tucos(rec)

    def _tucos(self, rec) -> list[float | None]:
        ptc_sum, ftc_sum = rec.sums()
        values = metrics.tuco(ptc_sum, ftc_sum, self.p).tolist()
        return [v if math.isfinite(v) else None for v in values]

    # ------------------------------------------------------------------ lanes
    def _key(self, alpha: Alpha) -> LaneKey:
        if isinstance(alpha, float):
            return None, self.monitor == "tokens" or alpha != 1.0
        return (tuple(sorted(alpha.items())) if isinstance(alpha, dict) else alpha), True

    def _may_start(self, group: _Prefill) -> bool:
        if group.at or self.joinable is not False:
            return True  # caches join: any time
        others = [p for p in [*self.prefills, *self._deferred, *self._ready] if p is not group]
        started = any(p.at for p in others if p.key == group.key)
        return group.key not in self.lanes and not started

    def _steer(self, batch: _Batch, last_only: bool = False, later: bool = False):
        alpha = batch.rows[0].alpha
        if batch.key[0] is not None:  # one alpha of its own kind for the lane
            return self.pair.steer(alpha)
        if last_only:
            return self.pair.steer(1.0, last_only=True, later=later)
        return self.pair.steer(1.0, row_alpha=torch.tensor([row.alpha for row in batch.rows]))

    # ------------------------------------------------------------------ forward passes
    def _forward(
        self,
        batch: _Batch,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor | None,
        *,
        record_at: int | None,
        keep_pt: bool,
        last_only: bool = False,
        head: bool = True,
        later: bool = False,
    ) -> tuple[torch.Tensor, list[float | None] | None]:
        """One pass over ``ids`` [b, s]: the last position's logits [b, vocab] in float32 (without
        ``head``: its last hidden states [b, 1, d], the model body's alone), and each row's TuCo
        at column ``record_at`` of the pass (None: not recorded; ``later``: recorded by the PT blocks
        that ``_run_later`` runs, ``batch.later``)."""
        step: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": True}
        if head:
            step["logits_to_keep"] = 1
        if positions is not None:
            step["position_ids"] = positions
        if batch.cache is not None:
            step[self.cache_name if head else self.body_cache_name] = batch.cache
        model = self.pair.finetuned if head else self.pair.body
        tucos = None
        if keep_pt or record_at is not None:
            with self._steer(batch, last_only, later) as dec:
                dec.use_caches(batch.cache, batch.pt_caches)
                at = torch.full((len(batch.rows),), record_at or 0)
                rec = dec.record(at, p=self.p, layers=False) if record_at is not None else None
                out = model(**step)
                batch.pt_caches = dec.caches if keep_pt else {}
            if later and isinstance(batch, _Prefill):
                batch.later = (dec, rec, list(batch.rows))
            elif rec is not None:
                tucos = self._tucos(rec)
        else:
            out = model(**step)
        batch.cache = out["cache"] if "cache" in out else out["past_key_values"]
        if not head:
            return out.last_hidden_state[:, -1:], tucos
        return out.logits[:, -1].float(), tucos

    def _decode(self, lane: _Batch, riders: list[_Prefill]) -> list[TokenEvent]:
        """One step of ``lane``; the ``riders``' last hidden states are unembedded in the same pass
        (one read of the unembedding for both), and their first tokens chosen."""
        lane.mask = torch.cat([lane.mask, lane.mask.new_ones(len(lane.rows), 1)], dim=1)
        if lane.positions is not None:
            lane.positions = lane.positions + 1
        ids = torch.tensor(lane.next_ids, device=lane.mask.device)[:, None]
        record_at = 0 if self.monitor == "tokens" else None
        with self._riding([group.hidden for group in riders]):
            logits, tucos = self._forward(
                lane, ids, lane.mask, lane.positions, record_at=record_at, keep_pt=lane.key[1]
            )
        events = self._choose(lane, logits[: len(lane.rows)], tucos, None)
        self._leave(lane)
        start = len(logits) - sum(len(group.rows) for group in riders)
        for group in riders:
            end = start + len(group.rows)
            events += self._first_tokens(group, logits[start:end], group.tucos)
            start = end
        return events

    @contextlib.contextmanager
    def _riding(self, hidden: list):
        """Within it, the FT model's unembedding also takes ``hidden`` ([b_i, 1, d] each), after
        the pass's own rows: its logits come out [b + sum b_i, 1, vocab], with the model's own
        post-processing (soft-capping, scaling: row-wise) applied to every row."""
        if not hidden:
            yield
            return
        head = unwrap(self.pair.finetuned).get_output_embeddings()

        def pre(module, args):
            x = args[0]
            return (torch.cat([x, *(h.to(x.device, x.dtype) for h in hidden)]), *args[1:])

        handle = head.register_forward_pre_hook(pre)
        try:
            yield
        finally:
            handle.remove()

    def _prefill(self, group: _Prefill) -> list[TokenEvent]:
        if not group.at:  # the group's prompts, left-padded: every row's last token in the last column
            batch = inputs.pad([row.ids for row in group.rows], self.pair.pad_id, "left")
            batch = self.pair.body_inputs({k: v.to(self.pair.device) for k, v in batch.items()})
            group.input_ids, group.mask = batch["input_ids"], batch["attention_mask"]
            group.position_ids = batch.get("position_ids")
        width = group.input_ids.shape[1]
        end = min(width, group.at + max(16, self.prefill_tokens // len(group.rows)))
        last, cols = end == width, slice(group.at, end)
        positions = None if group.position_ids is None else group.position_ids[:, cols]
        # a lane without PT blocks keeps no PT caches, unless a long prompt's chunks need them
        light = not group.key[1] and group.at == 0 and last
        later = light and not any(row.prompt_first for row in group.rows)  # PT blocks in settle()
        # the unembedding of a last chunk rides this step's decoding pass, when there is one; an
        # earlier chunk needs none
        rides = last and any(lane.rows for lane in self.lanes.values()) and self.first_token == "ride"
        out, tucos = self._forward(
            group,
            group.input_ids[:, cols],
            group.mask[:, :end],
            positions,
            record_at=end - group.at - 1 if last else None,
            keep_pt=group.key[1] or not last,
            last_only=light,
            head=last and not rides,
            later=later,
        )
        if self.joinable is None:
            self.joinable = kvrows.joinable(group.cache)
        group.at = end
        if not last:
            return []
        self.prefills.remove(group)
        if rides:
            group.hidden, group.tucos = out, tucos
            self._deferred.append(group)
            return []
        return self._first_tokens(group, out, tucos)

    def _first_tokens(self, group: _Prefill, logits: torch.Tensor, tucos: list | None) -> list[TokenEvent]:
        """A prefilled group's first tokens; it joins its lane after this step's decoding."""
        events: list = self._choose(group, logits, tucos, tucos)
        if group.later is not None:
            if any(event.finish_reason is not None for event in events):  # a row ends at once:
                rows, tucos = self._run_later(group)  # its prompt's TuCo comes with its only token
                by_index = {row.index: tuco for row, tuco in zip(rows, tucos, strict=True)}
                for event in events:
                    event.prompt_tuco = by_index[event.index]
            else:
                self._settling.append(group)
        group.positions = None if group.position_ids is None else group.position_ids[:, -1:]
        group.hidden = None
        self._leave(group)
        self._ready.append(group)
        return events

    # ------------------------------------------------------------------ rows
    def _choose(
        self, batch: _Batch, logits: torch.Tensor, tucos: list | None, prompt_tucos: list | None
    ) -> list[TokenEvent]:
        """Each row's next token from ``logits`` [b, vocab] (``rows.choose``); the batch's next ids."""
        tucos = tucos if self.monitor == "tokens" else None
        events, batch.next_ids = choose(batch.rows, logits, tucos, prompt_tucos, self.cancelled)
        return events

    def _leave(self, batch: _Batch) -> None:
        """Finished rows leave the batch and its caches; then the columns no row uses any more."""
        keep = [j for j, row in enumerate(batch.rows) if not row.done]
        if len(keep) == len(batch.rows):
            return
        caches = [batch.cache, *batch.pt_caches.values()]
        layers = [layer for cache in caches for layer in getattr(cache, "layers", [cache])]
        if not keep or not all(hasattr(layer, "batch_select_indices") for layer in layers):
            if not keep:  # (a recurrent cache cannot drop rows: they run on, unseen, to the end)
                batch.rows = []
            return
        index = torch.tensor(keep, device=batch.mask.device)
        for cache in caches:
            cache.batch_select_indices(index)
        batch.rows, batch.next_ids = [batch.rows[j] for j in keep], [batch.next_ids[j] for j in keep]
        batch.mask = batch.mask[index]
        batch.positions = None if batch.positions is None else batch.positions[index]
        unused = kvrows.padding_columns(batch.mask)
        if unused and all(map(kvrows.joinable, caches)):
            for cache in caches:
                kvrows.trim(cache, unused)
            batch.mask = batch.mask[:, unused:]

    def _join(self, group: _Prefill) -> None:
        """The prefilled rows join their lane."""
        lane = self.lanes.get(group.key)
        if not group.key[1]:
            group.pt_caches = {}
        if lane is None:
            fields = ("key", "rows", "mask", "positions", "cache", "pt_caches", "next_ids")
            self.lanes[group.key] = _Batch(**{name: getattr(group, name) for name in fields})
            return
        kvrows.join(lane.cache, group.cache)
        for stage, cache in lane.pt_caches.items():
            kvrows.join(cache, group.pt_caches[stage])
        lane.mask = kvrows.join_masks(lane.mask, group.mask)
        if lane.positions is not None and group.positions is not None:
            lane.positions = torch.cat([lane.positions, group.positions])
        lane.rows += group.rows
        lane.next_ids += group.next_ids
