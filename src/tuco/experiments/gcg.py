"""GCG adversarial strings (Zou et al. 2023) optimised with ``nanogcg`` on the fine-tuned model, and
cached: each (model, request, placement, settings) is optimised once, then read back from a JSONL
file (an interrupted optimisation keeps the strings already found).

    >>> strings = adversarial_strings(pair, requests, "runs/gcg_strings.jsonl", GCGSettings(steps=250))
    >>> attacked = attach(request["prompt"], strings[request["id"]], placement="before")

Strings the project optimised for its demo pairs ship with tuco (``SHIPPED``, with the command that
made them in ``tuco/demo/gcg_strings.md``): a request whose key is there is copied into the cache,
not optimised again.

``nanogcg`` 0.3 declares ``transformers<=4.47.1`` but works with 5.x without its prefix cache
(``use_prefix_cache=False`` here); install it with ``pip install --no-deps nanogcg==0.3.0``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import DataError
from ..inputs import as_chat
from ..pair import ModelPair
from ..store import ResultsFile, record_key

log = logging.getLogger("tuco")
PLACEMENTS = ("before", "after")
SHIPPED = resources.files("tuco.demo") / "gcg_strings.jsonl"  # the demo pairs' strings


@dataclass(frozen=True)
class GCGSettings:
    steps: int = 250  # nanogcg's defaults (the paper does not give its GCG settings)
    search_width: int = 512
    topk: int = 256
    tokens: int = 20  # length of the adversarial string ("x x x ..." to start)
    seed: int = 0
    early_stop: bool = False  # stop once the fine-tuned model's greedy answer is the target


def attach(request: str, string: str, placement: str = "before") -> str:
    """The request with the adversarial string before it (the paper's placement) or after it."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be 'before' or 'after', not {placement!r}")
    return f"{string} {request}" if placement == "before" else f"{request} {string}"


def adversarial_strings(
    pair: ModelPair,
    requests: list[dict],
    cache: str | Path,
    settings: GCGSettings = GCGSettings(),
    placement: str = "before",
    system: str | None = None,
    source_model: str | None = None,
) -> dict:
    """``{request id: adversarial string}``, optimising only the requests not in ``cache`` yet.
    Each request needs ``prompt`` and ``target`` (the compliant answer's start GCG aims for).
    ``source_model``: reuse the strings optimised on that model (as the paper used Llama-2-7B's
    strings for every model); they must all be in ``cache``, nothing is optimised."""
    # the pair's stable name (a demo pair's checkpoints are folders that differ between machines)
    own = pair.identity or getattr(pair.finetuned, "name_or_path", "") or pair.finetuned.config.name_or_path
    model_name = source_model or own
    keys = {
        r["id"]: dict(
            model=model_name, request=r["prompt"], placement=placement, settings=dataclasses.asdict(settings)
        )
        for r in requests
    }
    key = ("model", "request", "placement", "settings")
    with ResultsFile(cache, resume=True, key=key) as results:
        todo = [r for r in requests if not results.is_done(keys[r["id"]])]
        if todo and (found := shipped({record_key(keys[r["id"]], key) for r in todo}, key)):
            results.write(found)  # the shipped strings of these keys: copied, not optimised again
            todo = [r for r in todo if not results.is_done(keys[r["id"]])]
        if todo and source_model is not None:
            raise DataError(
                f"{cache}: no GCG string of {source_model} for {len(todo)} of the requests (the first: "
                f"{todo[0]['prompt']!r}): optimise them on that model first, with the same GCG settings"
            )
        if todo:
            nanogcg = _import_nanogcg()
        for n, request in enumerate(todo, 1):
            log.info("GCG %d/%d: %s", n, len(todo), request["prompt"])
            messages = as_chat(attach(request["prompt"], "{optim_str}", placement), system)
            config = nanogcg.GCGConfig(
                num_steps=settings.steps,
                search_width=settings.search_width,
                topk=settings.topk,
                optim_str_init=" ".join(["x"] * settings.tokens),
                seed=settings.seed,
                early_stop=settings.early_stop,
                use_prefix_cache=False,  # nanogcg's prefix cache is the legacy tuple format
                verbosity="WARNING",
            )
            result = nanogcg.run(pair.finetuned, pair.tokenizer, messages, request["target"], config)
            results.write([keys[request["id"]] | dict(string=result.best_string, loss=result.best_loss)])
    with open(cache, encoding="utf-8") as f:
        found = {record_key(r, key): r["string"] for r in map(json.loads, f)}
    return {rid: found[record_key(k, key)] for rid, k in keys.items()}


def shipped(wanted: set[str], key: tuple[str, ...]) -> list[dict]:
    """The shipped strings whose key (``record_key`` of ``key``) is in ``wanted``."""
    if not SHIPPED.is_file():
        return []
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, filter(None, lines)) if record_key(r, key) in wanted]


def _import_nanogcg():
    try:
        import nanogcg
    except ImportError as e:  # a RuntimeError: the command line reports it in one line (exit 1)
        raise RuntimeError(
            "GCG needs nanogcg: pip install --no-deps nanogcg==0.3.0 (or pass a cache file of strings "
            "optimised elsewhere with --gcg-cache)"
        ) from e
    return nanogcg
