"""Long runs over prompt records: score, generate, sweep. Resumable, streamed, OOM-tolerant.

Each job reads ``PromptItem``s lazily in batches, skips those the results file already holds,
turns prompts into token ids (chat template, system prompt, length limit), computes, checks that
every number is finite, and appends the batch to the results file before reading on: a crash or a
Ctrl-C loses at most the batch in flight.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from .data import DataError, PromptItem, item_answer, item_choices
from .driver import WINDOW, drive, windows
from .errors import UsageError
from .inputs import as_chat, choose
from .pair import ModelPair
from .sampling import Sampling
from .store import ResultsFile
from .vectors import VectorWriter

log = logging.getLogger("tuco")


@dataclass
class Job:
    """What every run shares: the pair, how prompts become tokens, and where results go."""

    pair: ModelPair
    out: ResultsFile
    meta: dict = field(default_factory=dict)  # model ids, dtype, version: copied into every record
    batch_size: int = 8
    chat_template: bool | None = None  # None: use it when the tokenizer has one
    system_prompt: str | None = None
    max_length: int | None = None  # default: the model's context (less ``reserve``)
    truncate: str = "error"  # left | right | error
    reserve: int = 0  # positions a generation adds after the prompt
    skip_invalid: bool = False
    quiet: bool = False
    total: int | None = None  # number of records, for the progress bar's ETA
    rank: int = 0  # data-parallel runs: this process takes batches j with j % world == rank
    world: int = 1
    skipped: int = 0
    written: int = 0

    # ------------------------------------------------------------------ prompts to token ids
    def check_lengths(self) -> None:
        """Refuse a --max-length (or --max-new-tokens) the model's context cannot hold."""
        context = self.pair.context_length
        if context is None:
            return
        if self.reserve >= context:
            raise UsageError(
                f"--max-new-tokens {self.reserve} leaves no room for a prompt in the model's context of "
                f"{context} positions: ask for fewer new tokens."
            )
        if self.max_length is not None and self.max_length + self.reserve > context:
            room = f" less --max-new-tokens {self.reserve}" if self.reserve else ""
            raise UsageError(
                f"--max-length {self.max_length} is more than the model's context of {context} "
                f"positions{room} (max_position_embeddings): give at most {context - self.reserve}."
            )

    def limit(self) -> int | None:
        """The longest prompt in tokens: --max-length, else what the context leaves (None: no limit)."""
        return self.max_length or self.pair.room(self.reserve)

    def check_choices(self, choices: list[str]) -> None:
        """Refuse answer choices that one next token cannot tell apart (``inputs.choice_probs``)."""
        try:
            choose(self.pair.tokenizer, torch.zeros(self.pair.vocab_size), choices)
        except ValueError as e:
            raise UsageError(f"--choices: {e}") from None

    def token_ids(self, record: PromptItem) -> list[int]:
        can_format = self.pair.formats_chats  # a chat template, or a paper pair's prompt string
        use_template = can_format if self.chat_template is None else self.chat_template
        prompt = record.prompt
        if isinstance(prompt, list) and not use_template:
            raise DataError(
                f"{record.where}: chat messages need a chat template, and "
                + (
                    "--no-chat-template was given."
                    if self.chat_template is False
                    else "the tokenizer has none."
                )
            )
        if use_template:
            if not can_format:
                raise DataError("--chat-template was given but the tokenizer has no chat template.")
            prompt = as_chat(prompt, self.system_prompt)
        try:
            ids = self.pair.encode([prompt])[0]
        except Exception as e:  # template errors (e.g. no system role) and empty prompts
            raise DataError(f"{record.where}: cannot format the prompt: {e}") from e
        limit = self.limit()
        if limit is not None and len(ids) > limit:
            if self.truncate == "left":
                ids = ids[-limit:]
            elif self.truncate == "right":
                ids = ids[:limit]
            else:
                what = (
                    f"--max-length {limit}"
                    if self.max_length
                    else f"the model's context of {self.pair.context_length} positions"
                    + (f" less --max-new-tokens {self.reserve}" if self.reserve else "")
                )
                raise DataError(
                    f"{record.where}: the prompt has {len(ids)} tokens, more than {what}; "
                    "pass --truncate left or --truncate right to cut it."
                )
        return ids

    # ------------------------------------------------------------------ the loop
    def run(self, records: Iterable[PromptItem], compute: Callable, keys: Callable, desc: str) -> None:
        """Every window of new records through ``compute(records, token_ids) -> list[dict]``, written
        as it finishes (``tuco.driver.drive``). ``keys(record)`` lists the result keys one record
        produces (to tell what is done on resume)."""

        def prepare(window: list[PromptItem]) -> list[tuple[PromptItem, list[int]]]:
            ready = []
            for record in window:
                try:
                    ready.append((record, self.token_ids(record)))
                except DataError as e:
                    self.on_invalid(e)
            return ready

        self.written += drive(
            records,
            lambda ready: compute([r for r, _ in ready], [ids for _, ids in ready]),
            self.out,
            is_done=lambda r: all(self.out.is_done(k) for k in keys(r)),
            batch_size=self.batch_size,
            desc=desc,
            prepare=prepare,
            describe=lambda item: f"{len(item[1])} tokens, {item[0].where}",
            total=self.total,
            quiet=self.quiet,
            rank=self.rank,
            world=self.world,
        )

    def on_invalid(self, error: DataError) -> None:
        """A record that cannot become a prompt: refused, or skipped (and counted) with --skip-invalid."""
        if not self.skip_invalid:
            raise error
        self.skipped += 1
        log.warning("skipped: %s", error)

    def row(self, record: PromptItem, **values) -> dict:
        return {"id": record.id, **record.fields, **values, **self.meta}


# ---------------------------------------------------------------------- the three jobs
def score(
    job: Job,
    records: Iterable[PromptItem],
    *,
    per_token=False,
    norm="l1",
    baselines=False,
    components=False,
    heads=False,
    vectors: VectorWriter | None = None,
) -> None:
    """TuCo records per prompt; with ``vectors``, each prompt's PTC_l and FTC_l also go to its
    shards, written before the records of the same window (a prompt with a shard but no record,
    after a crash, is recomputed and not written twice)."""

    def compute(batch: list[PromptItem], ids: list[list[int]]) -> list[dict]:
        results = job.pair.score(
            ids,
            batch_size=job.batch_size,
            per_token=per_token,
            norm=norm,
            components=components,
            heads=heads,
            vectors=vectors is not None,
        )
        if vectors is not None:
            new = [
                (r.id, res.vectors) for r, res in zip(batch, results, strict=True) if r.id not in vectors.done
            ]
            if new:
                ptc = [v[0] for _, v in new if v is not None]
                ftc = [v[1] for _, v in new if v is not None]
                vectors.write([i for i, _ in new], ptc, ftc)
        extra = job.pair.output_contribution(ids, batch_size=job.batch_size) if baselines else None
        out = []
        for i, (record, result) in enumerate(zip(batch, results, strict=True)):
            values = {k: v for k, v in result.to_dict().items() if v is not None}  # what was asked for
            if per_token:  # each prompt token's own text, beside its TuCo (the report draws them)
                values["prompt_tokens"] = [job.pair.tokenizer.decode([t]) for t in ids[i]]
            if extra is not None:
                values |= extra[i].to_dict()
            out.append(job.row(record, **values, alpha=1.0))
        return out

    job.run(records, compute, lambda r: [{"id": r.id, "alpha": 1.0}], "TuCo")


def generate(
    job: Job, records: Iterable[PromptItem], alphas: list[float], sampling: Sampling, *, tuco: bool = False
) -> None:
    """Generated text per record and alpha; with ``tuco``, also the prompt's TuCo and one TuCo per
    generated token (``ModelPair.generate_with_tuco``, else ``ModelPair.generate``)."""
    options = dataclasses.asdict(sampling)

    def compute(batch: list[PromptItem], ids: list[list[int]]) -> list[dict]:
        out = []
        for alpha in alphas:
            if tuco:
                generations = job.pair.generate_with_tuco(ids, alpha, batch_size=job.batch_size, **options)
                values = [monitored(job.pair.tokenizer, g) for g in generations]
            else:
                texts = job.pair.generate(ids, alpha=alpha, batch_size=job.batch_size, **options)
                values = [{"text": text} for text in texts]
            for record, value, prompt_ids in zip(batch, values, ids, strict=True):
                out.append(job.row(record, alpha=alpha, **value, n_tokens=len(prompt_ids)))
        return out

    job.run(records, compute, lambda r: [{"id": r.id, "alpha": a} for a in alphas], "generate")


def monitored(tokenizer, generation) -> dict:
    """A generation's record fields: the text, each token's own text (for the heat map), TuCo."""
    return {
        "text": generation.text,
        "tokens": [tokenizer.decode([t]) for t in generation.token_ids],
        "tuco": generation.prompt_tuco,
        "tokens_tuco": generation.tokens_tuco,
        "finish_reason": generation.finish_reason,
    }


def sweep(job: Job, records: Iterable[PromptItem], alphas: list[float], choices: list[str] | None) -> None:
    """Next-token probabilities of candidate answers under each alpha (multiple-choice items)."""

    def compute(batch: list[PromptItem], ids: list[list[int]]) -> list[dict]:
        options_of = [item_choices(r, choices) for r in batch]
        out = []
        for alpha in alphas:
            probs = job.pair.next_token_probs(ids, alpha=alpha, batch_size=job.batch_size)
            for record, options, row in zip(batch, options_of, probs, strict=True):
                try:
                    p, pred = choose(job.pair.tokenizer, row, options)
                except ValueError as e:  # choices one next token cannot tell apart
                    raise DataError(f"{record.where}: {e}") from None
                answer = item_answer(record, options)
                values = dict(alpha=alpha, choices=options, probs=p, pred=pred)
                if answer is not None:
                    values |= dict(answer=answer, correct=pred == answer)
                out.append(job.row(record, **values))
        return out

    job.run(records, compute, lambda r: [{"id": r.id, "alpha": a} for a in alphas], "sweep")


# ---------------------------------------------------------------------- helpers
def merge_shards(out, shards: list, records: Iterable[PromptItem], batch_size: int) -> None:
    """Write the shards of a data-parallel run into ``out`` in the order one process would have:
    window j (``tuco.driver``: WINDOW batches) came from shard j % world, its records contiguous
    there (every output of a record carries its id)."""
    import json

    queues = []
    for shard in shards:
        with open(shard, encoding="utf-8") as f:
            queues.append([line for line in f if line.strip()])
    positions = [0] * len(shards)
    with open(out, "w", encoding="utf-8") as merged:
        for j, batch in enumerate(windows(records, batch_size * WINDOW)):
            ids = {json.dumps(r.id, default=str) for r in batch}
            s = j % len(shards)
            queue = queues[s]
            while positions[s] < len(queue) and json.dumps(json.loads(queue[positions[s]])["id"]) in ids:
                merged.write(queue[positions[s]])
                positions[s] += 1
    left = [str(shard) for shard, q, p in zip(shards, queues, positions, strict=True) if p != len(q)]
    if left:
        raise RuntimeError(
            f"shards {left} hold records the input does not: were they made from another input?"
        )
