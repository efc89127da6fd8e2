"""The hardening sweep: bad prompt files and bad options (shared parts: hardening.py)."""

from __future__ import annotations

import pytest
import torch
from hardening import (
    LATIN1,
    ROWS,
    Case,
    _models,
    bad_file,
    chat,
    gpt2,
    ids_are,
    jsonl,
    on,
    option,
    read,
    run,
    run_case,
    same_tuco_as,
    world,  # noqa: F401 (the fixture)
)

# ---------------------------------------------------------------------- prompt files
FILE_CASES = [
    option(
        "missing", "score", prompts=lambda c: c.tmp / "nope.jsonl", says="nope.jsonl: no such prompt file"
    ),
    bad_file("empty", "p.jsonl", "", "p.jsonl: no prompts"),
    bad_file("blank-lines", "p.jsonl", "\n \n\n", "no prompts"),
    bad_file("csv-blank", "p.csv", "\n  \n\n", "no prompts"),
    bad_file("csv-header-only", "p.csv", "id,prompt\n", "no prompts"),
    bad_file(
        "csv-no-prompt-column", "p.csv", "id,question\n1,hi\n", "p.csv:2", "no prompt field", "question"
    ),
    bad_file("csv-extra-fields", "p.csv", "id,prompt\n1,hi,there\n", "p.csv:2", "3 fields but the header"),
    bad_file("malformed-json", "p.jsonl", jsonl(ROWS[0], '{"prompt": "x"'), "p.jsonl:2", "malformed JSON"),
    bad_file("json-array", "p.jsonl", "[1, 2]\n", "p.jsonl:1", "expected a JSON object"),
    bad_file("json-string", "p.jsonl", '"hi"\n', "p.jsonl:1", "got str"),
    bad_file("duplicate-id", "p.jsonl", jsonl(ROWS[0], ROWS[0]), "p.jsonl:2", "duplicate id 'a'"),
    bad_file("prompt-number", "p.jsonl", jsonl({"prompt": 3}), "p.jsonl:1", "not int"),
    bad_file("prompt-null", "p.jsonl", jsonl({"prompt": None}), "p.jsonl:1", "not NoneType"),
    bad_file("prompt-empty", "p.jsonl", jsonl({"prompt": ""}), "p.jsonl:1", "empty prompt"),
    bad_file("prompt-blank", "p.jsonl", jsonl({"prompt": " \t "}), "p.jsonl:1", "empty prompt"),
    bad_file("chat-empty", "p.jsonl", jsonl({"messages": []}), "p.jsonl:1", "an empty chat"),
    bad_file("chat-no-content", "p.jsonl", chat({"role": "user"}), "p.jsonl:1", "message 0 is not"),
    bad_file(
        "chat-content-number", "p.jsonl", chat({"role": "user", "content": 5}), "'content' must be a string"
    ),
    bad_file("chat-role-null", "p.jsonl", chat({"role": None, "content": "x"}), "'role' must be a string"),
    bad_file(
        "chat-all-blank", "p.jsonl", chat({"role": "user", "content": " "}), "p.jsonl:1", "empty prompt"
    ),
    bad_file(
        "chat-is-dict", "p.jsonl", jsonl({"messages": {"role": "user"}}), "string or a list of messages"
    ),
    bad_file("csv-chat-not-json", "p.csv", 'messages\n"[{oops"\n', "p.csv:2", "not a JSON list"),
    bad_file(
        "latin1-jsonl",
        "p.jsonl",
        b'{"prompt": "ok"}\n{"prompt": "' + LATIN1 + b'"}\n',
        "p.jsonl:2",
        "not UTF-8",
        "byte 0xe9",
        "iconv",
    ),
    bad_file("latin1-text", "p.txt", b"one\ntwo\n" + LATIN1 + b"\n", "p.txt:3", "not UTF-8", "column 4"),
    bad_file("latin1-csv", "p.csv", b"prompt\n" + LATIN1 + b"\n", "p.csv:2", "not UTF-8"),
    bad_file("utf16", "p.jsonl", jsonl(ROWS[0]).encode("utf-16"), "p.jsonl: UTF-16", "iconv"),
    bad_file(
        "bom-jsonl", "p.jsonl", "\ufeff" + jsonl(*ROWS), rc=0, check=same_tuco_as("q.jsonl", jsonl(*ROWS))
    ),
    bad_file(
        "bom-csv",
        "p.csv",
        "\ufeffid,prompt\nx,Hi there\n",
        rc=0,
        check=same_tuco_as("q.csv", "id,prompt\nx,Hi there\n"),
    ),
    bad_file(
        "bom-text",
        "p.txt",
        "\ufeffHello there\nSecond\n",
        rc=0,
        check=same_tuco_as("q.txt", "Hello there\nSecond\n"),
    ),
    bad_file(
        "crlf-text",
        "p.txt",
        "Hello there\r\nSecond\r\n",
        rc=0,
        check=same_tuco_as("q.txt", "Hello there\nSecond\n"),
    ),
    bad_file("parquet-corrupt", "p.parquet", b"PAR1 garbage", "p.parquet", "not a readable Parquet"),
    option("field-missing", "score", "--field", "question", says=("prompts.jsonl:1", "expected 'question'")),
    option("prompts-directory", "score", prompts=lambda c: c.tmp, says="is a directory"),
    Case("stdin-closed", run("score", prompts="-"), 2, ("stdin is closed",), stdin="closed"),
    Case("stdin-empty", run("score", prompts="-"), 2, ("stdin: no prompts",), stdin=b""),
    Case(
        "stdin-latin1",
        run("score", prompts="-"),
        2,
        ("<stdin>:2", "not UTF-8"),
        stdin=b"fine\n" + LATIN1 + b"\n",
    ),
    Case(
        "stdin-bom",
        run("score", "--quiet", prompts="-"),
        0,
        stdin="\ufeff" + jsonl(ROWS[0]),
        check=ids_are("a"),
    ),
    bad_file(
        "skip-invalid-all",
        "p.jsonl",
        jsonl({"prompt": ""}, "no"),
        "all 2 records are invalid",
        rest=["--skip-invalid"],
    ),
    bad_file(
        "skip-invalid-some",
        "p.jsonl",
        jsonl({"prompt": ""}, ROWS[0], "no"),
        "p.jsonl:1",
        "p.jsonl:3",
        "1 new records",
        "(2 skipped)",
        rc=0,
        rest=["--skip-invalid"],
        check=ids_are("a"),
    ),
    option("format-mismatch", "score", "--input-format", "csv", says="no prompt field"),
    bad_file(
        "answer-not-a-choice",
        "p.jsonl",
        jsonl({"prompt": "Q?", "answer": "Maybe"}),
        "p.jsonl:1",
        "'Maybe' is not one of the choices",
        command="sweep",
        rest=["--choices", "Yes", "No"],
    ),
    bad_file(
        "choices-same-token",
        "p.jsonl",
        jsonl({"prompt": "Q?", "choices": ["Yes", "Yesterday"]}),
        "p.jsonl:1",
        "start with the same token",
        command="sweep",
    ),
    bad_file(
        "choices-single",
        "p.jsonl",
        jsonl({"prompt": "Q?", "choices": ["Yes"]}),
        "p.jsonl:1",
        "no answer choices",
        command="sweep",
    ),
    Case(
        "longer-than-context",
        run("score", prompts=lambda c: on(c, "p.jsonl", jsonl({"prompt": "x" * 300})), models=gpt2),
        2,
        ("p.jsonl:1", "tokens, more than the model's context of 256", "--truncate left"),
    ),
    Case(
        "longer-than-context-truncated",
        run(
            "generate",
            "--truncate",
            "left",
            "--max-new-tokens",
            "4",
            "--quiet",
            prompts=lambda c: on(c, "p.jsonl", jsonl({"prompt": "x" * 300})),
            models=gpt2,
        ),
        0,
        check=lambda c: (
            [r["n_tokens"] for r in read(c.tmp / "new.jsonl")] == [252] or pytest.fail("not cut to 256-4")
        ),
    ),
    Case(
        "prompt-and-new-tokens-over-context",
        run(
            "generate",
            "--max-new-tokens",
            "10",
            prompts=lambda c: on(c, "p.jsonl", jsonl({"prompt": "x" * 250})),
            models=gpt2,
        ),
        2,
        ("p.jsonl:1", "context of 256 positions less --max-new-tokens 10"),
    ),
    option(
        "longer-than-max-length",
        "score",
        "--max-length",
        "5",
        says=("prompts.jsonl:1", "more than --max-length 5"),
    ),
    option(
        "chat-without-template", "score", "--no-chat-template", says=("prompts.jsonl:3", "--no-chat-template")
    ),
]

# ---------------------------------------------------------------------- options
OPTION_CASES = [
    option("batch-size-0", "score", "--batch-size", "0", says="--batch-size: must be at least 1, not 0"),
    option("batch-size-negative", "score", "--batch-size", "-1", says="--batch-size"),
    option("batch-size-text", "score", "--batch-size", "x", says="--batch-size: must be an integer"),
    option("max-length-0", "score", "--max-length", "0", says="--max-length: must be at least 1"),
    option("max-length-negative", "score", "--max-length", "-5", "--truncate", "left", says="--max-length"),
    option(
        "max-length-over-context",
        "score",
        "--max-length",
        "5000",
        says=("--max-length 5000", "context of 2048"),
    ),
    option(
        "max-new-tokens-over-context",
        "generate",
        "--max-new-tokens",
        "300",
        models=gpt2,
        says="leaves no room",
    ),
    option("max-new-tokens-0", "generate", "--max-new-tokens", "0", says="--max-new-tokens"),
    option("alpha-nan", "generate", "--alpha", "nan", says="--alpha: must be a finite number, not nan"),
    option("alpha-inf", "generate", "--alpha", "1", "inf", says="--alpha: must be a finite number"),
    option("alpha-minus-inf", "sweep", "--alpha", "-inf", "--choices", "A", "B", says="--alpha"),
    option("alpha-repeated", "generate", "--alpha", "1", "1.0", says="an alpha is repeated"),
    option("alpha-text", "generate", "--alpha", "one", says="must be a number, not 'one'"),
    option("temperature-greedy", "generate", "--temperature", "0.7", says="only with --do-sample"),
    option(
        "temperature-0",
        "generate",
        "--do-sample",
        "--temperature",
        "0",
        says="--temperature: must be a finite",
    ),
    option("temperature-nan", "generate", "--do-sample", "--temperature", "nan", says="--temperature"),
    option("top-p-over-1", "generate", "--do-sample", "--top-p", "1.5", says="--top-p: must be in (0, 1]"),
    option("top-p-0", "generate", "--do-sample", "--top-p", "0", says="--top-p"),
    option("top-k-0", "generate", "--do-sample", "--top-k", "0", says="--top-k"),
    option("choices-one", "sweep", "--choices", "Yes", says="two or more different answers"),
    option("choices-repeated", "sweep", "--choices", "Yes", "Yes", says="two or more different answers"),
    option(
        "choices-same-first-token", "sweep", "--choices", "Yes", "Yesterday", says=("--choices", "same token")
    ),
    option("choices-empty", "sweep", "--choices", "", "No", says=("--choices", "is empty")),
    option("device-cuda-index", "score", "--device", "cuda:99", says="--device cuda:99"),
    *(
        []
        if torch.cuda.is_available()
        else [option("device-cuda", "score", "--device", "cuda", says="sees no CUDA GPU")]
    ),
    option("device-unknown", "score", "--device", "gpu", says="--device 'gpu' is not a device"),
    option("device-map-bad-json", "score", "--device-map", "{bad", says="--device-map is not valid JSON"),
    option("device-map-json-list", "score", "--device-map", "[1]", says="--device-map"),
    option("device-map-unknown", "score", "--device-map", "banana", says="--device-map 'banana'"),
    option("device-and-map", "score", "--device", "cpu", "--device-map", "auto", says="not both"),
    option("dtype-unknown", "score", "--dtype", "float64", says="--dtype: invalid choice"),
    option("norm-unknown", "score", "--norm", "l3", says="--norm: invalid choice"),
    option("seed-negative", "score", "--seed", "-1", says="--seed: must be at least 0"),
    option(
        "resume-and-overwrite", "score", "--resume", "--overwrite", says="--resume or --overwrite, not both"
    ),
    option(
        "out-csv", "score", "--format", "csv", out=lambda c: c.tmp / "r.csv", says=("r.csv", "--format csv")
    ),
    option("out-is-directory", "score", out=lambda c: c.tmp, says="is a directory"),
    option("out-under-a-file", "score", out=lambda c: on(c, "f", "x") / "r.jsonl", says="is a file"),
    Case("out-missing", lambda c: ["score", "--prompts", c.prompts_file], 2, ("--out",)),
    option("prompts-and-dataset", "score", "--dataset", "x", says="not allowed with"),
    Case(
        "dataset-missing",
        lambda c: ["score", "--dataset", c.tmp / "nope", "--out", c.tmp / "n.jsonl"],
        2,
        ("dataset",),
    ),
    option("pair-unknown", "score", models=lambda root: ["--pair", "no-such-pair"], says="no-such-pair"),
    option(
        "pair-and-pretrained",
        "score",
        models=lambda root: ["--pair", "demo", "--pretrained", root / "pt"],
        says="not both",
    ),
    option("pretrained-alone", "score", models=lambda root: ["--pretrained", root / "pt"], says="--adapter"),
    option(
        "finetuned-and-adapter",
        "score",
        "--adapter",
        lambda c: c.root / "adapter",
        says="exactly one of --finetuned",
    ),
    Case("command-unknown", lambda c: ["scores"], 2, ("invalid choice",)),
]
EXPERIMENT = ["experiment", "steering", "--limit", "1"]
OPTION_CASES += [
    Case(
        "experiment-limit-0",
        lambda c: [*EXPERIMENT, *_models(c.root), "--out", c.tmp / "e", "--limit", "0"],
        2,
        ("--limit: must be at least 1",),
    ),
    Case(
        "experiment-batch-0",
        lambda c: [*EXPERIMENT, *_models(c.root), "--out", c.tmp / "e", "--batch-size", "0"],
        2,
        ("--batch-size",),
    ),
    Case(
        "experiment-alpha-nan",
        lambda c: [*EXPERIMENT, *_models(c.root), "--out", c.tmp / "e", "--alpha", "nan"],
        2,
        ("--alpha",),
    ),
    Case(
        "experiment-requests-missing",
        lambda c: [*EXPERIMENT, *_models(c.root), "--out", c.tmp / "e", "--requests", c.tmp / "h.csv"],
        2,
        (
            "--requests",
            "h.csv: no such file",
        ),
    ),
    Case(
        "experiment-device-unknown",
        lambda c: [*EXPERIMENT, *_models(c.root), "--out", c.tmp / "e", "--device", "tpu9"],
        2,
        ("--device 'tpu9'",),
    ),
    option("device-map-index", "score", "--device-map", '{"": 7}', says="--device-map cuda:7"),
    Case(
        "experiment-out-is-file",
        lambda c: [*EXPERIMENT, *_models(c.root), "--out", on(c, "f", "x")],
        2,
        ("is a file",),
    ),
]

CLASSES = {"prompt files": FILE_CASES, "options": OPTION_CASES}
CASES = FILE_CASES + OPTION_CASES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, world, tmp_path, monkeypatch, caplog):  # noqa: F811
    run_case(case, world, tmp_path, monkeypatch, caplog)
