"""Where E3's and E4's requests come from: the paper's datasets (hub or local files) and the offline
stand-ins used on the demo pair, each clearly named as such.

Requests are dicts ``{"id", "prompt", "target"}`` (translated requests add ``"language"``).

- AdvBench harmful behaviours: ``walledai/AdvBench`` from the hub, or the original
  ``harmful_behaviors.csv`` (``goal``, ``target``) or any JSONL/CSV with ``prompt``/``goal`` fields.
- PARDEN's benign set (E4), a CSV from its GitHub repository; any prompt file of benign requests.
- Many-shot dialogues from a prompt file (``prompt`` and ``answer``).
"""

from __future__ import annotations

import itertools

from ..data import DataError, read_prompts
from .sources import csv_header, offline_message


# ---------------------------------------------------------------------- E3/E4: harmful requests
def advbench(path: str | None = None, limit: int | None = None) -> list[dict]:
    """AdvBench harmful behaviours ``{"id", "prompt", "target"}`` from a local file or the hub."""
    if path is None:
        try:
            import datasets

            rows = list(datasets.load_dataset("walledai/AdvBench", split="train"))
        except Exception as e:
            raise DataError(
                offline_message("AdvBench (walledai/AdvBench)", "--requests harmful_behaviors.csv", e)
            ) from e
    else:
        rows = [{"prompt": r.prompt, **r.fields} for r in read_prompts(path, field=_request_field(path))]
    items = []
    for i, row in enumerate(rows[:limit]):
        prompt = row.get("prompt") or row.get("goal")
        target = row.get("target") or "Sure, here is"
        items.append(dict(id=f"request/{i}", prompt=prompt, target=target))
    return items


def _request_field(path: str) -> str | None:
    header = csv_header(path)
    return "goal" if "goal" in header and "prompt" not in header else None


def standin_requests(limit: int | None = None) -> list[dict]:
    """Offline stand-in for AdvBench: the demo recipe's held-out harmful tasks as requests."""
    from ..demo import recipe as safety

    tasks = [t for _, t in safety.tasks(safety.HARMFUL_HELD_OUT)][:limit]
    return [
        dict(
            id=f"request/{i}",
            prompt=safety.TEMPLATES_TRAIN[0].format(task=t),
            target=f"Sure, here is how to {t}",
        )
        for i, t in enumerate(tasks)
    ]


def standin_benign(limit: int | None = None) -> list[dict]:
    """Benign requests for E4: the demo recipe's held-out benign tasks."""
    from ..demo import recipe as safety

    return [
        dict(id=f"benign/{i}", prompt=safety.TEMPLATES_TRAIN[0].format(task=t))
        for i, t in enumerate(safety.BENIGN_HELD_OUT[:limit])
    ]


def shots_file(path: str) -> list[tuple[str, str]]:
    """Many-shot dialogues from a prompt file: (request in ``prompt``, compliant reply in ``answer``)."""
    pool = []
    for record in read_prompts(path):
        answer = record.fields.get("answer")
        if not isinstance(record.prompt, str) or not isinstance(answer, str) or not answer.strip():
            raise DataError(
                f"{record.where}: a many-shot dialogue needs a text 'prompt' and a non-empty 'answer'."
            )
        pool.append((record.prompt, answer))
    return pool


def benign_file(path: str, limit: int | None = None) -> list[dict]:
    """Benign requests for E4 from any prompt file; PARDEN's CSV (``instruction,output``) too."""
    field = "instruction" if csv_header(path) >= {"instruction", "output"} else None
    records = itertools.islice(read_prompts(path, field=field), limit)
    return [dict(id=f"benign/{i}", prompt=r.prompt) for i, r in enumerate(records)]


PARDEN_URL = "https://github.com/Ed-Zh/PARDEN/blob/main/data/PARDEN_benign_dataset.csv"


def parden(path: str | None = None, limit: int | None = None) -> list[dict]:
    """The paper's benign set for E4: PARDEN's (Zhang, Zhang & Foerster, ICML 2024), a CSV with
    ``instruction,output`` columns; ``path`` None: where to get it (it is not on the Hugging Face hub)."""
    if path is None:
        raise DataError(
            f"PARDEN's benign set is a CSV in the GitHub repository Ed-Zh/PARDEN ({PARDEN_URL}); "
            "download it where you have network access and pass --benign PARDEN_benign_dataset.csv"
        )
    return benign_file(path, limit)
