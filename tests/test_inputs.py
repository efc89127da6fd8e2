import pytest
import torch

from tuco import inputs


def test_pad_left_and_right_with_positions_and_last_index():
    ids = [[5, 6, 7], [8]]
    right = inputs.pad(ids, 0, "right")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert inputs.last_index(right["attention_mask"]).tolist() == [2, 0]
    left = inputs.pad(ids, 0, "left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert inputs.last_index(left["attention_mask"]).tolist() == [2, 2]


def test_strings_get_the_tokenizers_special_tokens(tok):
    assert inputs.encode(tok, "ab") == [[tok.bos_token_id, *tok("ab", add_special_tokens=False)["input_ids"]]]


def test_chat_goes_through_the_template_with_one_bos(tok):
    chat = [{"role": "user", "content": "hi"}]
    (ids,) = inputs.encode(tok, [chat])
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert tok.decode(ids) == text
    assert inputs.encode(tok, chat) == [ids]  # a single chat is one prompt


def test_batch_encoding_padding_is_stripped(tok):
    enc = tok(["abc", "d"], padding=True, return_tensors="pt")
    assert inputs.encode(tok, enc) == [tok("abc")["input_ids"], tok("d")["input_ids"]]
    ids = torch.tensor([[0, 0, 9], [7, 8, 9]])
    mask = torch.tensor([[0, 0, 1], [1, 1, 1]])
    assert inputs.encode(tok, {"input_ids": ids, "attention_mask": mask}) == [[9], [7, 8, 9]]


def test_bad_prompts_are_named(tok):
    from tokenizers import Tokenizer, processors

    no_bos = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    no_bos.post_processor = processors.TemplateProcessing(single="$A")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        inputs.encode(tok.__class__(tokenizer_object=no_bos), ["a", ""])
    with pytest.raises(TypeError, match="prompt 0 is a int"):
        inputs.encode(tok, [3])
    with pytest.raises(ValueError, match="needs 'input_ids'; got keys \\['ids'\\]"):
        inputs.encode(tok, {"ids": [[1]]})
    with pytest.raises(ValueError, match="row 0 of input_ids has no real token"):
        inputs.encode(tok, {"input_ids": [[1, 2]], "attention_mask": [[0, 0]]})


def test_token_ids_need_no_tokenizer():
    assert inputs.encode(None, [[5, 6], [7]]) == [[5, 6], [7]]
    with pytest.raises(ValueError, match="no tokenizer"):
        inputs.encode(None, ["text"])


def test_chat_without_template_says_so(tok):
    bare = tok.__class__(tokenizer_object=tok.backend_tokenizer)
    with pytest.raises(ValueError, match="no chat template"):
        inputs.encode(bare, [[{"role": "user", "content": "hi"}]])


def test_as_chat_adds_the_system_message_once():
    from tuco.inputs import as_chat

    assert as_chat("Hi") == [{"role": "user", "content": "Hi"}]
    assert as_chat("Hi", "Be kind.") == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
    ]
    chat = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hi"}]
    assert as_chat(chat, "Be kind.") == chat  # a chat that opens with its own system message keeps it
    turns = [{"role": "user", "content": "Hi"}]
    assert as_chat(turns, "Be kind.")[1:] == turns and turns == [
        {"role": "user", "content": "Hi"}
    ]  # no mutation
