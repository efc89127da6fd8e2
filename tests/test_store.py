import json

import pandas as pd
import pytest

from tuco.store import ResultsExistError, ResultsFile, convert, load_results


def test_write_resume_and_half_written_line(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsFile(path, key=("id", "alpha")) as out:
        out.write([{"id": 1, "alpha": 1.0, "tuco": 0.25}, {"id": "b", "alpha": 1.0, "tuco": 0.5}])
    with path.open("a") as f:
        f.write('{"id": 3, "alpha": 1.0, "tu')  # killed mid-write
    with pytest.raises(ResultsExistError, match="--resume"):
        ResultsFile(path)
    out = ResultsFile(path, resume=True, key=("id", "alpha"))
    assert out.is_done({"id": 1, "alpha": 1.0}) and out.is_done({"id": "b", "alpha": 1.0})
    assert not out.is_done({"id": 3, "alpha": 1.0}) and not out.is_done({"id": 1, "alpha": 0.5})
    out.write([{"id": 3, "alpha": 1.0, "tuco": 0.75}])
    out.close()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [1, "b", 3]


def test_damage_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1}\ngarbage\n{"id": 2}\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: unreadable line in the middle"):
        ResultsFile(path, resume=True)


def test_overwrite_and_lazy_creation(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    ResultsFile(path).close()
    assert not path.exists()  # nothing written, nothing created
    with ResultsFile(path) as out:
        out.write([{"id": 1}])
    with ResultsFile(path, overwrite=True) as out:
        out.write([{"id": 2}])
    assert path.read_text() == '{"id": 2}\n'


def test_convert_to_parquet_and_csv_round_trip(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsFile(path) as out:
        out.write([{"id": 0, "tuco": 0.1, "beta": [0.2, 0.1]}, {"id": "x", "tuco": 0.3, "beta": [0.4, 0.3]}])
    frame = pd.read_parquet(convert(path, "parquet"))
    assert frame["id"].tolist() == ["0", "x"] and [list(b) for b in frame["beta"]] == [[0.2, 0.1], [0.4, 0.3]]
    csv = pd.read_csv(convert(path, "csv"))
    assert csv["tuco"].tolist() == [0.1, 0.3] and json.loads(csv["beta"][1]) == [0.4, 0.3]
    assert (
        load_results([path, tmp_path / "r.parquet"])["source"].tolist() == ["r.jsonl"] * 2 + ["r.parquet"] * 2
    )
