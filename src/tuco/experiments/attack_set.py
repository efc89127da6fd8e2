"""The guard's calibration files, rebuilt from the repository: attacked and benign prompt files that
``tuco calibrate --benign --attacks`` reads.

    tuco experiment attack-set --pair demo-safety --attacks msj gcg --max-shots 8 --out runs/guard-set
    tuco calibrate --pair demo-safety --benign runs/guard-set/benign.jsonl \\
        --attacks runs/guard-set/attacks.jsonl --fpr 0.05 --out guard.json

``attacks.jsonl``: one chat (``messages``) per request and attack: ``msj``, ``max_shots`` shots of
the many-shot pool before the request (``tuco.attacks.many_shot``); ``gcg``, the request with its
GCG string (``tuco.experiments.gcg``: read from the cache, optimised where missing). ``benign.jsonl``:
the benign requests, one ``prompt`` each. Both are also the run's ``results.jsonl``, one record each.
"""

from __future__ import annotations

import json

from ..attacks import many_shot
from ..inputs import as_chat
from ..pair import ModelPair
from ..store import write_atomic
from ..tables import markdown_table
from .common import RunDirectory
from .gcg import GCGSettings, adversarial_strings, attach

KINDS = ("msj", "gcg")


def attack_set(
    pair: ModelPair,
    out: RunDirectory,
    requests: list[dict],
    benign: list[dict],
    *,
    attacks: tuple[str, ...] = KINDS,
    shots: int = 8,
    pool: list[tuple[str, str]] | None = None,
    format: str = "turns",
    gcg_cache: str | None = None,
    gcg_settings: GCGSettings | None = None,
    placement: str = "before",
    system: str | None = None,
    source: str = "",
) -> str:
    unknown = [a for a in attacks if a not in KINDS]
    if unknown or not attacks:
        raise ValueError(f"attack-set builds {' and '.join(KINDS)} prompts, not {unknown or 'none'}")
    if format == "raw":
        raise ValueError(
            "attack-set writes chats for tuco calibrate: --msj-format turns or one-turn, not raw"
        )
    records = []
    if "msj" in attacks:  # (many_shot refuses an empty pool)
        for r in requests:
            chat = as_chat(many_shot(r["prompt"], pool, shots, format), system)
            records.append(
                dict(id=f"msj/{r['id']}", attack=f"msj-{shots}", request=r["prompt"], messages=chat)
            )
    if "gcg" in attacks:
        if gcg_cache is None:
            raise ValueError("gcg needs a cache of strings (--gcg-cache): optimised strings are kept there")
        strings = adversarial_strings(
            pair, requests, gcg_cache, gcg_settings or GCGSettings(), placement, system
        )
        for r in requests:
            chat = as_chat(attach(r["prompt"], strings[r["id"]], placement), system)
            records.append(dict(id=f"gcg/{r['id']}", attack="gcg", request=r["prompt"], messages=chat))
    kept = [dict(id=f"benign/{b['id']}", attack="benign", prompt=b["prompt"]) for b in benign]
    out.start()
    for name, rows in (("attacks.jsonl", records), ("benign.jsonl", kept)):
        write_atomic(out.dir / name, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    counts = {a: sum(r["attack"].startswith(a) for r in records) for a in attacks}
    lines = [
        "# Attack set for tuco calibrate",
        "",
        f"Requests: {source}.",
        "",
        *markdown_table(["file", "prompts"], [["attacks.jsonl", len(records)], ["benign.jsonl", len(kept)]]),
        "",
        "Attacks: "
        + ", ".join(f"{a}: {n}" for a, n in counts.items())
        + (f" ({shots} shots, {format})" if "msj" in attacks else "")
        + (f"; GCG strings {placement} the request, from {gcg_cache}" if "gcg" in attacks else "")
        + ".",
        "",
        f"    tuco calibrate --benign {out.dir / 'benign.jsonl'} --attacks {out.dir / 'attacks.jsonl'} "
        "--fpr 0.05 --out guard.json   (with this run's --pair and --dtype)",
    ]
    metrics = {"attacks": counts, "benign": len(kept), "shots": shots, "format": format}
    return out.finish([*records, *kept], "\n".join(lines) + "\n", {}, metrics)
