"""The hardening sweep: results never lost or mixed, models that do not load, bad reports
(shared parts: hardening.py)."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest
from hardening import (
    LATIN1,
    ROWS,
    Case,
    _models,
    _truncate,
    ids_are,
    jsonl,
    on,
    option,
    read,
    run,
    run_case,
    world,  # noqa: F401 (the fixture)
)


# ---------------------------------------------------------------------- results: never lost, never mixed
def resume(id: str, *rest, says=(), rc: int = 2, models=None, **kw) -> Case:
    return Case(
        id,
        run("score", *rest, out="old", models=models),
        rc,
        (says,) if isinstance(says, str) else says,
        **kw,
    )


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def hold_lock(c) -> None:
    from tuco.store import OutputLock

    c.lock = OutputLock(c.out)


def overwritten(c) -> None:
    records = read(c.out)
    assert [r["id"] for r in records] == ["a", "b", "c"] and all(
        r["finetuned"].endswith("ft2") for r in records
    )
    assert sorted(p.name for p in c.tmp.iterdir()) == [
        "r.jsonl",
        "r.jsonl.settings.json",
    ]  # no temporary left


def torn(c, text: str = '"id": "b"', torn_text: str = '"id": "b') -> str:
    return c.out.read_text().replace(text, torn_text, 1)


RESULTS_CASES = [
    resume("exists", says=("already exists", "--resume", "--overwrite")),
    resume(
        "overwrite-model-typo",
        "--overwrite",
        models=lambda root: _models(root, "typo_dir"),
        rc=1,
        says="typo_dir",
    ),
    Case(
        "overwrite-no-prompts",
        run("score", "--overwrite", out="old", prompts=lambda c: c.tmp / "no.jsonl"),
        2,
        ("no such",),
    ),
    Case(
        "overwrite-bad-data",
        run("score", "--overwrite", out="old", prompts=lambda c: on(c, "p.jsonl", "{\n")),
        2,
        ("p.jsonl:1",),
    ),
    resume("overwrite-max-length", "--overwrite", "--max-length", "9999", says="context of 2048"),
    resume("overwrite-bad-device", "--overwrite", "--device", "gpu", says="not a device"),
    resume(
        "overwrite-incompatible",
        "--overwrite",
        models=lambda root: _models(root, "other"),
        rc=1,
        says="num_hidden_layers",
    ),
    resume(
        "overwrite-full-disk",
        "--overwrite",
        rc=1,
        says=("r.jsonl: no space left", "untouched"),
        patch=("tuco.store.os.fsync", full_disk),
    ),
    resume(
        "overwrite-succeeds",
        "--overwrite",
        "--quiet",
        models=lambda root: _models(root, "ft2"),
        rc=0,
        check=overwritten,
    ),
    resume(
        "resume-other-finetuned",
        "--resume",
        models=lambda root: _models(root, "ft2"),
        says=("other settings", "ft2"),
    ),
    resume("resume-other-norm", "--resume", "--norm", "l2", says="norm: 'l1' -> 'l2'"),
    resume("resume-per-token", "--resume", "--per-token", says="per_token: False -> True"),
    resume("resume-baselines", "--resume", "--output-baselines", says="baselines: False -> True"),
    Case(
        "resume-other-prompts",
        run("score", "--resume", out="old", prompts=lambda c: on(c, "p.jsonl", jsonl(*ROWS))),
        2,
        ("prompts:",),
    ),
    Case(
        "resume-other-command", run("generate", "--resume", out="old"), 2, ("command: 'score' -> 'generate'",)
    ),
    resume(
        "resume-system-prompt",
        "--resume",
        "--system-prompt",
        "Be brief.",
        says="system_prompt: None -> 'Be brief.'",
    ),
    resume("resume-max-length", "--resume", "--max-length", "100", says="max_length: None -> 100"),
    resume("resume-other-dtype", "--resume", "--dtype", "bfloat16", says="dtype: 'auto' -> 'bfloat16'"),
    resume("resume-finished", "--resume", rc=0, says="0 new records"),
    resume(
        "resume-torn-middle",
        "--resume",
        says=("r.jsonl:2", "in the middle"),
        setup=lambda c: c.out.write_text(torn(c)),
    ),
    resume(
        "resume-torn-last",
        "--resume",
        rc=0,
        says=("r.jsonl:3: half-written last line dropped", "1 new records"),
        setup=lambda c: _truncate(c.out, len(c.out.read_bytes()) - 30),
        check=lambda c: [r["id"] for r in read(c.out)] == ["a", "b", "c"] or pytest.fail("not redone"),
    ),
    resume(
        "resume-not-results",
        "--resume",
        says=("r.jsonl:1", "unreadable"),
        setup=lambda c: c.out.write_text("[1]\n[2]\n"),
    ),
    resume(
        "locked", "--resume", says="another tuco run (pid", setup=hold_lock, check=lambda c: c.lock.release()
    ),
    resume(
        "stale-lock-file",
        "--resume",
        rc=0,
        setup=lambda c: (c.tmp / "r.jsonl.lock").write_text("999999"),
        check=lambda c: not (c.tmp / "r.jsonl.lock").exists() or pytest.fail("lock left behind"),
    ),
    resume(
        "resume-full-disk",
        "--resume",
        rc=1,
        says=("r.jsonl: no space left", "the 1 records written before are kept", "--resume"),
        setup=lambda c: c.out.write_text(c.out.read_text().splitlines(keepends=True)[0]),
        patch=("tuco.store.os.fsync", full_disk),
    ),
    option(
        "convert-keeps-jsonl",
        "score",
        "--format",
        "parquet",
        rc=0,
        says="new.parquet",
        check=lambda c: (
            ids_are("a", "b", "c")(c) or (c.tmp / "new.parquet").exists() or pytest.fail("no parquet")
        ),
    ),
]


def earlier_experiment(c) -> None:
    (c.tmp / "e" / "steps").mkdir(parents=True)
    (c.tmp / "e" / "settings.json").write_text('{"limit": 9}\n')
    (c.tmp / "e" / "steps" / "answers.jsonl").write_text('{"id": 1}\n')


def experiment_kept(c) -> None:
    assert (c.tmp / "e" / "settings.json").read_text() == '{"limit": 9}\n'
    assert (c.tmp / "e" / "steps" / "answers.jsonl").read_text() == '{"id": 1}\n'


def lock_experiment(c) -> None:
    from tuco.store import OutputLock

    c.lock = OutputLock(c.tmp / "e", c.tmp / "e" / ".lock")


def experiment(models: str = "ft", *rest) -> Callable[[Any], list]:
    return lambda c: ["experiment", "steering", *_models(c.root, models), "--out", c.tmp / "e", *rest]


RESULTS_CASES += [
    Case(
        "experiment-overwrite-model-typo",
        experiment("typo_dir", "--overwrite"),
        1,
        ("typo_dir",),
        setup=earlier_experiment,
        check=experiment_kept,
    ),
    Case(
        "experiment-other-settings",
        experiment(),
        2,
        ("other settings", "--overwrite"),
        setup=earlier_experiment,
    ),
    Case(
        "experiment-locked",
        experiment(),
        2,
        ("another tuco run (pid",),
        setup=lock_experiment,
        check=lambda c: c.lock.release(),
    ),
]


# ---------------------------------------------------------------------- models
def model(id: str, ft: str, *says: str, rc: int = 1, **kw) -> Case:
    return Case(id, run("score", "--quiet", models=lambda root: _models(root, ft)), rc, says, **kw)


def adapter(id: str, name: str, *says: str) -> Case:
    return Case(
        id, run("score", models=lambda root: ["--pretrained", root / "pt", "--adapter", root / name]), 1, says
    )


MODEL_CASES = [
    model("finetuned-typo", "typo_dir", "finetuned model", "there is no directory"),
    Case(
        "pretrained-typo",
        run("score", models=lambda root: _models(root, pt="typo_dir")),
        1,
        ("pretrained model", "typo_dir"),
    ),
    Case(
        "hub-id-offline",
        run("score", models=lambda root: ["--pretrained", "nobody/no-model", "--finetuned", root / "ft"]),
        1,
        ("'nobody/no-model'", "HF_HUB_OFFLINE=1"),
    ),
    adapter("adapter-typo", "typo_adapter", "adapter", "typo_adapter"),
    adapter("adapter-truncated", "truncadapter", "adapter", "truncadapter", "truncated or corrupt"),
    model("weights-truncated", "trunc", "finetuned model", "model.safetensors", "truncated or corrupt"),
    model(
        "malicious-pickle",
        "pickle",
        "pytorch_model.bin",
        "refuses to load safely",
        check=lambda c: not (c.root / "PWNED").exists() or pytest.fail("the pickle ran"),
    ),
    model(
        "remote-code",
        "remote",
        "--trust-remote-code",
        check=lambda c: not (c.root / "PWNED2").exists() or pytest.fail("ran"),
    ),
    model("config-malformed", "badconfig", "finetuned model", "badconfig", "config.json"),
    model("config-no-model-type", "notype", "finetuned model", "notype"),
    model("architecture-mismatch", "other", "num_hidden_layers"),
    model("tokenizer-broken", "badtok", "finetuned model's tokenizer", "badtok"),
    model(
        "tokenizer-absent",
        "notok",
        "has no tokenizer files",
        "pretrained model's",
        rc=0,
        check=ids_are("a", "b", "c"),
    ),
    model("vocab-grown", "vocab300", rc=0, check=ids_are("a", "b", "c")),  # added chat tokens: still a pair
    model("model-is-a-file", "afile", "is a file"),
    model("model-dir-empty", "empty", "no model files"),
    Case("check-typo", lambda c: ["check", *_models(c.root, "typo_dir")], 1, ("finetuned model", "typo_dir")),
]


# ---------------------------------------------------------------------- reports
def report(id: str, content, *says: str, rc: int = 2, name: str = "rep.jsonl", rest=(), **kw) -> Case:
    def argv(c) -> list:
        source = on(c, name, content(c) if callable(content) else content) if content is not None else c.out
        return ["report", source, "--out", c.tmp / "report.html", *rest]

    return Case(id, argv, rc, says, **kw)


REPORT_CASES = [
    Case(
        "report-missing",
        lambda c: ["report", c.tmp / "no.jsonl", "--out", c.tmp / "r.html"],
        2,
        ("no such results",),
    ),
    report("report-empty", "", "rep.jsonl: no records"),
    report("report-torn-middle", torn, "rep.jsonl:2", "unreadable line"),
    report(
        "report-torn-last",
        lambda c: c.out.read_bytes()[:-30],
        "rep.jsonl:3: half-written last line left out",
        rc=0,
        check=lambda c: (c.tmp / "report.html").exists() or pytest.fail("no report"),
    ),
    report("report-latin1", b'{"tuco": 0.5, "x": "' + LATIN1 + b'"}\n', "rep.jsonl:1"),
    report("report-not-objects", "[1]\n", "rep.jsonl:1", "not a JSON object"),
    report("report-not-results", jsonl(*ROWS), "no tuco, sweep or generate results"),
    report(
        "report-group-by-missing", None, "--group-by 'nosuch'", "fields: id", rest=["--group-by", "nosuch"]
    ),
    Case(
        "report-out-full-disk",
        lambda c: ["report", c.out, "--out", "/dev/full"],
        1,
        ("/dev/full: cannot write",),
    ),
    report("report-parquet-corrupt", b"PAR1 nope", "rep.parquet: not a readable parquet", name="rep.parquet"),
]

CLASSES = {"results": RESULTS_CASES, "models": MODEL_CASES, "reports": REPORT_CASES}
CASES = RESULTS_CASES + MODEL_CASES + REPORT_CASES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, world, tmp_path, monkeypatch, caplog):  # noqa: F811
    run_case(case, world, tmp_path, monkeypatch, caplog)
