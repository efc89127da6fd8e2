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


def test_a_second_writer_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    import subprocess
    import sys

    from tuco.errors import UsageError

    path = tmp_path / "r.jsonl"
    with ResultsFile(path) as out:
        with pytest.raises(UsageError, match=r"another tuco run \(pid \d+\)"):
            ResultsFile(path)
        out.write([{"id": 1}])
    assert not (tmp_path / "r.jsonl.lock").exists()  # released on close
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from tuco.store import ResultsFile; r = ResultsFile({str(path)!r}, resume=True); "
            "print('locked', flush=True); import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UsageError, match=f"pid {holder.pid}"):
        ResultsFile(path, resume=True)
    holder.kill()  # kill -9: no cleanup runs, the lock file stays, the OS lock goes
    holder.wait()
    assert (tmp_path / "r.jsonl.lock").exists()
    with ResultsFile(path, resume=True) as out:
        assert out.is_done({"id": 1})


def test_overwrite_keeps_the_old_results_until_new_ones_land(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1}\n')
    ResultsFile(path, overwrite=True).close()  # a run that failed before its first batch
    assert path.read_text() == '{"id": 1}\n'
    with ResultsFile(path, overwrite=True, settings={"norm": "l2"}) as out:
        assert path.read_text() == '{"id": 1}\n'
        out.write([{"id": 2}])
        assert path.read_text() == '{"id": 2}\n'
        out.write([{"id": 3}])
    assert path.read_text() == '{"id": 2}\n{"id": 3}\n'
    assert json.loads((tmp_path / "r.jsonl.settings.json").read_text()) == {"norm": "l2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.settings.json"]


def test_resume_compares_the_settings_and_refuses_repeats(tmp_path):
    from tuco.errors import DataError, SettingsMismatchError

    path = tmp_path / "r.jsonl"
    with ResultsFile(path, settings={"norm": "l1", "model": "a"}) as out:
        out.write([{"id": 1, "model": "a"}])
    ResultsFile(path, resume=True, settings={"norm": "l1", "model": "a"}).close()
    with pytest.raises(SettingsMismatchError, match=r"model: 'a' -> 'b'; norm: 'l1' -> 'l2'"):
        ResultsFile(path, resume=True, settings={"norm": "l2", "model": "b"})
    (tmp_path / "r.jsonl.settings.json").unlink()  # results of an older tuco: the records say
    with pytest.raises(SettingsMismatchError, match=r"model: 'a' -> 'b'"):
        ResultsFile(path, resume=True, settings={"norm": "l2", "model": "b"})
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 1}\n')  # two runs on one file
    with pytest.raises(DataError, match=r"r.jsonl:3: a second record"):
        ResultsFile(path, resume=True)
    with pytest.raises(DataError, match=r"r.jsonl:3: the same id .* as line 1"):
        load_results([path])


def test_a_full_disk_keeps_what_was_written(tmp_path, monkeypatch):
    import errno

    from tuco.errors import RunError

    path = tmp_path / "r.jsonl"
    with ResultsFile(path) as out:
        out.write([{"id": 1}])

        def full(*args):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("tuco.store.os.fsync", full)
        with pytest.raises(RunError, match=r"r.jsonl: no space left.*the 1 records written before are kept"):
            out.write([{"id": 2}])
        assert not out.is_done({"id": 2})


def test_non_finite_numbers_are_written_as_null(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsFile(path) as out:
        out.write([{"id": 1, "kl": float("nan"), "layers": [1.0, float("inf")], "ok": 0.5}])
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {
        "id": 1,
        "kl": None,
        "layers": [1.0, None],
        "ok": 0.5,
    }
