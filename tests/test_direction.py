"""The direction check (tuco.experiments.direction, estimates.direction / verdict): does TuCo rise
with alpha on a pair, and what a jailbreak result then says."""

import json

import numpy as np
import pytest
from test_experiment_runs import pair_dirs  # noqa: F401 (a fixture)

from tuco import cli
from tuco.experiments.estimates import UNTESTABLE, direction, verdict


def table(slope: float, n: int = 40, noise: float = 0.01, seed: int = 0) -> dict:
    """TuCo of n prompts at four alphas: a prompt's own level + slope * alpha + noise."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.1, 0.4, n)
    return {a: list(level + slope * a + rng.normal(0, noise, n)) for a in (0.5, 0.75, 1.0, 1.25)}


@pytest.mark.parametrize("slope", [0.05, -0.05])
def test_both_directions_are_detected(slope):
    check = direction(table(slope))
    low, high = check["interval"]
    assert low < check["slope"] < high and check["slope"] == pytest.approx(slope, abs=0.01)
    assert check["rises_with_alpha"] is (slope > 0) and check["alphas"] == [0.5, 0.75, 1.0, 1.25]
    assert check["mean_tuco"][0] == pytest.approx(np.mean(table(slope)[0.5]))


def test_a_flat_or_noisy_curve_does_not_rise():
    check = direction(table(0.0, noise=0.05))
    assert check["interval"][0] < 0 < check["interval"][1] and not check["rises_with_alpha"]
    assert check["rises_with_alpha"] is (check["interval"][0] > 0)


def test_the_check_needs_three_alphas():
    with pytest.raises(ValueError, match="three alphas"):
        direction({0.5: [0.1], 1.0: [0.2]})


def test_the_verdict_rule():
    rises, falls = direction(table(0.05)), direction(table(-0.05))
    assert verdict(rises, lowers_tuco=True) == "agrees"
    assert verdict(rises, lowers_tuco=False) == "disagrees"
    assert verdict(falls, lowers_tuco=True) == verdict(falls, lowers_tuco=False) == UNTESTABLE
    assert UNTESTABLE == "untestable on this pair (TuCo does not rise with alpha)"


def test_the_experiment_measures_tuco_along_the_alpha_stream(pair_dirs, tmp_path):  # noqa: F811
    from tuco import ModelPair
    from tuco.experiments import request_sets

    out = tmp_path / "direction"
    args = [
        "experiment",
        "direction",
        *pair_dirs,
        "--dtype",
        "float32",
        "--limit",
        "5",
        "--alpha",
        "0.5",
        "1",
        "1.5",
    ]
    assert cli.main([*args, "--out", str(out)]) == 0
    check = json.loads((out / "metrics.json").read_text())["direction"]
    assert set(check) == {"alphas", "mean_tuco", "slope", "interval", "rises_with_alpha"}
    assert check["alphas"] == [0.5, 1.0, 1.5] and check["rises_with_alpha"] is (check["interval"][0] > 0)
    pair = ModelPair.from_pretrained(pair_dirs[1], pair_dirs[3], dtype="float32")
    chats = [[{"role": "user", "content": r["prompt"]}] for r in request_sets.standin_requests(5)]
    for a, mean in zip(check["alphas"], check["mean_tuco"], strict=True):
        assert mean == pytest.approx(np.mean([r.tuco for r in pair.score(chats, alpha=a)]), abs=1e-5)
    table_md = (out / "table.md").read_text()
    assert "Direction check" in table_md and ("rises" in table_md or "untestable on this pair" in table_md)
    assert cli.main([*args, "--out", str(out)]) == 0  # a rerun resumes: the same numbers
    assert json.loads((out / "metrics.json").read_text())["direction"] == check


def test_the_experiment_refuses_fewer_than_three_alphas_before_loading(tmp_path, capsys):
    out = tmp_path / "direction"
    assert (
        cli.main(["experiment", "direction", "--pair", "demo", "--alpha", "0.5", "1", "--out", str(out)]) == 2
    )
    assert "needs at least three alphas" in capsys.readouterr().err and not out.exists()
