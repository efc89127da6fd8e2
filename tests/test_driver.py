"""The resumable batch driver: windows, resume, out-of-memory splits, non-finite results, shards."""

import pytest
import torch

from tuco.driver import NonFiniteError, check_finite, drive, windows


class Results:
    """A results file in memory (what drive needs of store.ResultsFile)."""

    def __init__(self, done=()):
        self.rows = [{"id": i} for i in done]

    def is_done(self, record):
        return any(r["id"] == record["id"] for r in self.rows)

    def write(self, records):
        self.rows += list(records)


def test_windows_are_read_lazily():
    taken = []

    def items():
        for i in range(10):
            taken.append(i)
            yield i

    first = next(windows(items(), 4))
    assert first == [0, 1, 2, 3] and taken == [0, 1, 2, 3]  # nothing read beyond the first window
    assert [len(w) for w in windows(range(10), 4)] == [4, 4, 2]


def test_only_windows_with_missing_items_run_and_they_run_whole():
    calls = []

    def compute(window):
        calls.append([it["id"] for it in window])
        return [{"id": it["id"], "tuco": 0.1} for it in window]

    results = Results(done=[0, 1, 2, 3, 5])  # window 0 done; window 1 half done
    items = [{"id": i} for i in range(10)]
    written = drive(items, compute, results, results.is_done, batch_size=2, window=2, quiet=True)
    assert calls == [[4, 5, 6, 7], [8, 9]]  # computed whole: batched as in one uninterrupted run
    assert written == 5 and [r["id"] for r in results.rows[5:]] == [4, 6, 7, 8, 9]  # 5 is not written twice


def test_out_of_memory_halves_the_window_down_to_one_prompt():
    def compute(window):
        if len(window) > 1:
            raise torch.OutOfMemoryError("simulated")
        return [{"id": window[0]["id"]}]

    results = Results()
    assert (
        drive([{"id": i} for i in range(3)], compute, results, results.is_done, batch_size=4, quiet=True) == 3
    )
    with pytest.raises(RuntimeError, match=r"Out of memory on a single prompt \(prompt 7\)"):

        def never(window):
            raise torch.OutOfMemoryError("simulated")

        drive(
            [{"id": 7}],
            never,
            Results(),
            lambda it: False,
            describe=lambda it: f"prompt {it['id']}",
            quiet=True,
        )


def test_nothing_non_finite_is_written():
    results = Results()
    with pytest.raises(NonFiniteError, match="tuco is nan for prompt id 1"):
        drive([{"id": 1}], lambda w: [{"id": 1, "tuco": float("nan")}], results, results.is_done, quiet=True)
    assert results.rows == []
    with pytest.raises(NonFiniteError, match="non-finite probabilities"):
        check_finite([{"id": 2, "probs": [[0.5, float("inf")]]}])


def test_ranks_take_every_world_th_window():
    seen = {0: [], 1: []}
    for rank in (0, 1):
        results = Results()
        drive(
            [{"id": i} for i in range(10)],
            lambda w, r=rank: seen[r].extend(it["id"] for it in w) or [{"id": it["id"]} for it in w],
            results,
            results.is_done,
            batch_size=1,
            window=3,
            rank=rank,
            world=2,
            quiet=True,
        )
    assert seen == {0: [0, 1, 2, 6, 7, 8], 1: [3, 4, 5, 9]}
