"""``tuco.engine``: the serving loop on its own (no server): continuous batching, bounds, failures."""

import threading
import time

import pytest
from conftest import PROMPTS, make_pair

from tuco.batcher import Batcher
from tuco.decoding import TokenEvent
from tuco.engine import Engine, Overloaded
from tuco.rows import PromptTuco
from tuco.sampling import Sampling


class Inbox:
    """What one request receives from the engine's thread."""

    def __init__(self):
        self.items, self.done = [], threading.Event()

    def __call__(self, item):
        self.items.append(item)
        if isinstance(item, PromptTuco):
            return
        if not isinstance(item, TokenEvent) or item.finish_reason is not None:
            self.done.set()

    def text(self) -> str:
        return "".join(e.text for e in self.items if isinstance(e, TokenEvent))


def wait(inboxes, timeout=60.0):
    deadline = time.monotonic() + timeout
    for inbox in inboxes:
        assert inbox.done.wait(max(0.0, deadline - time.monotonic())), "a request never finished"


def test_requests_of_any_alpha_share_the_batch_and_give_what_they_give_alone(tok):
    pair = make_pair("llama", tok)
    engine = Engine(pair, max_batch=4, window=0.05)
    ids = pair.encode(PROMPTS[:3])
    alphas = [1.0, 0.5, 1.0]
    inboxes = [Inbox() for _ in ids]
    for row, alpha, inbox in zip(ids, alphas, inboxes, strict=True):  # queued before the thread starts
        engine.submit(row, Sampling(max_new_tokens=5), alpha=alpha, deliver=inbox)
    engine.start()
    try:
        wait(inboxes)
    finally:
        engine.stop()
    assert engine.stats.peak_rows == 3  # alphas 1 and 0.5 decoded side by side
    assert engine.stats.tokens == sum(len(inbox.items) for inbox in inboxes)
    for row, alpha, inbox in zip(ids, alphas, inboxes, strict=True):
        alone = pair.generate_with_tuco([row], alpha, max_new_tokens=5)[0]
        assert inbox.text() == alone.text
        assert [e.tuco for e in inbox.items] == pytest.approx(alone.tokens_tuco, abs=1e-5)
        assert inbox.items[0].prompt_tuco == pytest.approx(alone.prompt_tuco, abs=1e-5)
    assert engine.load == 0


def test_a_full_queue_is_refused_and_a_cancelled_request_frees_its_slot(tok):
    engine = Engine(make_pair("llama", tok), max_batch=1, max_queue=2)  # not started: nothing runs
    first = engine.submit([5, 6], Sampling(), alpha=1.0, deliver=print)
    engine.submit([5, 6], Sampling(), alpha=1.0, deliver=print)
    with pytest.raises(Overloaded, match="2 requests waiting or running"):
        engine.submit([5, 6], Sampling(), alpha=1.0, deliver=print)
    first.cancel()
    assert engine.load == 1 and engine.waiting == 1
    engine.submit([5, 6], Sampling(), alpha=1.0, deliver=print)


def test_a_failed_batch_tells_every_request_in_it(tok, monkeypatch):
    pair = make_pair("llama", tok)

    def broken(*args, **kwargs):
        raise RuntimeError("the model broke")

    monkeypatch.setattr(Batcher, "prefill", broken)
    engine = Engine(pair, max_batch=4, window=0.05)
    inboxes = [Inbox(), Inbox()]
    for inbox in inboxes:
        engine.submit([5, 6, 7], Sampling(max_new_tokens=3), alpha=1.0, deliver=inbox)
    engine.start()
    try:
        wait(inboxes)
    finally:
        engine.stop()
    for inbox in inboxes:
        assert len(inbox.items) == 1 and isinstance(inbox.items[0], RuntimeError)
    assert engine.load == 0


def test_on_first_can_stop_a_request_before_its_first_token_is_sent(tok):
    pair = make_pair("llama", tok)
    engine = Engine(pair, max_batch=2, window=0.05)
    seen, stopped = [], threading.Event()

    def on_first(event):
        seen.append(event.prompt_tuco)
        stopped.set()
        return True

    kept = Inbox()
    blocked = engine.submit(
        [5, 6, 7], Sampling(max_new_tokens=4), alpha=1.0, deliver=print, on_first=on_first
    )
    engine.submit([8, 9], Sampling(max_new_tokens=4), alpha=1.0, deliver=kept)
    engine.start()
    try:
        wait([kept])
        assert stopped.wait(10)
    finally:
        engine.stop()
    assert blocked.cancelled and seen and isinstance(seen[0], float)
    assert len(kept.items) == 4  # the other row of the batch runs on


def test_bounds_are_checked():
    with pytest.raises(ValueError, match="max_batch"):
        Engine(None, max_batch=0)
    with pytest.raises(ValueError, match="max_queue"):
        Engine(None, max_batch=4, max_queue=2)


def test_the_model_thread_draws_no_progress_bars(tok):
    from tuco import progress

    engine = Engine(make_pair("llama", tok), max_batch=1, window=0.0)
    inbox = Inbox()
    engine.submit_call(lambda: progress.bar(1, "inside the server").disable, inbox)
    engine.start()
    try:
        assert inbox.done.wait(10)
    finally:
        engine.stop()
    assert inbox.items == [True]


def test_a_request_that_joins_mid_answer_gets_what_it_gets_alone(tok):
    """Continuous batching: B and C arrive while A decodes, join its batch, and leave it unchanged."""
    pair = make_pair("gemma3_text", tok)
    engine = Engine(pair, max_batch=4, window=0.0)
    ids = pair.encode(PROMPTS[:3])
    plan = [(ids[0], Sampling(max_new_tokens=14), 1.0), (ids[1], Sampling(max_new_tokens=5), 0.5)]
    plan.append((ids[2], Sampling(max_new_tokens=6, temperature=0.9, seed=4), 1.3))
    inboxes = [Inbox() for _ in plan]
    engine.start()
    try:
        engine.submit(plan[0][0], plan[0][1], alpha=plan[0][2], deliver=inboxes[0])
        deadline = time.monotonic() + 60
        while len(inboxes[0].items) < 3:  # A is under way
            assert time.monotonic() < deadline
            time.sleep(0.005)
        for (row, sampling, alpha), inbox in zip(plan[1:], inboxes[1:], strict=True):
            engine.submit(row, sampling, alpha=alpha, deliver=inbox)
        wait(inboxes)
    finally:
        engine.stop()
    assert engine.stats.peak_rows >= 2  # B and C joined A while it ran
    for (row, sampling, alpha), inbox in zip(plan, inboxes, strict=True):
        alone = [e for step in pair.decode([row], [sampling], alpha=alpha) for e in step]
        assert [e.token_id for e in inbox.items] == [e.token_id for e in alone]
        assert [e.tuco for e in inbox.items] == pytest.approx([e.tuco for e in alone], abs=1e-5)
    assert engine.load == 0


def test_the_kv_budget_is_kept_and_a_request_that_never_fits_is_refused(tok):
    from tuco.engine import TooLarge

    pair = make_pair("llama", tok)
    engine = Engine(pair, max_batch=8, window=0.05, max_batch_tokens=2 * 20)
    with pytest.raises(TooLarge, match="--max-batch-tokens"):
        engine.submit([5] * 10, Sampling(max_new_tokens=31), alpha=1.0, deliver=print)
    inboxes = [Inbox() for _ in range(4)]
    for inbox in inboxes:  # 10 + 10 tokens each: two fit the budget at a time
        engine.submit(
            [5, 6, 7, 8, 9, 10, 11, 12, 13, 14], Sampling(max_new_tokens=10), alpha=1.0, deliver=inbox
        )
    engine.start()
    try:
        wait(inboxes)
    finally:
        engine.stop()
    assert engine.stats.peak_rows == 2
    assert all(len(inbox.items) == 10 and inbox.text() == inboxes[0].text() for inbox in inboxes)


def test_a_stream_with_nothing_to_judge_gets_its_first_token_before_its_prompts_tuco(tok):
    pair = make_pair("llama", tok)
    engine = Engine(pair, monitor="prompt", max_batch=4, window=0.05)
    ids = pair.encode(PROMPTS[:2])
    inboxes, seen = [Inbox() for _ in ids], []
    engine.start()
    try:
        for row, inbox, first in zip(ids, inboxes, (False, True), strict=True):  # one after the other
            engine.submit(
                row,
                Sampling(max_new_tokens=4),
                alpha=1.0,
                deliver=inbox,
                on_first=lambda event: seen.append(event.prompt_tuco) is not None,
                prompt_first=first,
            )
            wait([inbox])
    finally:
        engine.stop()
    later, first = inboxes
    kinds = [type(e) for e in later.items]
    assert kinds[:2] == [TokenEvent, PromptTuco] and PromptTuco not in kinds[2:]
    assert later.items[0].prompt_tuco is None
    assert all(type(e) is TokenEvent for e in first.items) and first.items[0].prompt_tuco is not None
    assert engine.stats.tokens == len(later.items) - 1 + len(first.items)  # the PromptTuco is no token
    for row, inbox, prompt_tuco in zip(ids, inboxes, (later.items[1], first.items[0]), strict=True):
        alone = pair.generate_with_tuco([row], 1.0, max_new_tokens=4)[0]
        assert inbox.text() == alone.text
        assert prompt_tuco.prompt_tuco == pytest.approx(alone.prompt_tuco, abs=1e-5)
    assert seen == [later.items[1].prompt_tuco, first.items[0].prompt_tuco]  # the metric saw both
