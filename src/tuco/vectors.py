"""Per-layer PTC and FTC vectors on disk: sharded safetensors with an index, for dictionary training.

A directory holds ``index.json`` and ``vectors-00000.safetensors``, ... Each shard has ``ptc`` and
``ftc`` [rows, L, d] (float32) and ``offsets`` [n + 1] (prompt i's rows are offsets[i]:offsets[i+1]:
one row, its last token, or one per token with ``per_token``). The index names the shards, the
prompt ids and token counts in each, the layers, width, dtype and models. Shards are written whole
(a temporary file, then renamed) before the index names them, so an interrupted run keeps every
finished shard and resumes after it.

    >>> out = VectorWriter("vecs", meta={"finetuned": "F"}, layers=30, width=576)
    >>> out.write(["a", "b"], [ptc_a, ptc_b], [ftc_a, ftc_b])          # [rows, L, d] each
    >>> for item in load_vectors("vecs"): item["id"], item["ftc"].shape   # [rows, L, d]
    >>> ds = vectors_dataset("vecs")                                     # a datasets.Dataset
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .errors import RunError, SettingsMismatchError, UsageError

FORMAT = "tuco-vectors/1"
INDEX = "index.json"


def estimate_bytes(rows: int, layers: int, width: int, itemsize: int = 4) -> int:
    """Bytes of ``rows`` rows of PTC and FTC vectors, [L, d] each."""
    return 2 * rows * layers * width * itemsize


def check_room(directory: str | Path, needed: int) -> None:
    """Refuse (``RunError``) when the disk under ``directory`` has less than ``needed`` bytes free."""
    path = Path(directory)
    while not path.exists():
        path = path.parent
    free = shutil.disk_usage(path).free
    if needed > free:
        raise RunError(
            f"{directory}: the vectors need about {needed / 1e9:.2f} GB and the disk has "
            f"{free / 1e9:.2f} GB free: free some space, choose another directory, or score fewer prompts."
        )


class VectorWriter:
    """Append shards of vectors to ``directory``; ``resume`` keeps what an earlier run with the same
    ``meta`` wrote (``done``: its prompt ids), ``overwrite`` starts again."""

    def __init__(
        self,
        directory: str | Path,
        meta: dict,
        layers: int,
        width: int,
        per_token: bool = False,
        resume: bool = False,
        overwrite: bool = False,
    ):
        self.dir = Path(directory)
        head = {
            "format": FORMAT,
            "layers": layers,
            "width": width,
            "dtype": "float32",
            "per_token": per_token,
        }
        self.index = head | {"meta": meta, "shards": []}
        index = self.dir / INDEX
        if index.exists() and not overwrite:
            if not resume:
                raise UsageError(
                    f"{self.dir} already holds vectors: pass --resume to continue or --overwrite."
                )
            old = json.loads(index.read_text(encoding="utf-8"))
            changed = [
                k for k in ("format", "layers", "width", "per_token", "meta") if old.get(k) != self.index[k]
            ]
            if changed:
                raise SettingsMismatchError(
                    f"{self.dir} holds vectors made with other settings ({', '.join(changed)}): rerun "
                    "with the same settings to resume, pass --overwrite to replace them, or choose "
                    "another directory."
                )
            self.index["shards"] = old["shards"]
        elif overwrite and self.dir.exists():
            for old_file in self.dir.glob("vectors-*.safetensors"):
                old_file.unlink()
        self.done = {i for shard in self.index["shards"] for i in shard["ids"]}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._save_index()
        except OSError as e:
            raise RunError(f"{self.dir}: cannot write the vectors' index ({e.strerror or e})") from e

    def write(self, ids: Sequence, ptc: Sequence[torch.Tensor], ftc: Sequence[torch.Tensor]) -> None:
        """One shard: prompt ``ids[i]``'s vectors ``ptc[i]``, ``ftc[i]`` [rows_i, L, d]."""
        from safetensors.torch import save_file

        rows = [t.shape[0] for t in ptc]
        offsets = torch.tensor([0, *rows]).cumsum(0)
        name = f"vectors-{len(self.index['shards']):05d}.safetensors"
        tensors = {
            "ptc": torch.cat(list(ptc)).float().contiguous(),
            "ftc": torch.cat(list(ftc)).float().contiguous(),
            "offsets": offsets,
        }
        tmp = self.dir / (name + ".tmp")
        try:
            save_file(tensors, str(tmp))
            os.replace(tmp, self.dir / name)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise RunError(f"{self.dir / name}: cannot write the vectors ({e.strerror or e})") from e
        self.index["shards"].append({"file": name, "ids": list(ids), "rows": rows})
        self.done.update(ids)
        self._save_index()

    def _save_index(self) -> None:
        tmp = self.dir / (INDEX + ".tmp")
        tmp.write_text(json.dumps(self.index, indent=1), encoding="utf-8")
        os.replace(tmp, self.dir / INDEX)


def read_index(directory: str | Path) -> dict:
    path = Path(directory) / INDEX
    if not path.exists():
        raise UsageError(
            f"{directory}: no {INDEX}: not a directory of tuco vectors (tuco score --save-vectors)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def load_vectors(directory: str | Path) -> Iterator[dict]:
    """Each prompt's ``{"id", "ptc", "ftc"}`` ([rows, L, d] float32 tensors), shard by shard."""
    from safetensors.torch import load_file

    for shard in read_index(directory)["shards"]:
        tensors = load_file(str(Path(directory) / shard["file"]))
        offsets = tensors["offsets"].tolist()
        for i, prompt_id in enumerate(shard["ids"]):
            rows = slice(offsets[i], offsets[i + 1])
            yield {"id": prompt_id, "ptc": tensors["ptc"][rows], "ftc": tensors["ftc"][rows]}


def vectors_dataset(directory: str | Path, which: str = "ftc"):
    """A ``datasets.Dataset`` of one row per vector: ``id``, ``layer``, ``token`` (its row within
    the prompt) and ``vector`` ([d]) of ``which`` ("ftc" or "ptc"), the usual input of a sparse
    autoencoder."""
    import datasets

    if which not in ("ftc", "ptc"):
        raise UsageError(f"which must be ftc or ptc, not {which!r}")

    def rows():
        for item in load_vectors(directory):
            for token, per_layer in enumerate(item[which]):
                for layer, vector in enumerate(per_layer):
                    yield {"id": str(item["id"]), "layer": layer, "token": token, "vector": vector.numpy()}

    return datasets.Dataset.from_generator(rows)
