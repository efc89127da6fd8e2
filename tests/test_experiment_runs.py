"""Every ``tuco experiment`` end to end on a tiny random pair (offline stand-ins), outputs parsed."""

import json

import pytest

from tuco import cli
from tuco.stats import roc_auc


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    from tuco.testing import byte_tokenizer, perturbed_copy, tiny_model

    root = tmp_path_factory.mktemp("pair")
    pt = tiny_model("llama")
    for name, model in (("pt", pt), ("ft", perturbed_copy(pt, scale=0.3))):
        model.save_pretrained(root / name)
        byte_tokenizer().save_pretrained(root / name)
    return ["--pretrained", str(root / "pt"), "--finetuned", str(root / "ft")]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


GCG_TINY = ["--gcg-steps", "1", "--gcg-width", "8", "--gcg-topk", "8", "--gcg-tokens", "4"]


def test_tuco_vs_outputco(pair_dirs, tmp_path, capsys):
    out = tmp_path / "e5"
    assert (
        cli.main(
            [
                "experiment",
                "tuco-vs-outputco",
                *pair_dirs,
                "--max-shots",
                "4",
                "--draws",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    records = lines(out / "results.jsonl")
    assert [(r["form"], r["shots"], r["draw"]) for r in records] == [
        (form, k, d) for form in ("raw", "chat") for k in (1, 2, 3, 4) for d in (0, 1)
    ]
    assert all(0 < r["tuco"] < 1 and 0 < r["outputco"] < 1 and r["distance"] > 0 for r in records)
    table = (out / "table.md").read_text()
    assert "## raw" in table and "## chat" in table and " ± " in table and "| 4 | 2 |" in table
    assert (out / "tuco_vs_shots.png").stat().st_size > 1000
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["raw"]["shots"] == [1, 2, 3, 4] and len(metrics["chat"]["tuco_sd"]) == 4
    assert table in capsys.readouterr().out


def test_web_vs_chat_offline(pair_dirs, tmp_path):
    out = tmp_path / "e2"
    assert cli.main(["experiment", "web-vs-chat", *pair_dirs, "--limit", "6", "--out", str(out)]) == 0
    records = lines(out / "results.jsonl")
    groups = ["web: Python docs"] * 6 + ["web: Shakespeare"] * 6 + ["chat"] * 6
    assert [r["group"] for r in records] == groups
    table = (out / "table.md").read_text()
    assert "offline stand-ins" in table and "ROC-AUC" in table and "Python's documentation" in table
    models = json.loads((out / "settings.json").read_text())["models"]  # what produced the run
    assert models == {
        "pair": None,
        "pretrained": pair_dirs[1],
        "finetuned": pair_dirs[3],
        "adapter": None,
        "model_type": "llama",
    }
    metrics = json.loads((out / "metrics.json").read_text())
    chat = [r["tuco"] for r in records[12:]]
    auc = roc_auc(chat, [r["tuco"] for r in records[:6]])  # the headline: Python's documentation
    assert metrics["roc_auc"] == pytest.approx(auc) and metrics["n_web"] == metrics["n_chat"] == 6
    second = metrics["web_groups"]["web: Shakespeare"]["roc_auc"]
    assert second == pytest.approx(roc_auc(chat, [r["tuco"] for r in records[6:12]]))
    assert f"**{auc:.3f}**" in table


def test_unknown_pair_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["experiment", "web-vs-chat", "--pair", "gpt-5", "--out", str(tmp_path)]) == 2
    assert "unknown pair 'gpt-5'" in capsys.readouterr().err


def test_steering(pair_dirs, tmp_path):
    out = tmp_path / "steer"
    args = ["experiment", "steering", *pair_dirs, "--alpha", "0", "1", "--limit", "3", "--out", str(out)]
    assert cli.main(args) == 0
    records = lines(out / "results.jsonl")
    assert len(records) == 2 * 6 and {r["alpha"] for r in records} == {0.0, 1.0}
    assert all(isinstance(r["refused"], bool) and isinstance(r["response"], str) for r in records)
    # TuCo is measured along the steered stream: it changes with alpha
    by = {(r["id"], r["alpha"]): r["tuco"] for r in records}
    assert all(by[i, 0.0] != pytest.approx(by[i, 1.0]) for i, _ in by)
    table = (out / "table.md").read_text()
    assert "| 0 |" in table and "| 1 |" in table and "3 harmful, 3 benign" in table
    metrics = json.loads((out / "metrics.json").read_text())
    harmful = [r["refused"] for r in records if r["alpha"] == 0.0 and r["group"] == "harmful"]
    assert metrics["alphas"] == [0.0, 1.0] and metrics["refusal_rate_harmful"][0] == sum(harmful) / 3


def test_alpha_sweep_offline_standins_and_resume(pair_dirs, tmp_path, capsys):
    out = tmp_path / "e1"
    args = ["experiment", "alpha-sweep", *pair_dirs, "--alpha", "0.5", "1", "1.5", "--limit", "10"]
    assert cli.main([*args, "--out", str(out)]) == 0
    records = lines(out / "results.jsonl")
    tasks = {r["task"] for r in records}
    assert tasks == {"standin/refuses-harmful-first-token", "standin/arithmetic"}
    assert {r["answer"] for r in records if r["task"].startswith("standin/refuses")} == {"I", "To"}
    assert len(records) == 2 * 10 * 3
    assert all(r["pred"] in r["choices"] and r["correct"] == (r["pred"] == r["answer"]) for r in records)
    table = (out / "table.md").read_text()
    assert "Delta max" in table and "Mean Delta over 2 tasks" in table and "offline stand-ins" in table
    assert "Mean probability of the right" in table
    assert (out / "accuracy_vs_alpha.png").stat().st_size > 1000
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks"] == 2 and set(metrics["per_task"]) == tasks
    assert 0 <= metrics["p_max"] <= 1 and all(0 <= m["p_max"] <= 1 for m in metrics["per_task"].values())
    assert "95% CI" in table and "McNemar" in table
    deltas = [m["delta_max"] for m in metrics["per_task"].values()]
    assert metrics["delta_max"] == pytest.approx(sum(deltas) / 2) and metrics["accuracy_vs_alpha"][
        "alphas"
    ] == [
        0.5,
        1,
        1.5,
    ]
    # rerun: everything is read back from the step file, nothing recomputed
    before = (out / "steps" / "answers.jsonl").read_text()
    assert cli.main([*args, "--out", str(out)]) == 0
    assert (out / "steps" / "answers.jsonl").read_text() == before and (out / "table.md").read_text() == table
    capsys.readouterr()
    assert cli.main([*args[:-1], "11", "--out", str(out)]) == 2
    assert "other settings (limit)" in capsys.readouterr().err


def test_alpha_sweep_local_files(pair_dirs, tmp_path):
    mc = tmp_path / "mc.jsonl"
    mc.write_text(
        "".join(
            json.dumps(
                {"prompt": f"Is {i} even?", "choices": ["Yes", "No"], "answer": "Yes" if i % 2 == 0 else "No"}
            )
            + "\n"
            for i in range(6)
        )
    )
    out = tmp_path / "e1"
    args = [
        "experiment",
        "alpha-sweep",
        *pair_dirs,
        "--mc-file",
        str(mc),
        "--alpha",
        "0.9",
        "1",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    records = lines(out / "results.jsonl")
    assert {r["task"] for r in records} == {"mc"} and len(records) == 12
    assert "| mc | 6 |" in (out / "table.md").read_text()


def test_jailbreaks_all_attacks(pair_dirs, tmp_path):
    out = tmp_path / "e3"
    args = [
        "experiment",
        "jailbreaks",
        *pair_dirs,
        "--limit",
        "2",
        "--max-shots",
        "4",
        "--answer-tokens",
        "4",
    ]
    assert cli.main([*args, *GCG_TINY, "--out", str(out)]) == 0
    records = lines(out / "results.jsonl")
    msj = [r for r in records if r["attack"] == "msj"]
    assert sorted({r["shots"] for r in msj}) == [0, 1, 2, 4] and len(msj) == 4 * 2
    control = [r for r in records if r["attack"] == "msj-benign"]  # benign shots, same k (0 shared)
    assert sorted({r["shots"] for r in control}) == [1, 2, 4] and len(control) == 3 * 2
    gcg = [r for r in records if r["attack"] == "gcg"]
    assert [r["kind"] for r in gcg] == ["plain", "gcg", "random"] * 2
    strings = lines(out / "gcg_strings.jsonl")
    assert len(strings) == 2 and all(s["placement"] == "before" for s in strings)
    assert all(r["prompt"].endswith(s["request"]) for r, s in zip(gcg[1::3], strings, strict=True))
    assert all(
        r["prompt"].endswith(s["request"]) and r["prompt"] != s["request"]
        for r, s in zip(gcg[2::3], strings, strict=True)
    )
    persona = [r for r in records if r["attack"] == "msj-persona"]  # a persona question judged by its answer
    assert sorted({r["shots"] for r in persona}) == [0, 1, 2, 4] and len(persona) == 4 * 2
    assert all(
        r["pred"] in r["choices"] and r["harmful_answer"] == (r["pred"] == r["answer"]) for r in persona
    )
    assert {r["attack"] for r in records} >= {"msj-persona-benign"} and "persona target" in (
        out / "table.md"
    ).read_text()
    conjugate = [r for r in records if r["attack"] == "conjugate"]
    assert {r["language"] for r in conjugate} == {"English", "Japanese", "Hungarian", "Swahili", "Malayalam"}
    assert all(isinstance(r["harmful_answer"], bool) for r in records)
    table = (out / "table.md").read_text()
    # the direction check on the requests, and each attack's verdict by it
    from tuco.experiments.estimates import UNTESTABLE

    metrics = json.loads((out / "metrics.json").read_text())
    check = metrics["direction"]
    assert len(check["alphas"]) >= 3 and check["rises_with_alpha"] is (check["interval"][0] > 0)
    verdicts = {name: metrics[name]["verdict"] for name in ("msj", "msj-persona", "gcg", "conjugate")}
    assert (
        metrics["msj-persona"]["target"] == "persona"
        and len(metrics["msj-persona"]["behaviour_probability"]) == 4
    )
    allowed = {"agrees", "disagrees"} if check["rises_with_alpha"] else {UNTESTABLE}
    assert set(verdicts.values()) <= allowed and "Direction check" in table
    assert all(f"Verdict on the paper's claim ({name}): **{v}**" in table for name, v in verdicts.items())
    for heading in ("Many-shot jailbreaking", "GCG adversarial strings", "Conjugate prompting", "stand-in"):
        assert heading in table
    assert all((out / f"{name}.png").exists() for name in ("msj", "gcg", "conjugate"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["msj"]["shots"] == [0, 1, 2, 4] and len(metrics["msj"]["mean_tuco"]) == 4
    plain = [r["tuco"] for r in gcg if r["kind"] == "plain"]
    assert metrics["gcg"]["roc_auc"] == pytest.approx(
        roc_auc(plain, [r["tuco"] for r in gcg if r["attacked"]])
    )
    assert metrics["gcg"]["roc_auc_random_string"] == pytest.approx(
        roc_auc(plain, [r["tuco"] for r in gcg if r["kind"] == "random"])
    )
    assert len(metrics["msj"]["mean_tuco_benign_shots"]) == 4 and "demo stand-in" in table
    assert set(metrics["conjugate"]["table1_roc_auc_vs_malayalam_swahili"]) == {
        "English",
        "Japanese",
        "Hungarian",
    }
    assert "Table 1" in table and "random string" in table
    assert set(metrics["conjugate"]["roc_auc_vs_english"]) == {
        "Japanese",
        "Hungarian",
        "Swahili",
        "Malayalam",
    }


def test_jailbreaks_msj_drops_shots_beyond_the_context(pair_dirs, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(pair_dirs[3])
    out = tmp_path / "e3"
    args = [
        "experiment",
        "jailbreaks",
        *pair_dirs,
        "--attacks",
        "msj",
        "--limit",
        "1",
        "--answer-tokens",
        "0",
    ]
    assert cli.main([*args, "--max-shots", "1024", "--out", str(out)]) == 0
    shots = sorted({r["shots"] for r in lines(out / "results.jsonl")})
    assert shots[0] == 0 and 1024 not in shots
    assert f"fit the context ({config.max_position_embeddings} tokens)" in (out / "table.md").read_text()


def test_jailbreak_success(pair_dirs, tmp_path):
    out = tmp_path / "e4"
    args = ["experiment", "jailbreak-success", *pair_dirs, "--limit", "2", "--samples", "3"]
    assert cli.main([*args, "--max-new-tokens", "5", *GCG_TINY, "--out", str(out)]) == 0
    records = lines(out / "results.jsonl")
    assert [r["group"] for r in records] == ["benign"] * 2 + ["harmful", "harmful + GCG"] * 2
    for r in records:
        if r["group"] == "benign":
            assert r["success"] is False and "completions" not in r
        else:
            assert len(r["completions"]) == 3 and r["success"] == (r["refused"].count(False) >= 2)
    table = (out / "table.md").read_text()
    assert "successful jailbreaks" in table and ("ROC-AUC of -TuCo" in table or "ROC-AUC undefined" in table)
    metrics = json.loads((out / "metrics.json").read_text())  # strict JSON: an undefined AUC is null
    assert metrics["n_success"] == sum(r["success"] for r in records)
    assert "Share of prompts that jailbreak the model" in table and "generation config" in table
    assert {"roc_auc", "tpr_at_5_fpr", "roc_auc_success_vs_benign", "direction"} <= set(metrics)
    assert (
        metrics["headline"] == "all" and metrics["headline_auc"] == metrics["roc_auc"]
    )  # not a demo-safety run
    assert metrics["direction"]["rises_with_alpha"] is (metrics["direction"]["interval"][0] > 0)
    for group, shares in metrics["success_by_rule"].items():  # at least k of the 3 samples not refused
        assert len(shares) == 3 and shares == sorted(shares, reverse=True)
        assert shares[1] == pytest.approx(metrics["success_rate"][group])  # this run's rule: k = 2
    assert "The share of successes by the rule" in table
    assert set(metrics["success_rate"]) == {
        "harmful",
        "harmful + GCG",
    }


def test_shot_grid_doubles_up_to_the_maximum():
    from tuco.experiments.jailbreaks import shot_grid

    assert shot_grid(128) == [0, 1, 2, 4, 8, 16, 32, 64, 128]
    assert shot_grid(5) == [0, 1, 2, 4, 5] and shot_grid(0) == [0]


def test_components(pair_dirs, tmp_path):
    out = tmp_path / "components"
    args = ["experiment", "components", *pair_dirs, "--limit", "4", "--dtype", "float32", "--out", str(out)]
    assert cli.main(args) == 0
    records = lines(out / "results.jsonl")
    assert [r["group"] for r in records] == ["chat"] * 4 + ["harmful"] * 4 + ["web"] * 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heads"] is True  # Llama: o_proj's output is the attention side
    for group in ("chat", "harmful", "web"):
        chosen = [r for r in records if r["group"] == group]
        attn = sum(sum(r["ftc_attn_layers"]) for r in chosen)
        mlp = sum(sum(r["ftc_mlp_layers"]) for r in chosen)
        assert metrics[f"{group}_attention_share"] == pytest.approx(attn / (attn + mlp))
        assert metrics[f"{group}_sum_check_max"] <= 1e-5
    assert all(len(r["ftc_heads"]) == 3 for r in records)
    assert (out / "ftc_by_layer.png").exists() and (out / "ftc_heads.png").exists()
    assert "attention share" in (out / "table.md").read_text()


@pytest.mark.parametrize("layout", ["one-turn", "raw"])
def test_jailbreaks_msj_layouts(pair_dirs, tmp_path, layout):
    from tuco import ModelPair
    from tuco.attacks import many_shot
    from tuco.demo.recipe import compliance_pool
    from tuco.experiments import request_sets
    from tuco.inputs import as_chat

    out = tmp_path / "e3"
    args = ["experiment", "jailbreaks", *pair_dirs, "--dtype", "float32", "--attacks", "msj", "--limit", "1"]
    args += ["--answer-tokens", "0", "--max-shots", "2", "--msj-format", layout, "--out", str(out)]
    assert cli.main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["msj"]["format"] == layout
    record = next(r for r in lines(out / "results.jsonl") if r["attack"] == "msj" and r["shots"] == 2)
    request = request_sets.standin_requests(1)[0]["prompt"]
    built = many_shot(request, compliance_pool(), 2, layout)
    prompt = built if isinstance(built, str) else as_chat(built)
    pair = ModelPair.from_pretrained(pair_dirs[1], pair_dirs[3], dtype="float32")
    assert record["tuco"] == pytest.approx(pair.score([prompt])[0].tuco, abs=1e-5)
    assert f"laid out as {layout}" in (out / "table.md").read_text()


def test_web_vs_chat_offline_chats_were_never_trained_on():
    """E2's offline chat prompts hold none of the prompts either demo fine-tune was trained on."""
    from tuco.demo import chat_recipe, recipe
    from tuco.experiments.web_vs_chat import held_out_requests, web_and_chat_prompts
    from tuco.testing import byte_tokenizer

    trained = {
        chat[0]["content"]
        for kind in ("harmful", "benign")
        for chat in chat_recipe.requests(chat_recipe.ChatRecipe())[kind]
    }
    trained |= {
        chat[0]["content"] for chat, _ in chat_recipe.requests(chat_recipe.ChatRecipe())["arithmetic"]
    }
    tasks = recipe.BENIGN_TRAIN + [task for _, task in recipe.tasks(recipe.HARMFUL_TRAIN)]
    trained |= {
        t.format(task=task) for task in tasks for t in recipe.TEMPLATES_TRAIN
    }  # the safety fine-tune's
    held_out = held_out_requests()
    assert len(held_out) >= 40 and not set(held_out) & trained
    held_out_tasks = set(recipe.BENIGN_HELD_OUT) | {t for _, t in recipe.tasks(recipe.HARMFUL_HELD_OUT)}
    assert not held_out_tasks & set(tasks) and not set(chat_recipe.TOPICS_HELD_OUT) & set(chat_recipe.TOPICS)
    web, chats, _ = web_and_chat_prompts(byte_tokenizer(), limit=40)
    assert len(chats) == 40 and set(chats) <= set(held_out)
    assert list(web) == ["web: Python docs", "web: Shakespeare"] and all(len(w) == 40 for w in web.values())


def test_jailbreak_success_at_other_temperatures(pair_dirs, tmp_path):
    out = tmp_path / "e4"
    args = [
        "experiment",
        "jailbreak-success",
        *pair_dirs,
        "--limit",
        "2",
        "--samples",
        "3",
        "--max-new-tokens",
        "4",
    ]
    args += [*GCG_TINY, "--temperature", "1", "--temperatures", "1", "0.2", "--out", str(out)]
    assert cli.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    by_temperature = metrics["success_by_temperature"]
    assert set(by_temperature) == {"1", "0.2"}
    # at the run's own temperature, with the same seed: the same samples, so the same shares
    assert by_temperature["1"] == metrics["success_by_rule"]
    for shares in by_temperature["0.2"].values():
        assert len(shares) == 3 and shares == sorted(shares, reverse=True)
    assert "The same at other temperatures" in (out / "table.md").read_text()
    steps = sorted(p.name for p in (out / "steps").iterdir())
    assert "samples-t0.2.jsonl" in steps and "samples-t1.jsonl" in steps


def test_the_docs_stand_in_is_prose_from_pythons_own_documentation():
    from tuco.demo.texts import DOC_MODULES, read_docs, windows
    from tuco.testing import byte_tokenizer

    docs = read_docs()
    assert set(docs) == set(DOC_MODULES) and sum(map(len, docs.values())) > 100_000
    assert all("\n" not in p for text in docs.values() for p in text.split("\n\n"))  # one line each
    tok = byte_tokenizer()
    found = windows(tok, 12, length=60, source="docs")
    assert len({w["source"] for w in found}) == 12 and all(w["source"] in DOC_MODULES for w in found)
    assert all(len(tok(w["prompt"], add_special_tokens=False)["input_ids"]) == 60 for w in found)
    assert windows(tok, 3, length=60, source="docs") == windows(tok, 3, length=60, source="docs")
    with pytest.raises(ValueError, match="shakespeare or docs"):
        windows(tok, 1, source="news")


def test_attack_set_writes_files_that_tuco_calibrate_reads(pair_dirs, tmp_path, capsys):
    from tuco.guard import Guard

    out = tmp_path / "guard-set"
    args = ["experiment", "attack-set", *pair_dirs, "--dtype", "float32", "--limit", "3", "--max-shots", "2"]
    assert cli.main([*args, "--attacks", "msj", "gcg", *GCG_TINY, "--out", str(out)]) == 0
    attacks, benign = lines(out / "attacks.jsonl"), lines(out / "benign.jsonl")
    assert [a["attack"] for a in attacks] == ["msj-2"] * 3 + ["gcg"] * 3 and len(benign) == 3
    strings = {s["request"]: s["string"] for s in lines(out / "gcg_strings.jsonl")}
    for a in attacks:
        last = a["messages"][-1]
        assert last["role"] == "user" and last["content"].endswith(a["request"])
        if a["attack"] == "gcg":
            assert last["content"] == f"{strings[a['request']]} {a['request']}" and len(a["messages"]) == 1
        else:
            assert len(a["messages"]) == 2 * 2 + 1
    assert lines(out / "results.jsonl") == attacks + benign
    guard = tmp_path / "guard.json"
    calibrate = ["calibrate", *pair_dirs, "--dtype", "float32", "--fpr", "0.5", "--out", str(guard)]
    files = ["--benign", str(out / "benign.jsonl"), "--attacks", str(out / "attacks.jsonl")]
    assert cli.main([*calibrate, *files]) == 0
    assert Guard.load(guard).attacks == 6 and Guard.load(guard).benign == 3
    assert cli.main([*args, "--attacks", "conjugate", "--out", str(tmp_path / "none")]) == 2
    assert "attack-set builds msj and gcg prompts: --attacks msj gcg" in capsys.readouterr().err
