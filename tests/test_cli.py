"""The `tuco` command through its real entry point, on tiny random pairs saved to directories."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from tuco import cli
from tuco.testing import byte_tokenizer, perturbed_copy, tiny_model

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    tok = byte_tokenizer()
    pt = tiny_model("llama")
    models = {
        "pt": pt,
        "ft": perturbed_copy(pt, scale=0.3),
        "other": tiny_model("llama", num_hidden_layers=2),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


def models(dirs, ft="ft"):
    return ["--pretrained", str(dirs / "pt"), "--finetuned", str(dirs / ft)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_tuco(*args):
    """``tuco ARGS`` in this process: returncode, stdout and stderr, like ``subprocess.run``'s result."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            rc = e.code
    return SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


def run_tuco_process(*args):
    """``tuco ARGS`` in a new process: where the process boundary is the point (kill, stdin)."""
    return subprocess.run([sys.executable, "-m", "tuco", *args], env=ENV, capture_output=True, text=True)


ROWS = [
    {"id": "a", "prompt": "Hello there, friend.", "group": "chat", "label": 1},
    {"id": "b", "prompt": "Once upon a time in a land far away", "group": "web", "label": 0},
    {"id": "c", "messages": [{"role": "user", "content": "How are you?"}], "group": "chat", "label": 1},
    {"prompt": "The river flows to the sea.", "group": "web", "label": 0},
]


def test_score_jsonl_round_trip(dirs, tmp_path, cpu_branch):
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS)
    out = tmp_path / "r.jsonl"
    proc = run_tuco(
        "score",
        *models(dirs),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--output-baselines",
        "--per-token",
        "--format",
        "parquet",
        "--batch-size",
        "3",
    )
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["a", "b", "c", 3]  # input order; default id = position
    assert [r["group"] for r in records] == [r["group"] for r in ROWS]  # extra fields carried
    for r in records:
        assert 0 < r["tuco"] < 1 and len(r["ftc_layers"]) == len(r["beta"]) == 3
        assert (
            r["tuco_tokens"][-1] == pytest.approx(r["tuco"], abs=1e-6)
            and len(r["tuco_tokens"]) == r["n_tokens"]
        )
        assert 0 < r["outputco"] < 1 and r["kl"] >= 0
        assert r["alpha"] == 1.0 and r["finetuned"] == str(dirs / "ft")
        assert r["dtype"] == ("bfloat16" if cpu_branch else "float32")  # --dtype auto, from the hardware
    # the same numbers as the Python API (whose default is the same "auto") with the chat template
    from tuco import ModelPair

    pair = ModelPair.from_pretrained(str(dirs / "pt"), str(dirs / "ft"))
    chats = [[{"role": "user", "content": r["prompt"]}] if "prompt" in r else r["messages"] for r in ROWS]
    api = pair.score(chats, batch_size=3, per_token=True)  # --per-token: the same (general) path
    assert [r["tuco"] for r in records] == pytest.approx([r.tuco for r in api], rel=1e-5)
    frame = pd.read_parquet(out.with_suffix(".parquet"))
    assert list(frame["id"].astype(str)) == ["a", "b", "c", "3"] and frame["tuco"].tolist() == pytest.approx(
        [r["tuco"] for r in records]
    )


def test_resume_after_kill_equals_uninterrupted_run(dirs, tmp_path):
    rows = [{"id": i, "prompt": f"Prompt number {i}: " + "words " * (i % 7)} for i in range(160)]
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    args = ["score", *models(dirs), "--prompts", str(prompts), "--batch-size", "4", "--quiet"]
    full = tmp_path / "full.jsonl"
    assert run_tuco_process(*args, "--out", str(full)).returncode == 0

    part = tmp_path / "part.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuco", *args, "--out", str(part)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and (not part.exists() or part.read_text().count("\n") < 9):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = part.read_bytes()
    assert 0 < written.count(b"\n") < len(rows), "the run was not interrupted mid-way"
    part.write_bytes(written[:-25])  # as if killed in the middle of writing a line
    assert run_tuco_process(*args, "--out", str(part)).returncode == 2  # exists: needs --resume
    proc = run_tuco_process(*args, "--out", str(part), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "half-written" in proc.stderr
    assert part.read_bytes() == full.read_bytes()


def test_resume_without_the_settings_file_checks_the_records(dirs, tmp_path, cpu_branch):
    """A run killed between its first records and its settings file (or made by an older tuco)."""
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS[:3])
    out = tmp_path / "r.jsonl"
    args = ["score", *models(dirs), "--prompts", prompts, "--out", out, "--quiet"]
    assert run_tuco(*args).returncode == 0
    (tmp_path / "r.jsonl.settings.json").unlink()
    proc = run_tuco(*args, "--resume")  # --dtype auto vs the records' resolved dtype: the same run
    assert proc.returncode == 0 and "0 new records" in proc.stderr, proc.stderr
    resolved, other = ("bfloat16", "float32") if cpu_branch else ("float32", "bfloat16")
    proc = run_tuco(*args, "--resume", "--dtype", other)
    assert proc.returncode == 2 and f"dtype: '{resolved}' -> '{other}'" in proc.stderr
    same_twice = ["--pretrained", dirs / "pt", "--finetuned", dirs / "pt"]
    other = run_tuco("score", *same_twice, "--prompts", prompts, "--out", out, "--quiet", "--resume")
    assert other.returncode == 2 and "finetuned:" in other.stderr


def main_rc(capsys, *args):
    rc = cli.main(list(args))
    return rc, capsys.readouterr().err


def test_malformed_json_names_file_and_line(dirs, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"prompt": "broken\n')
    rc, err = main_rc(
        capsys, "score", *models(dirs), "--prompts", str(prompts), "--out", str(tmp_path / "r.jsonl")
    )
    assert rc == 2 and f"{prompts}:2: malformed JSON" in err


def test_missing_prompt_field_lists_fields_found(dirs, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"question": "q", "category": "x"}])
    rc, err = main_rc(
        capsys, "score", *models(dirs), "--prompts", str(prompts), "--out", str(tmp_path / "r.jsonl")
    )
    assert rc == 2 and "no prompt field" in err and "fields found: question, category" in err


def test_empty_prompt_is_an_error_or_skipped(dirs, tmp_path, capsys):
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "fine"}, {"prompt": "  "}, {"prompt": "also fine"}]
    )
    out = tmp_path / "r.jsonl"
    rc, err = main_rc(capsys, "score", *models(dirs), "--prompts", str(prompts), "--out", str(out))
    assert rc == 2 and f"{prompts}:2: empty prompt" in err and "--skip-invalid" in err
    rc, err = main_rc(
        capsys,
        "score",
        *models(dirs),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--skip-invalid",
        "--overwrite",
    )
    assert rc == 0 and "(1 skipped)" in err
    assert [r["id"] for r in read_jsonl(out)] == [0, 2]


def test_prompt_longer_than_max_length(dirs, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x" * 50}])
    out = tmp_path / "r.jsonl"
    base = ["score", *models(dirs), "--prompts", str(prompts), "--out", str(out), "--no-chat-template"]
    rc, err = main_rc(capsys, *base, "--max-length", "20")
    assert rc == 2 and "51 tokens, more than --max-length 20" in err and "--truncate left" in err
    rc, _ = main_rc(capsys, *base, "--max-length", "20", "--truncate", "left")
    assert rc == 0 and read_jsonl(out)[0]["n_tokens"] == 20


def test_model_errors_exit_1(dirs, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS[:1])
    out = str(tmp_path / "r.jsonl")
    rc, err = main_rc(
        capsys,
        "score",
        "--pretrained",
        str(tmp_path / "missing"),
        "--finetuned",
        str(dirs / "ft"),
        "--prompts",
        str(prompts),
        "--out",
        out,
    )
    assert rc == 1 and "Could not load the pretrained model" in err
    rc, err = main_rc(capsys, "score", *models(dirs, "other"), "--prompts", str(prompts), "--out", out)
    assert rc == 1 and "differ in `num_hidden_layers`: pretrained=3, finetuned=2" in err
    assert not (tmp_path / "r.jsonl").exists()  # nothing half-made left behind


def test_usage_errors_exit_2(dirs, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS[:1])
    out = str(tmp_path / "r.jsonl")
    rc, err = main_rc(
        capsys, "score", "--pair", "demo", *models(dirs), "--prompts", str(prompts), "--out", out
    )
    assert rc == 2 and "give --pair or --pretrained/--finetuned, not both" in err
    rc, err = main_rc(
        capsys, "score", "--finetuned", str(dirs / "ft"), "--prompts", str(prompts), "--out", out
    )
    assert rc == 2 and "give --pretrained with --finetuned or --adapter" in err
    rc, err = main_rc(capsys, "score", "--pair", "gpt-5", "--prompts", str(prompts), "--out", out)
    assert rc == 2 and "unknown pair 'gpt-5'" in err and "demo-safety" in err
    rc, err = main_rc(
        capsys,
        "score",
        *models(dirs),
        "--adapter",
        "a",
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "r.jsonl"),
    )
    assert rc == 2 and "exactly one of --finetuned" in err
    rc, err = main_rc(
        capsys,
        "score",
        *models(dirs),
        "--prompts",
        str(tmp_path / "nope.jsonl"),
        "--out",
        str(tmp_path / "r.jsonl"),
    )
    assert rc == 2 and "no such prompt file" in err


def test_dataset_offline_says_how_to_use_a_local_file(dirs, tmp_path, capsys):
    rc, err = main_rc(
        capsys,
        "score",
        *models(dirs),
        "--dataset",
        "Anthropic/hh-rlhf",
        "--split",
        "test",
        "--out",
        str(tmp_path / "r.jsonl"),
    )
    assert rc == 2 and "Could not load dataset 'Anthropic/hh-rlhf'" in err and "--prompts FILE" in err


def test_non_finite_results_suggest_another_dtype(dirs, tmp_path, capsys):
    broken = tiny_model("llama")
    with torch.no_grad():
        broken.model.layers[1].mlp.down_proj.weight[0, 0] = float("inf")
    broken.save_pretrained(tmp_path / "broken")
    byte_tokenizer().save_pretrained(tmp_path / "broken")
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS[:2])
    rc, err = main_rc(
        capsys,
        "score",
        *models(dirs),
        "--finetuned",
        str(tmp_path / "broken"),
        "--pretrained",
        str(dirs / "pt"),
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "r.jsonl"),
    )
    assert rc == 1 and "overflowed" in err and "--dtype bfloat16" in err


def test_input_formats_csv_parquet_text_stdin(dirs, tmp_path):
    texts = ["First prompt.", "Second, with a comma.", "Third one."]
    pd.DataFrame({"id": ["x", "y", "z"], "text": texts, "group": ["g1", "g2", "g1"]}).to_csv(
        tmp_path / "p.csv", index=False
    )
    pd.DataFrame({"prompt": texts}).to_parquet(tmp_path / "p.parquet")
    (tmp_path / "p.txt").write_text("\n".join(texts) + "\n\n")
    results = {}
    for name in ("p.csv", "p.parquet", "p.txt"):
        out = tmp_path / f"{name}.jsonl"
        proc = run_tuco(
            "score", *models(dirs), "--prompts", str(tmp_path / name), "--out", str(out), "--quiet"
        )
        assert proc.returncode == 0, proc.stderr
        results[name] = read_jsonl(out)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuco",
            "score",
            *models(dirs),
            "--prompts",
            "-",
            "--out",
            str(tmp_path / "stdin.jsonl"),
            "--quiet",
        ],
        input="\n".join(texts),
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    results["stdin"] = read_jsonl(tmp_path / "stdin.jsonl")
    assert [r["id"] for r in results["p.csv"]] == ["x", "y", "z"] and results["p.csv"][1]["group"] == "g2"
    assert [r["id"] for r in results["p.txt"]] == [0, 1, 2]
    for name in ("p.parquet", "p.txt", "stdin"):
        assert [r["tuco"] for r in results[name]] == pytest.approx(
            [r["tuco"] for r in results["p.csv"]], rel=1e-6
        )


def test_out_of_memory_splits_the_batch(dirs, tmp_path, capsys, monkeypatch, caplog):
    from tuco.pair import ModelPair

    real_score = ModelPair.score

    def flaky_score(self, prompts, **kwargs):
        if len(prompts) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_score(self, prompts, **kwargs)

    monkeypatch.setattr(ModelPair, "score", flaky_score)
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS)
    out = tmp_path / "r.jsonl"
    rc, err = main_rc(
        capsys, "score", *models(dirs), "--prompts", str(prompts), "--out", str(out), "--batch-size", "4"
    )
    assert rc == 0 and "out of memory on 4 prompts: retrying as 2 + 2" in caplog.text
    assert [r["id"] for r in read_jsonl(out)] == ["a", "b", "c", 3]


def test_generate_records_per_prompt_and_alpha(dirs, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS[:2])
    out = tmp_path / "g.jsonl"
    proc = run_tuco(
        "generate",
        *models(dirs),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--alpha",
        "0.5",
        "--alpha",
        "1",
        "--max-new-tokens",
        "6",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out)
    assert [(r["id"], r["alpha"]) for r in records] == [("a", 0.5), ("b", 0.5), ("a", 1.0), ("b", 1.0)]
    assert all(isinstance(r["text"], str) for r in records)
    assert records[0]["text"] != records[2]["text"]


def test_generate_tuco_records_token_tuco_and_the_report_draws_them(dirs, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS[:3])
    plain, monitored = tmp_path / "g.jsonl", tmp_path / "t.jsonl"
    common = ["generate", *models(dirs), "--prompts", prompts, "--alpha", "0.5", "1", "--max-new-tokens", 5]
    assert run_tuco(*common, "--out", plain, "--quiet").returncode == 0
    proc = run_tuco(*common, "--out", monitored, "--tuco", "--quiet")
    assert proc.returncode == 0, proc.stderr
    scores = tmp_path / "s.jsonl"
    assert run_tuco("score", *models(dirs), "--prompts", prompts, "--out", scores, "--quiet").returncode == 0
    prompt_tuco = {r["id"]: r["tuco"] for r in read_jsonl(scores)}
    for without, record in zip(read_jsonl(plain), read_jsonl(monitored), strict=True):
        assert record["text"] == without["text"]  # greedy either way
        assert len(record["tokens"]) == len(record["tokens_tuco"]) >= 1 and record["finish_reason"]
        assert record["tokens_tuco"][0] == pytest.approx(record["tuco"], abs=1e-6)
        if record["alpha"] == 1.0:
            assert record["tuco"] == pytest.approx(prompt_tuco[record["id"]], abs=1e-5)
    page = tmp_path / "r.html"
    assert run_tuco("report", monitored, "--out", page).returncode == 0
    html = page.read_text()
    shown = read_jsonl(monitored)[:6]
    assert html.count("class='tok'") == sum(len(r["tokens"]) for r in shown)
    assert "TuCo of every generated token" in html and "colour scale: red = TuCo" in html
    assert run_tuco("report", monitored, "--out", tmp_path / "r.md", "--format", "md").returncode == 0
    assert "mean_token_tuco" in (tmp_path / "r.md").read_text()


def test_sweep_prints_accuracy_per_alpha(dirs, tmp_path):
    rows = [
        {"id": 1, "prompt": "Is the sky blue? Answer:", "choices": ["Yes", "No"], "answer": "Yes"},
        {"id": 2, "prompt": "Is fire cold? Answer:", "choices": ["Yes", "No"], "answer": 1},
        {"id": 3, "prompt": "Pick a letter:", "answer": "B"},
    ]
    prompts = write_jsonl(tmp_path / "mc.jsonl", rows)
    out = tmp_path / "s.jsonl"
    proc = run_tuco(
        "sweep",
        *models(dirs),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--alpha",
        "0.5",
        "1",
        "1.5",
        "--choices",
        "A",
        "B",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out)
    assert len(records) == 9 and {r["alpha"] for r in records} == {0.5, 1.0, 1.5}
    assert records[1]["answer"] == "No" and records[2]["choices"] == ["A", "B"]
    for r in records:
        assert r["pred"] in r["choices"] and r["correct"] == (r["pred"] == r["answer"])
        assert all(0 <= p <= 1 for p in r["probs"])
    assert "alpha   accuracy" in proc.stdout and proc.stdout.count("\n") >= 4


def test_check_verdict(dirs):
    proc = run_tuco("check", *models(dirs))
    assert proc.returncode == 0, proc.stderr
    assert "alpha=1 exactness" in proc.stdout and "verdict: OK" in proc.stdout
    proc = run_tuco("check", *models(dirs, "other"))
    assert proc.returncode == 1 and "num_hidden_layers" in proc.stderr


@pytest.mark.parametrize("alpha", ["nan", "inf", "half"])
def test_non_finite_alpha_is_a_usage_error(alpha, dirs, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS[:1])
    out = tmp_path / "g.jsonl"
    for command in (["generate", *models(dirs)], ["experiment", "steering", *models(dirs)]):
        with pytest.raises(SystemExit) as e:
            cli.main([*command, "--prompts", str(prompts), "--out", str(out), "--alpha", "1", alpha])
        assert e.value.code == 2
        expected = (
            "must be a number, not 'half'" if alpha == "half" else f"must be a finite number, not {alpha}"
        )
        assert f"argument --alpha: {expected}" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was loaded or written


@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_library_refuses_a_non_finite_alpha(alpha, tok):
    from conftest import make_pair

    pair = make_pair("llama", tok)
    for call in (pair.score, pair.logits, pair.generate):
        with pytest.raises(ValueError, match="alpha must be a finite number"):
            call(["Hello"], alpha=alpha)


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from tuco.errors import DataError

    args = ["score", "--prompts", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "r.jsonl")]
    proc = run_tuco(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "no such prompt file" in proc.stderr
    with pytest.raises(DataError, match="no such prompt file"):
        cli.main(["--debug", *args])
    monkeypatch.setenv("TUCO_DEBUG", "1")
    with pytest.raises(DataError, match="no such prompt file"):
        cli.main(args)


def test_score_components_and_heads_records(dirs, tmp_path):
    """--components / --heads: the sides and heads in every record, resumable with the same flags;
    records without them carry none of their fields."""
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS)
    out = tmp_path / "r.jsonl"
    base = ["score", *models(dirs), "--prompts", prompts, "--dtype", "float32"]
    assert run_tuco(*base, "--out", out, "--heads").returncode == 0
    for r in read_jsonl(out):
        assert 0 < r["tuco_attn"] < 1 and 0 < r["tuco_mlp"] < 1 and r["sum_check"] <= 1e-5
        assert len(r["ftc_attn_layers"]) == len(r["ftc_mlp_layers"]) == 3
        assert len(r["ftc_heads"]) == 3 and len(r["ftc_heads"][0]) == 4 and len(r["ftc_head_bias"]) == 3
    resumed = run_tuco(*base, "--out", out, "--resume")  # without --heads: other settings
    assert resumed.returncode == 2 and "heads" in resumed.stderr
    plain = tmp_path / "plain.jsonl"
    assert run_tuco(*base, "--out", plain).returncode == 0
    assert not any(
        k.startswith(("tuco_attn", "ftc_heads", "sum_check")) for r in read_jsonl(plain) for k in r
    )
