"""Continuous batching (tuco.batcher): a row's tokens and TuCo do not depend on when it came or what
ran beside it (staggered arrivals, mixed alphas, lengths and budgets, chunked prefills, cancellations)."""

import pytest
import torch
from conftest import make_pair

from tuco import decoding, inputs
from tuco.batcher import Batcher
from tuco.rows import PromptTuco
from tuco.sampling import Sampling

ARCHS = ["llama", "gemma3_text", "mistral", "lfm2"]  # sliding windows of 5; lfm2: caches that cannot join
TEXTS = [
    "Hi",
    "Tell me a story about a cat who learned to fly over the sea.",
    "What is two plus two?",
    "A much longer prompt, so that its prefill is longer than a sliding window and than one chunk.",
    "Why?",
]


def plan(pair):
    """(arrival step, ids, sampling, alpha) of each request: staggered, mixed alphas, lengths, budgets."""
    ids = pair.encode(TEXTS)
    return [
        (0, ids[0], Sampling(max_new_tokens=6), 1.0),
        (0, ids[1], Sampling(max_new_tokens=3), 0.5),
        (2, ids[2], Sampling(max_new_tokens=7, temperature=1.0, seed=3), 1.0),
        (3, ids[3], Sampling(max_new_tokens=5), 1.5),
        (5, ids[4], Sampling(max_new_tokens=4, temperature=0.8, top_k=20, seed=1), 0.8),
    ]


def alone(pair, ids, sampling, alpha, monitor):
    events = decoding.decode(pair, [ids], [sampling], alpha=alpha, monitor=monitor)
    return [e for step in events for e in step]


def staggered(
    pair, requests, monitor, prefill_tokens=2048, cancel=None, prompt_first=True, first_token="ride"
):
    """Every request's events, each added at its step; ``cancel``: index -> tokens after which it
    leaves; ``prompt_first=False``: the prompts' TuCo may follow the first tokens (``PromptTuco``)."""
    got: dict[int, list] = {i: [] for i in range(len(requests))}
    cancelled = lambda i: cancel is not None and i in cancel and len(got[i]) >= cancel[i]  # noqa: E731
    batcher = Batcher(
        pair, monitor=monitor, prefill_tokens=prefill_tokens, cancelled=cancelled, first_token=first_token
    )
    step, first_at = 0, {}
    while step <= max(r[0] for r in requests) or batcher.busy:
        for i, (at, ids, sampling, alpha) in enumerate(requests):
            if at == step:
                batcher.add(i, ids, sampling, alpha, prompt_first=prompt_first)
        for event in batcher.step():
            first_at.setdefault(event.index, step)
            got[event.index].append(event)
        step += 1
    return got, first_at


def same(mine, reference):
    assert [e.token_id for e in mine] == [e.token_id for e in reference]
    assert [e.text for e in mine] == [e.text for e in reference]
    assert [e.tuco for e in mine] == pytest.approx([e.tuco for e in reference], abs=1e-5)
    assert mine[0].prompt_tuco == pytest.approx(reference[0].prompt_tuco, abs=1e-5)
    assert [e.finish_reason for e in mine] == [e.finish_reason for e in reference]


@pytest.mark.parametrize("monitor", ["tokens", "prompt"])
@pytest.mark.parametrize("arch", ARCHS)
def test_staggered_arrivals_with_mixed_alphas_give_what_each_gives_alone(arch, monitor, tok):
    pair = make_pair(arch, tok)
    requests = plan(pair)
    got, first_at = staggered(pair, requests, monitor)
    for i, (at, ids, sampling, alpha) in enumerate(requests):
        same(got[i], alone(pair, ids, sampling, alpha, monitor))
        if arch != "lfm2":  # a newcomer's first token comes in the step it was added at
            assert first_at[i] == at


@pytest.mark.parametrize("monitor", ["tokens", "prompt"])
@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_a_chunked_prefill_gives_what_a_whole_one_gives(arch, monitor, tok):
    pair = make_pair(arch, tok)
    requests = plan(pair)
    chunked, first_at = staggered(pair, requests, monitor, prefill_tokens=8)
    whole, _ = staggered(pair, requests, monitor)
    for i in range(len(requests)):
        same(chunked[i], whole[i])
    long_prompt = len(requests[3][1])
    assert long_prompt > 2 * 16 and first_at[3] > requests[3][0]  # prefilled over several steps


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "lfm2"])
def test_cancelled_rows_leave_mid_batch_and_the_others_go_on(arch, tok):
    pair = make_pair(arch, tok)
    requests = plan(pair)
    got, _ = staggered(pair, requests, "tokens", cancel={0: 2, 3: 1})
    for i, (_, ids, sampling, alpha) in enumerate(requests):
        reference = alone(pair, ids, sampling, alpha, "tokens")
        if i in (0, 3):
            assert [e.token_id for e in got[i]] == [e.token_id for e in reference][: {0: 2, 3: 1}[i]]
        else:
            same(got[i], reference)


def test_rows_of_every_alpha_share_one_batch(tok):
    pair = make_pair("llama", tok)
    widths = []
    handle = pair.ft_blocks[0].register_forward_hook(lambda m, a, o: widths.append(a[0].shape[0]))
    try:
        staggered(pair, [(0, r[1], Sampling(max_new_tokens=4), r[3]) for r in plan(pair)], "tokens")
    finally:
        handle.remove()
    assert max(widths) == len(TEXTS)  # alphas 1, 0.5, 1.5, 0.8 decode in one forward pass


def test_the_light_lane_runs_no_pt_blocks_while_decoding(tok):
    pair = make_pair("llama", tok)
    calls = []
    handle = pair.pt_blocks[0].register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    try:
        got, _ = staggered(
            pair, [(s, pair.encode(["Hello"])[0], Sampling(max_new_tokens=4), 1.0) for s in (0, 2)], "prompt"
        )
    finally:
        handle.remove()
    assert all(len(events) == 4 for events in got.values())
    assert len(calls) == 2  # one (last-position) prefill each, nothing while decoding


def test_bad_rows_are_refused_when_added(tok):
    pair = make_pair("llama", tok)
    batcher = Batcher(pair)
    with pytest.raises(ValueError, match="vocabulary"):
        batcher.add(0, [10**6], Sampling(max_new_tokens=2))
    with pytest.raises(ValueError, match="monitor"):
        Batcher(pair, monitor="every")
    assert not batcher.busy


def test_row_alpha_is_each_row_at_its_own_alpha(tok):
    pair = make_pair("gemma3_text", tok)
    batch = pair.body_inputs(inputs.pad(pair.encode(TEXTS[:3]), pair.pad_id, "left"))
    alphas = [0.5, 1.0, 1.5]
    with torch.inference_mode():
        with pair.steer(1.0, row_alpha=torch.tensor(alphas)):
            mixed = pair.finetuned(**batch).logits
        ft = pair.finetuned(**batch).logits
        for j, a in enumerate(alphas):
            with pair.steer(a):
                own = pair.finetuned(**batch).logits
            torch.testing.assert_close(mixed[j], own[j], atol=1e-5, rtol=1e-5)
    assert torch.equal(mixed[1], ft[1])  # alpha 1: the FT forward itself
    with pytest.raises(ValueError, match="row_alpha"):
        pair.steer(0.5, row_alpha=torch.tensor(alphas))


def test_a_newcomers_unembedding_rides_the_running_rows_pass(tok):
    pair = make_pair("gemma3_text", tok)  # soft-capped logits: the model's own head code runs on every row
    head = pair.finetuned.get_output_embeddings()
    rows = []
    handle = head.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    ids = pair.encode(TEXTS)
    try:
        got, _ = staggered(
            pair,
            [(0, ids[0], Sampling(max_new_tokens=5), 1.0), (2, ids[1], Sampling(max_new_tokens=3), 0.5)],
            "tokens",
        )
    finally:
        handle.remove()
    # step 0: A's prefill (its own pass); 1: A; 2: A + B's first token in one pass; 3-4: both
    assert rows == [1, 1, 2, 2, 2]
    same(got[1], alone(pair, ids[1], Sampling(max_new_tokens=3), 0.5, "tokens"))


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "lfm2"])
def test_a_first_token_sent_before_its_prompts_tuco_changes_neither(arch, tok):
    pair = make_pair(arch, tok)
    requests = plan(pair)
    got, first_at = staggered(pair, requests, "prompt", prompt_first=False)
    for i, (at, ids, sampling, alpha) in enumerate(requests):
        reference = alone(pair, ids, sampling, alpha, "prompt")
        events = got[i]
        if alpha == 1.0:  # the light lane: the first token, then its prompt's TuCo, in the same step
            assert isinstance(events[1], PromptTuco) and events[0].prompt_tuco is None
            assert events[1].prompt_tuco == pytest.approx(reference[0].prompt_tuco, abs=1e-5)
            events = [events[0], *events[2:]]
            events[0].prompt_tuco = got[i][1].prompt_tuco
        assert not any(isinstance(e, PromptTuco) for e in events)
        same(events, reference)
        if arch != "lfm2":
            assert first_at[i] == at


def test_a_row_that_ends_at_its_first_token_gets_its_prompts_tuco_with_it(tok):
    pair = make_pair("llama", tok)
    ids = pair.encode(TEXTS)
    requests = [(0, ids[0], Sampling(max_new_tokens=4), 1.0), (1, ids[1], Sampling(max_new_tokens=1), 1.0)]
    got, _ = staggered(pair, requests, "prompt", prompt_first=False)
    (only,) = got[1]
    assert only.finish_reason == "length"
    reference = alone(pair, ids[1], Sampling(max_new_tokens=1), 1.0, "prompt")
    assert only.prompt_tuco == pytest.approx(reference[0].prompt_tuco, abs=1e-5)


def test_a_row_cancelled_before_its_prompts_tuco_gets_none(tok):
    pair = make_pair("llama", tok)
    gone: set[int] = set()
    batcher = Batcher(pair, monitor="prompt", cancelled=gone.__contains__)
    for i, ids in enumerate(pair.encode(TEXTS[:2])):
        batcher.add(i, ids, Sampling(max_new_tokens=4), prompt_first=False)
    first = batcher.prefill() + batcher.decode()
    assert [e.index for e in first] == [0, 1] and all(e.prompt_tuco is None for e in first)
    gone.add(1)
    assert [(type(e), e.index) for e in batcher.settle()] == [(PromptTuco, 0)]


@pytest.mark.parametrize("monitor", ["tokens", "prompt"])
def test_a_first_token_unembedded_alone_changes_nothing_but_the_passes(monitor, tok):
    pair = make_pair("gemma3_text", tok)
    head = pair.finetuned.get_output_embeddings()
    rows = []
    handle = head.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    ids = pair.encode(TEXTS)
    requests = [(0, ids[0], Sampling(max_new_tokens=5), 1.0), (2, ids[1], Sampling(max_new_tokens=3), 1.0)]
    try:
        got, first_at = staggered(pair, requests, monitor, first_token="alone")
    finally:
        handle.remove()
    # step 2: B's prefill has a pass through the unembedding of its own, then A's step; B joins after
    assert rows == [1, 1, 1, 1, 2, 2]
    assert first_at == {0: 0, 1: 2}
    for i, (_, row, sampling, alpha) in enumerate(requests):
        same(got[i], alone(pair, row, sampling, alpha, monitor))
    with pytest.raises(ValueError, match="first_token"):
        Batcher(pair, first_token="soon")


def test_huge_but_finite_logits_are_no_error_and_nan_is(tok):
    from tuco.rows import Row, choose

    rows = [Row(j, [1], Sampling(max_new_tokens=2), 1.0, tok, set(), torch.device("cpu")) for j in range(3)]
    logits = torch.zeros(3, 8)
    logits[0, :2] = 3e38  # finite: their sum overflows, the row is still fine
    logits[1, 3] = float("nan")
    events, _ = choose(rows, logits, None, None, lambda index: False)
    assert [e.error is None for e in events] == [True, False, True]
    assert "not finite" in events[1].error and events[1].overflow
