"""Loaders of the experiments' data: local copies in the datasets' own formats, stand-ins, errors."""

import json

import pytest

from tuco.data import DataError
from tuco.experiments import request_sets, sources, translations


def write_mmlu(root, subject="anatomy", n_test=3):
    for split, n in (("dev", 5), ("test", n_test)):
        (root / "data" / split).mkdir(parents=True, exist_ok=True)
        rows = [f'"Q{split}{i}, really?",a{i},b{i},c{i},d{i},{"ABCD"[i % 4]}\n' for i in range(n)]
        (root / "data" / split / f"{subject}_{split}.csv").write_text("".join(rows))


def test_mmlu_prompt_golden():
    shot = dict(question="2+2?", choices=["3", "4", "5", "6"], answer="B")
    item = dict(question="1+1?", choices=["2", "3", "4", "5"], answer="A")
    assert sources.mmlu_prompt("college_math", [shot], item) == (
        "The following are multiple choice questions (with answers) about college math.\n\n"
        "2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: B\n\n"
        "1+1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer:"
    )


def test_mmlu_from_a_local_copy(tmp_path):
    write_mmlu(tmp_path)
    items = sources.mmlu(["all"], str(tmp_path))
    assert [it["id"] for it in items] == ["mmlu/anatomy/0", "mmlu/anatomy/1", "mmlu/anatomy/2"]
    assert [it["answer"] for it in items] == ["A", "B", "C"] and items[0]["choices"] == ["A", "B", "C", "D"]
    prompt = items[1]["prompt"]
    assert prompt.count("Answer: ") == 5 and prompt.endswith(
        "Qtest1, really?\nA. a1\nB. b1\nC. c1\nD. d1\nAnswer:"
    )
    assert len(sources.mmlu(["anatomy"], str(tmp_path / "data"), limit=2)) == 2
    with pytest.raises(DataError, match="no such MMLU subject; found: anatomy"):
        sources.mmlu(["virology"], str(tmp_path))
    (tmp_path / "data" / "test" / "anatomy_test.csv").write_text("q,a,b,c,d,A\nq,a,b,c,E\n")
    with pytest.raises(DataError, match=r"anatomy_test.csv:2: expected question, A, B, C, D, answer"):
        sources.mmlu(["anatomy"], str(tmp_path))


def test_persona_from_a_local_directory(tmp_path):
    rows = [
        {
            "question": 'Is this you?\n"I like power"',
            "statement": "I like power",
            "answer_matching_behavior": " Yes",
            "answer_not_matching_behavior": " No",
        },
        {
            "question": 'Is this you?\n"I share"',
            "statement": "I share",
            "answer_matching_behavior": " No",
            "answer_not_matching_behavior": " Yes",
        },
    ]
    (tmp_path / "power-seeking.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = sources.persona(["power-seeking"], str(tmp_path))
    assert [(it["task"], it["choices"], it["answer"]) for it in items] == [
        ("persona/power-seeking", ["Yes", "No"], "Yes"),
        ("persona/power-seeking", ["Yes", "No"], "No"),
    ]
    assert len(sources.persona(["power-seeking"], str(tmp_path), limit=1)) == 1
    assert sources.persona(["all"], str(tmp_path)) == items
    with pytest.raises(DataError, match="no such persona file"):
        sources.persona(["narcissism"], str(tmp_path))
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: not a persona record"):
        sources.persona(["bad"], str(tmp_path))


def test_hub_loaders_fail_offline_with_the_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="--persona-dir DIR"):
        sources.persona(["narcissism"])
    with pytest.raises(DataError, match="list of persona behaviours.*--persona-dir DIR"):
        sources.persona(["all"])
    with pytest.raises(DataError, match="--mmlu-dir DIR"):
        sources.mmlu(["anatomy"])
    with pytest.raises(DataError, match="--requests harmful_behaviors.csv"):
        request_sets.advbench()


def test_multiple_choice_file_needs_answers(tmp_path):
    path = tmp_path / "quiz.jsonl"
    path.write_text(json.dumps({"prompt": "Sky?", "choices": "blue|green", "answer": 0}) + "\n")
    assert sources.multiple_choice_file(str(path)) == [
        dict(id="quiz/0", task="quiz", prompt="Sky?", choices=["blue", "green"], answer="blue")
    ]
    path.write_text(json.dumps({"prompt": "Sky?", "choices": ["blue", "green"]}) + "\n")
    with pytest.raises(DataError, match=r"quiz.jsonl:1: no 'answer' field"):
        sources.multiple_choice_file(str(path))


def test_advbench_csv_and_standins(tmp_path):
    path = tmp_path / "harmful_behaviors.csv"
    path.write_text('goal,target\nWrite a bad thing,"Sure, here is a bad thing"\nDo harm,Sure\n')
    assert request_sets.advbench(str(path)) == [
        dict(id="request/0", prompt="Write a bad thing", target="Sure, here is a bad thing"),
        dict(id="request/1", prompt="Do harm", target="Sure"),
    ]
    requests = request_sets.standin_requests(3)
    assert len(requests) == 3 and all(r["target"].startswith("Sure, here is how to") for r in requests)
    behaviour = sources.standin_refusal()
    assert {it["answer"] for it in behaviour} == {"I", "To"} and all(
        it["choices"] == ["I", "To"] for it in behaviour
    )
    assert len(sources.PAPER_PERSONAS) == len(set(sources.PAPER_PERSONAS)) == 23
    assert [len(v) for v in sources.PERSONA_CATEGORIES.values()] == [4, 5, 6, 5, 3]
    assert len(sources.MMLU_CATEGORIES) == 57 and sources.category("mmlu/jurisprudence") == "Humanities"
    assert sources.category("persona/narcissism") == "Personality" and sources.category("standin/x") is None
    arithmetic = sources.standin_arithmetic(20)
    for it in arithmetic:  # the right letter names the sum
        a, b = map(int, it["prompt"].rsplit("What is ", 1)[1].split("?")[0].split(" + "))
        line = next(x for x in it["prompt"].splitlines()[::-1] if x.startswith(it["answer"] + ". "))
        assert int(line[3:]) == a + b


def test_shots_file_needs_answers(tmp_path):
    path = tmp_path / "shots.jsonl"
    path.write_text(json.dumps({"prompt": "How do I A?", "answer": "Sure, A."}) + "\n")
    assert request_sets.shots_file(str(path)) == [("How do I A?", "Sure, A.")]
    path.write_text(path.read_text() + json.dumps({"prompt": "How do I B?"}) + "\n")
    with pytest.raises(DataError, match=r"shots.jsonl:2: .*non-empty 'answer'"):
        request_sets.shots_file(str(path))


def test_translations_file_and_standin(tmp_path):
    standin = translations.standin(2)
    assert [it["language"] for it in standin[::2]] == list(translations.LANGUAGES)
    assert all(len(prompts) == 6 for prompts in translations.STANDIN.values())
    path = tmp_path / "tr.jsonl"
    path.write_text(json.dumps({"prompt": "Hello", "language": "English"}) + "\n")
    with pytest.raises(DataError, match="at least two languages"):
        translations.read_translations(str(path))
    path.write_text(json.dumps({"prompt": "Hello"}) + "\n")
    with pytest.raises(DataError, match=r"tr.jsonl:1: .*'language' field"):
        translations.read_translations(str(path))


def test_hub_rows_map_to_items(monkeypatch, tmp_path):
    """The hub code paths, with the hub replaced by rows in the hub datasets' own schemas."""
    import datasets
    import huggingface_hub

    mmlu_row = {"question": "1+1?", "subject": "math", "choices": ["2", "3", "4", "5"], "answer": 0}
    loads = []

    def load_dataset(name, config=None, split=None):
        loads.append((name, config, split))
        if name == "cais/mmlu":
            return {"dev": [mmlu_row] * 5, "test": [mmlu_row, dict(mmlu_row, answer=2)]}
        assert name == "walledai/AdvBench" and split == "train"
        return [{"prompt": "Do harm", "target": "Sure, here is harm"}]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(
        datasets, "get_dataset_config_names", lambda name: ["abstract_algebra", "all", "auxiliary_train"]
    )
    items = sources.mmlu(["all"])
    assert [it["answer"] for it in items] == ["A", "C"] and loads[0] == (
        "cais/mmlu",
        "abstract_algebra",
        None,
    )
    assert items[0]["prompt"].startswith(
        "The following are multiple choice questions (with answers) about abstract algebra."
    )
    assert request_sets.advbench() == [dict(id="request/0", prompt="Do harm", target="Sure, here is harm")]

    persona_file = tmp_path / "narcissism.jsonl"
    persona_file.write_text(
        json.dumps(
            {"question": "Q?", "answer_matching_behavior": " No", "answer_not_matching_behavior": " Yes"}
        )
        + "\n"
    )
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo, filename, repo_type: str(persona_file)
    )
    monkeypatch.setattr(
        huggingface_hub, "list_repo_files", lambda repo, repo_type: ["persona/narcissism.jsonl", "README.md"]
    )
    assert [(it["task"], it["answer"]) for it in sources.persona(["all"])] == [("persona/narcissism", "No")]


def test_web_vs_chat_online_sources(monkeypatch):
    """OpenWebText: one random 97-token window per record long enough; HH-RLHF: the first human turn."""
    from tuco import data
    from tuco.experiments.web_vs_chat import web_and_chat_prompts
    from tuco.testing import byte_tokenizer

    def read_dataset(name, split, field):
        if name == "Skylion007/openwebtext":
            texts = ["short text", "x" * 50 + "".join(chr(97 + i % 26) for i in range(300))]
        else:
            assert (name, split, field) == ("Anthropic/hh-rlhf", "test", "chosen")
            texts = [
                "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour."
                "\n\nHuman: And then?\n\nAssistant: Bake."
            ]
        return iter(data.PromptItem(id=i, prompt=t) for i, t in enumerate(texts * 3))

    monkeypatch.setattr(data, "read_dataset", read_dataset)
    tok = byte_tokenizer()
    groups, chat, source = web_and_chat_prompts(tok, limit=2, offline=False)
    web = groups["web"]
    assert (
        list(groups) == ["web"]
        and len(web) == 2
        and all(len(tok(w, add_special_tokens=False)["input_ids"]) == 97 for w in web)
    )
    assert chat == ["How do I bake bread?"] * 2 and "OpenWebText" in source and "HH-RLHF" in source


def test_parden_csv_and_its_offline_message(tmp_path):
    path = tmp_path / "PARDEN_benign_dataset.csv"
    path.write_text(
        'instruction,output\n"Give three tips for staying healthy.","1. Eat well..."\nName a color.,Blue\n'
    )
    assert request_sets.parden(str(path)) == [
        dict(id="benign/0", prompt="Give three tips for staying healthy."),
        dict(id="benign/1", prompt="Name a color."),
    ]
    with pytest.raises(DataError, match="Ed-Zh/PARDEN.*--benign PARDEN_benign_dataset.csv"):
        request_sets.parden(None)


def test_persona_shots_interleave_the_behaviours(tmp_path):
    for name in ("psychopathy", "narcissism"):
        rows = [
            {
                "question": f"{name} q{i}?",
                "answer_matching_behavior": " Yes",
                "answer_not_matching_behavior": " No",
            }
            for i in range(2)
        ]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shots = sources.persona_shots(("psychopathy", "narcissism"), str(tmp_path))
    assert shots == [
        ("psychopathy q0?", "Yes"),
        ("narcissism q0?", "Yes"),
        ("psychopathy q1?", "Yes"),
        ("narcissism q1?", "Yes"),
    ]
    assert len(sources.MALEVOLENT_PERSONAS) == 5 and "ends-justify-means" in sources.MALEVOLENT_PERSONAS


def test_persona_targets_are_questions_the_shots_do_not_use(tmp_path):
    rows = [
        {"question": f"q{i}?", "answer_matching_behavior": " No", "answer_not_matching_behavior": " Yes"}
        for i in range(5)
    ]
    (tmp_path / "psychopathy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shots = sources.persona_shots(("psychopathy",), str(tmp_path), per_behaviour=3)
    targets = sources.persona_targets(str(tmp_path), shots=3)
    assert [t["prompt"] for t in targets] == ["q3?", "q4?"] and {q for q, _ in shots} == {"q0?", "q1?", "q2?"}
    assert all(t["answer"] == "No" and t["choices"] == ["Yes", "No"] for t in targets)
    assert len(sources.persona_targets(str(tmp_path), shots=3, limit=1)) == 1
    with pytest.raises(DataError, match=r"psychopathy.jsonl: 5 questions, all of them many-shot shots"):
        sources.persona_targets(str(tmp_path), shots=5)


def test_persona_standin_targets_are_not_shots():
    from tuco.experiments import persona_standin

    questions = {q for q, _ in persona_standin.shots()} | {
        q for q, _ in persona_standin.shots(persona_standin.BENIGN)
    }
    targets = persona_standin.targets()
    assert len(targets) == len(persona_standin.TARGETS) and not questions & {t["prompt"] for t in targets}
    assert {t["answer"] for t in targets} == {"Yes", "No"} and len(persona_standin.targets(3)) == 3
