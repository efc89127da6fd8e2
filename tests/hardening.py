"""The hardening sweep of the command line, shared parts: the models and files the cases run on,
how a case is written, and how one runs (``run_case``). The cases: test_hardening_inputs.py (prompt
files, options), test_hardening_outputs.py (results, models, reports); the library's:
test_hardening_api.py.

Every case must end with the exit code of its kind (2: usage or data, 1: model or runtime), a
message that names the thing (file and line, argument, model and file) and never a traceback; a run
that fails never loses results that were there before it; cases that succeed check what they wrote
(no silent wrong result).
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from test_cli import run_tuco

from tuco.testing import byte_tokenizer, perturbed_copy, tiny_model

ROWS = [
    {"id": "a", "prompt": "Hello there, friend.", "label": 1},
    {"id": "b", "prompt": "Once upon a time in a land far away", "label": 0},
    {"id": "c", "messages": [{"role": "user", "content": "How are you?"}], "label": 1},
]
LATIN1 = "caf\xe9".encode("latin-1")


class _Evil:
    """Unpickled unsafely, it would create a file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Model directories, good and broken, a prompt file and a finished results file."""
    root = tmp_path_factory.mktemp("hardening")
    tok = byte_tokenizer()
    pt, gpt2 = tiny_model("llama"), tiny_model("gpt2")  # gpt2: 256 positions
    good = {
        "pt": pt,
        "ft": perturbed_copy(pt, scale=0.3),
        "ft2": perturbed_copy(pt, scale=0.3, seed=2),
        "other": tiny_model("llama", num_hidden_layers=2),
        "vocab300": tiny_model("llama", vocab_size=300),
        "gpt2pt": gpt2,
        "gpt2ft": perturbed_copy(gpt2, scale=0.3),
    }
    for name, model in good.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    for name in ("notok", "badtok", "trunc", "badconfig", "notype"):
        shutil.copytree(root / "ft", root / name)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (root / "notok" / f).unlink()
    (root / "badtok" / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    _truncate(root / "trunc" / "model.safetensors", 1000)
    (root / "badconfig" / "config.json").write_text('{"model_type": "llama", ')
    config = json.loads((root / "ft" / "config.json").read_text())
    (root / "notype" / "config.json").write_text(json.dumps(config | {"model_type": None}))
    (root / "empty").mkdir()
    (root / "afile").write_text("not a model")
    (root / "pickle").mkdir()
    shutil.copy(root / "ft" / "config.json", root / "pickle")
    torch.save(
        {"model.embed_tokens.weight": _Evil(str(root / "PWNED"))}, root / "pickle" / "pytorch_model.bin"
    )
    (root / "remote").mkdir()  # a checkpoint that needs its own code
    custom = config | {"model_type": "xcustom", "auto_map": {"AutoConfig": "conf.XConfig"}}
    (root / "remote" / "config.json").write_text(json.dumps(custom))
    (root / "remote" / "conf.py").write_text(f"open({str(root / 'PWNED2')!r}, 'w')\n")
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(root / "adapter")
    shutil.copytree(root / "adapter", root / "truncadapter")
    _truncate(root / "truncadapter" / "adapter_model.safetensors", 100)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    finished = root / "finished.jsonl"
    proc = run_tuco("score", *_models(root), "--prompts", prompts, "--out", finished, "--quiet")
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(root=root, prompts=prompts, finished=finished)


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def _models(root: Path, ft: str = "ft", pt: str = "pt") -> list:
    return ["--pretrained", root / pt, "--finetuned", root / ft]


@dataclass
class Case:
    """``argv(c)`` must exit with ``rc`` saying every one of ``says``. ``stdin``: text, bytes or
    "closed"; ``patch``: (attribute, replacement) during the run; ``setup(c)`` before it;
    ``check(c)`` after it (what a success wrote)."""

    id: str
    argv: Callable[[Any], list]
    rc: int
    says: tuple[str, ...] = ()
    stdin: str | bytes | None = None
    patch: tuple[str, Any] | None = None
    setup: Callable[[Any], Any] | None = None
    check: Callable[[Any], Any] | None = None


# ---------------------------------------------------------------------- building command lines
def on(c, name: str, content: str | bytes) -> Path:
    """A file ``name`` in the case's directory holding ``content``."""
    path = c.tmp / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def read(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def run(command: str, *rest, prompts=None, out=None, models=None) -> Callable[[Any], list]:
    """``tuco COMMAND`` on the tiny pair, the module's prompts and a new results file, unless
    given: ``prompts``/``out`` are callables of the case (or "-" / the case's old results)."""

    def argv(c) -> list:
        where = prompts(c) if callable(prompts) else prompts or c.prompts_file
        target = {"old": c.out}.get(out, out(c) if callable(out) else c.tmp / "new.jsonl")
        pair = models(c.root) if callable(models) else _models(c.root)
        return [
            command,
            *pair,
            "--prompts",
            where,
            "--out",
            target,
            *[a(c) if callable(a) else a for a in rest],
        ]

    return argv


def bad_file(id: str, name: str, content, *says: str, rc: int = 2, command="score", rest=(), **kw) -> Case:
    return Case(id, run(command, *rest, prompts=lambda c: on(c, name, content)), rc, says, **kw)


def option(id: str, command: str, *rest, says: str | tuple = (), rc: int = 2, check=None, **where) -> Case:
    """``tuco COMMAND REST``; ``where``: ``prompts``, ``out`` or ``models`` of ``run``."""
    return Case(id, run(command, *rest, **where), rc, (says,) if isinstance(says, str) else says, check=check)


def gpt2(root: Path) -> list:
    return _models(root, "gpt2ft", "gpt2pt")


def ids_are(*ids) -> Callable[[Any], None]:
    def check(c) -> None:
        assert [r["id"] for r in read(c.tmp / "new.jsonl")] == list(ids)

    return check


def same_tuco_as(name: str, plain: str) -> Callable[[Any], None]:
    """The case's results equal a run on ``plain`` (the same prompts without the oddity)."""

    def check(c) -> None:
        proc = run_tuco(
            *run("score", "--quiet", prompts=lambda c: on(c, name, plain), out=lambda c: c.tmp / "ref")(c)
        )
        assert proc.returncode == 0, proc.stderr
        got, want = read(c.tmp / "new.jsonl"), read(c.tmp / "ref")
        assert [(r["id"], r["tuco"]) for r in got] == [(r["id"], r["tuco"]) for r in want]

    return check


def chat(*messages) -> str:
    return jsonl({"messages": list(messages)})


def run_case(case: Case, world, tmp_path: Path, monkeypatch, caplog) -> None:
    """Run one case and check what every case must hold (see the module docstring)."""
    c = SimpleNamespace(root=world.root, prompts_file=world.prompts, tmp=tmp_path, out=tmp_path / "r.jsonl")
    shutil.copy(world.finished, c.out)  # finished results, and the settings they were made with
    shutil.copy(world.root / "finished.jsonl.settings.json", tmp_path / "r.jsonl.settings.json")
    if case.setup:
        case.setup(c)
    before = c.out.read_bytes()
    if case.stdin == "closed":
        monkeypatch.setattr(sys, "stdin", None)
    elif case.stdin is not None:
        data = case.stdin.encode() if isinstance(case.stdin, str) else case.stdin
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    if case.patch:
        monkeypatch.setattr(*case.patch)
    proc = run_tuco(*case.argv(c))
    monkeypatch.undo()
    message = proc.stderr + caplog.text  # warnings are logged (and pytest captures the log)
    assert proc.returncode == case.rc, message
    assert "Traceback" not in message
    for text in case.says:
        assert text in message, f"{text!r} not in: {message}"
    if proc.returncode != 0:
        assert "error:" in message
        assert c.out.read_bytes().startswith(before), "a failed run lost results that were there"
    if case.check:
        case.check(c)
