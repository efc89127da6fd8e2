"""``tuco report``: markdown and HTML pages from score and sweep results of a tiny random pair."""

import json
import subprocess

import pytest
from conftest import pair_dirs

from tuco import cli
from tuco.report import write_report

ROWS = [
    {"id": "a", "prompt": "Hello there, friend.", "group": "chat", "label": 1},
    {"id": "b", "prompt": "Once upon a time in a land far away", "group": "web", "label": 0},
    {"id": "c", "messages": [{"role": "user", "content": "How are you?"}], "group": "chat", "label": 1},
    {"prompt": "The river flows to the sea.", "group": "web", "label": 0},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return pair_dirs(tmp_path_factory.mktemp("pair"))


def models(dirs):
    return ["--pretrained", str(dirs / "pt"), "--finetuned", str(dirs / "ft")]


@pytest.fixture(scope="module")
def results(dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    rows = [dict(r, id=i) for i, r in enumerate(ROWS * 3)]
    prompts = write_jsonl(root / "p.jsonl", rows)
    assert (
        cli.main(
            [
                "score",
                *models(dirs),
                "--prompts",
                str(prompts),
                "--out",
                str(root / "r.jsonl"),
                "--quiet",
                "--output-baselines",
            ]
        )
        == 0
    )
    mc = write_jsonl(
        root / "mc.jsonl", [{"prompt": f"Q{i}?", "answer": "Yes", "group": "g"} for i in range(4)]
    )
    assert (
        cli.main(
            [
                "sweep",
                *models(dirs),
                "--prompts",
                str(mc),
                "--out",
                str(root / "s.jsonl"),
                "--quiet",
                "--alpha",
                "0.5",
                "1",
                "--choices",
                "Yes",
                "No",
            ]
        )
        == 0
    )
    return root


def test_report_markdown(results, tmp_path):
    args = ["report", str(results / "r.jsonl"), str(results / "s.jsonl"), "--out", str(tmp_path / "r.md")]
    assert cli.main([*args, "--format", "md"]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "| group | count | mean |" in text and "| chat | 6 |" in text
    assert "ROC-AUC of TuCo for label = 1 (positive) vs 0" in text
    assert "## Accuracy vs alpha" in text and "| 0.5 |" in text


def test_report_html_renders_in_headless_chromium(results, tmp_path):
    import shutil

    page = tmp_path / "report.html"
    assert cli.main(["report", str(results / "r.jsonl"), str(results / "s.jsonl"), "--out", str(page)]) == 0
    html = page.read_text()
    assert html.count("<img") == 5 and "data:image/png;base64," in html  # hist, profiles, beta, ROC, alpha
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium) so the page cannot be rendered")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1000,3000",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), proc.stderr
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (3000, 1000, 3)
    colored = int(((pixels.max(-1) - pixels.min(-1)) > 60).sum())  # plot bars and curves; text is grey
    assert colored > 10_000, f"only {colored} coloured pixels: the plots did not render"


def test_a_label_with_other_than_two_values_is_said_not_plotted(results, tmp_path):
    rows = [json.loads(line) for line in (results / "r.jsonl").read_text().splitlines()]
    three = tmp_path / "three.jsonl"
    three.write_text("".join(json.dumps(r | {"label": i % 3}) + "\n" for i, r in enumerate(rows)))
    text = write_report([str(three)], str(tmp_path / "r.md"), fmt="md")
    assert "needs exactly two values of 'label', found [0, 1, 2]" in (tmp_path / "r.md").read_text()
    assert text


def test_report_components_heads_provenance_and_extremes(dirs, tmp_path):
    """--components --heads --per-token records: the sublayer sections and plots, the top and
    bottom prompts drawn token by token, and where the numbers come from at the top."""
    rows = [dict(r, id=i) for i, r in enumerate(ROWS * 3)]
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "c.jsonl"
    args = ["score", *models(dirs), "--prompts", str(prompts), "--out", str(out), "--quiet"]
    assert cli.main([*args, "--heads", "--per-token", "--dtype", "float32"]) == 0
    page = write_report([str(out)], str(tmp_path / "c.html"), group_by="group").read_text()
    titles = [
        "Where these numbers come from",
        "Attention vs MLP: FTC per layer",
        "TuCo of each sublayer kind",
        "FTC norm per block and head",
        "Highest and lowest TuCo per group",
    ]
    assert all(t in page for t in titles)
    assert page.index(titles[0]) < page.index("TuCo per group")  # provenance first
    assert "tuco score" in page and "float32" in page and str(dirs / "ft") in page
    assert page.count("<img") >= 6 and "class='tok'" in page and "title='TuCo " in page
    assert ">H</span>" in page and ">[0]</span>" not in page  # the tokens' own text, not placeholders
    md = write_report([str(out)], str(tmp_path / "c.md"), group_by="group", fmt="md").read_text()
    assert "tuco_attn" in md and "sum_check_max" in md
