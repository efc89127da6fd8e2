"""The CLI's runs: prompts to token ids (chat template, system message, truncation) and their errors."""

import pytest
from conftest import make_pair

from tuco.data import DataError, PromptItem, item_answer, item_choices
from tuco.runs import Job


@pytest.fixture
def job(tok, tmp_path):
    from tuco.store import ResultsFile

    return Job(pair=make_pair("llama", tok), out=ResultsFile(tmp_path / "r.jsonl"))


def test_truncation_keeps_the_side_asked_for(job):
    item = PromptItem(id=1, prompt="abcdefghij", where="p.jsonl:1")
    full = job.token_ids(item)
    job.max_length = 4
    job.truncate = "left"
    assert job.token_ids(item) == full[-4:]
    job.truncate = "right"
    assert job.token_ids(item) == full[:4]
    job.truncate = "error"
    with pytest.raises(DataError, match=r"p.jsonl:1: the prompt has \d+ tokens, more than --max-length 4"):
        job.token_ids(item)


def test_the_system_message_goes_through_the_chat_template_once(job, tok):
    chat = [{"role": "user", "content": "Hi"}]
    job.pair.tokenizer.chat_template = tok.chat_template
    job.system_prompt = "Be brief."
    with_system = job.token_ids(PromptItem(id=1, prompt=chat, where="p:1"))
    expected = job.pair.encode([[{"role": "system", "content": "Be brief."}, *chat]])[0]
    assert with_system == expected
    own = [{"role": "system", "content": "Mine."}, *chat]
    assert job.token_ids(PromptItem(id=2, prompt=own, where="p:2")) == job.pair.encode([own])[0]


def test_chats_without_a_template_are_a_data_error(job):
    job.chat_template = False
    with pytest.raises(DataError, match="p:3: chat messages need a chat template, and --no-chat-template"):
        job.token_ids(PromptItem(id=3, prompt=[{"role": "user", "content": "Hi"}], where="p:3"))


def test_choices_and_answers_of_an_item():
    item = PromptItem(id=1, prompt="Q?", fields={"choices": "Yes | No", "answer": 1}, where="mc.jsonl:4")
    assert item_choices(item, None) == ["Yes", "No"] and item_answer(item, ["Yes", "No"]) == "No"
    with pytest.raises(DataError, match="mc.jsonl:4: answer 'Maybe' is not one of the choices"):
        item_answer(
            PromptItem(id=1, prompt="Q?", fields={"answer": "Maybe"}, where="mc.jsonl:4"), ["Yes", "No"]
        )
    with pytest.raises(DataError, match="mc.jsonl:5: no answer choices: give --choices"):
        item_choices(PromptItem(id=2, prompt="Q?", where="mc.jsonl:5"), None)
