import io
import json

import pytest

from tuco.data import DataError, count_records, read_prompts


def test_jsonl_records_fields_and_default_ids(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"id": "q1", "prompt": "hi", "group": "a"}\n\n{"messages": [{"role": "user", "content": "yo"}]}\n'
    )
    records = list(read_prompts(str(path)))
    assert [(r.id, r.fields, r.where) for r in records] == [
        ("q1", {"group": "a"}, f"{path}:1"),
        (1, {}, f"{path}:3"),
    ]
    assert records[1].prompt == [{"role": "user", "content": "yo"}]
    assert count_records(str(path)) == 2


def test_on_error_skips_bad_records_and_goes_on(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\nnot json\n{"prompt": ""}\n{"prompt": "b"}\n[1]\n')
    errors = []
    records = list(read_prompts(str(path), on_error=errors.append))
    assert [r.prompt for r in records] == ["a", "b"]
    assert [str(e).split(": ", 1)[1][:14] for e in errors] == [
        "malformed JSON",
        "empty prompt; ",
        "expected a JSO",
    ]


def test_duplicate_ids_are_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n')
    with pytest.raises(DataError, match=f"{path}:2: duplicate id 1"):
        list(read_prompts(str(path)))


def test_bad_messages_and_field_override(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"messages": [{"content": "no role"}]}) + "\n")
    with pytest.raises(DataError, match="message 0 is not a"):
        list(read_prompts(str(path)))
    path.write_text(json.dumps({"question": "Why?", "prompt": "ignored"}) + "\n")
    assert next(read_prompts(str(path), field="question")).prompt == "Why?"
    with pytest.raises(DataError, match="expected 'q'; fields found: question, prompt"):
        list(read_prompts(str(path), field="q"))


def test_csv_chat_as_json_text_and_line_numbers(tmp_path):
    path = tmp_path / "p.csv"
    chat = json.dumps([{"role": "user", "content": "hello, there"}])
    path.write_text('id,messages,label\nx,"' + chat.replace('"', '""') + '",1\ny,"",0\n')
    errors = []
    records = list(read_prompts(str(path), on_error=errors.append))
    assert records[0].prompt[0]["content"] == "hello, there" and records[0].fields == {"label": "1"}
    assert f"{path}:3" in str(errors[0])


def test_stdin_guesses_jsonl_or_text(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO('{"prompt": "a"}\n{"prompt": "b"}\n'))
    assert [r.prompt for r in read_prompts("-")] == ["a", "b"]
    monkeypatch.setattr("sys.stdin", io.StringIO("plain one\n\nplain two\n"))
    records = list(read_prompts("-"))
    assert [(r.prompt, r.where) for r in records] == [("plain one", "<stdin>:1"), ("plain two", "<stdin>:3")]


def test_parquet_is_read_in_batches(tmp_path):
    import pandas as pd

    pd.DataFrame({"prompt": [f"p{i}" for i in range(2500)], "group": ["g"] * 2500}).to_parquet(
        tmp_path / "p.parquet"
    )
    records = read_prompts(str(tmp_path / "p.parquet"))
    first = next(records)
    assert first.prompt == "p0" and first.where.endswith("[row 0]")
    assert sum(1 for _ in records) == 2499 and count_records(str(tmp_path / "p.parquet")) == 2500


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such prompt file"):
        list(read_prompts(str(tmp_path / "nope.jsonl")))
    (tmp_path / "p.txt").write_text("x\n")
    with pytest.raises(DataError, match="unknown input format 'xml'"):
        list(read_prompts(str(tmp_path / "p.txt"), fmt="xml"))
