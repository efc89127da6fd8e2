"""``tuco.completions``: the request flow of the completion routes, without a live server."""

import asyncio
import json

import pytest
from conftest import make_pair

from tuco.completions import REFUSAL, Completions
from tuco.decoding import TokenEvent
from tuco.engine import Engine, Overloaded, Submission
from tuco.guard import Guard
from tuco.rows import PromptTuco
from tuco.serve_metrics import ServeMetrics

CHAT = {"messages": [{"role": "user", "content": "Tell me something."}], "max_tokens": 5, "temperature": 0}


class FakeEngine:
    """Records what is submitted; hands each request the events given (or nothing, or Overloaded)."""

    load, waiting = 0, 0

    class stats:
        steps, tokens, last_tokens_per_second, rows, peak_rows = 0, 0, 0.0, 0, 0

    def __init__(self, events=(), overloaded=False):
        self.events, self.overloaded, self.submitted = list(events), overloaded, []

    def submit(self, ids, sampling, *, alpha, deliver, on_first=None, on_token=None, prompt_first=True):
        if self.overloaded:
            raise Overloaded("4 requests waiting or running (--max-queue 4)")
        job = Submission(ids, sampling, alpha, deliver, on_first, prompt_first=prompt_first)
        self.submitted.append(job)
        for event in self.events:
            if event.prompt_tuco is not None and on_first is not None and on_first(event):
                break
            deliver(event)
        return job

    def submit_call(self, call, deliver):
        deliver(call())
        return Submission([], None, 1.0, deliver)


def flow_of(pair, engine, **options):
    return Completions(pair, engine, ServeMetrics(engine), name="tiny", **options)


async def never():
    return False


def respond(flow, body, kind="chat", disconnected=never):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return asyncio.run(flow.respond(raw, kind, disconnected))


def answer(response) -> dict:
    return json.loads(response.body)


def counted(flow, status: str, route="/v1/chat/completions") -> float:
    return flow.metrics.registry.get_sample_value("tuco_requests_total", {"route": route, "status": status})


@pytest.fixture(scope="module")
def pair():
    from tuco.testing import byte_tokenizer

    return make_pair("llama", byte_tokenizer())


def test_validate_gives_ids_and_sampling_of_the_body(pair):
    flow = flow_of(pair, FakeEngine())
    body = dict(CHAT, top_p=0.5, seed=3, stop=["x"], temperature=0.7)
    parsed, [choice] = flow.validate(json.dumps(body).encode(), "chat")
    ids, sampling = choice.ids, choice.sampling
    assert ids == pair.encode([body["messages"]])[0]
    assert (sampling.max_new_tokens, sampling.temperature, sampling.top_p, sampling.seed, sampling.stop) == (
        5,
        0.7,
        0.5,
        3,
        ("x",),
    )
    _, [default] = flow.validate(json.dumps({"prompt": "Once"}).encode(), "completion")
    assert default.sampling.max_new_tokens == 16  # OpenAI's legacy completions default


@pytest.mark.parametrize(
    "body, param, words",
    [
        (b"{not json", None, "not valid JSON"),
        (dict(CHAT, frobnicate=1), "frobnicate", "unknown field"),
        (dict(CHAT, max_tokens=10**6), "max_tokens", "ask for at most"),
        (dict(CHAT, top_p=0), "top_p", "above 0"),
        ({"messages": []}, "messages", "empty"),
    ],
)
def test_bad_bodies_get_400_naming_the_field_and_are_counted(pair, body, param, words):
    flow = flow_of(pair, FakeEngine())
    response = respond(flow, body)
    error = answer(response)["error"]
    assert response.status_code == 400 and words in error["message"] and error["param"] == param
    assert counted(flow, "400") == 1
    assert flow.engine.submitted == []


def test_a_collected_answer_is_what_the_pair_generates(pair):
    engine = Engine(pair, max_batch=2, window=0.01)
    flow = flow_of(pair, engine)
    engine.start()
    try:
        response = respond(flow, CHAT)
    finally:
        engine.stop()
    body = answer(response)
    alone = pair.generate_with_tuco([CHAT["messages"]], max_new_tokens=5)[0]
    assert response.status_code == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == alone.text
    assert body["tuco"]["prompt"] == pytest.approx(alone.prompt_tuco, abs=1e-6)
    assert body["tuco"]["tokens"] == pytest.approx(alone.tokens_tuco, abs=1e-6)
    assert body["usage"]["completion_tokens"] == len(alone.token_ids)
    assert counted(flow, "200") == 1


def test_a_streamed_answer_concatenates_to_the_collected_one(pair):
    events = [TokenEvent(0, 65, "A", 0.25, 0.2), TokenEvent(0, 66, "B", 0.3, None, "length")]
    flow = flow_of(pair, FakeEngine(events))

    async def stream():
        response = await flow.respond(json.dumps(dict(CHAT, stream=True)).encode(), "chat", never)
        return [part async for part in response.body_iterator]

    parts = asyncio.run(stream())
    assert parts[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(p.removeprefix("data: ")) for p in parts[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "AB"
    assert chunks[1]["tuco"] == {"token": 0.25, "prompt": 0.2}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["tuco"]["mean"] == 0.275
    assert flow.engine.submitted[0].prompt_first is False  # a stream with no guard: no need to wait
    assert flow.engine.submitted[0].cancelled  # the slot is freed when the stream ends
    assert counted(flow, "200") == 1


def test_a_prompts_tuco_after_the_first_token_is_a_chunk_of_its_own(pair):
    events = [TokenEvent(0, 65, "A", None), PromptTuco(0, 0.2), TokenEvent(0, 66, "B", None, None, "length")]
    flow = flow_of(pair, FakeEngine(events))

    async def stream(body):
        response = await flow.respond(json.dumps(body).encode(), "chat", never)
        return [json.loads(p.removeprefix("data: ")) for p in [p async for p in response.body_iterator][:-1]]

    chunks = asyncio.run(stream(dict(CHAT, stream=True)))
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "A", None, "B", None]
    assert chunks[2]["tuco"] == {"prompt": 0.2} and chunks[1]["tuco"] == {"token": None}
    assert chunks[-1]["tuco"]["prompt"] == 0.2  # and in the summary
    asyncio.run(stream(dict(CHAT, stream=True, guard_threshold=0.1)))
    collected = answer(respond(flow, CHAT))
    assert collected["choices"][0]["message"]["content"] == "AB" and collected["tuco"]["prompt"] == 0.2
    assert [job.prompt_first for job in flow.engine.submitted] == [False, True, True]  # a guard, no stream


def test_a_client_that_leaves_is_noticed_and_its_request_cancelled(pair):
    flow = flow_of(pair, FakeEngine())  # nothing ever arrives

    async def gone():
        return True

    response = respond(flow, CHAT, disconnected=gone)
    assert response.status_code == 499 and flow.engine.submitted[0].cancelled


def test_a_full_engine_answers_503_with_retry_after(pair):
    flow = flow_of(pair, FakeEngine(overloaded=True))
    response = respond(flow, CHAT)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert answer(response)["error"]["type"] == "server_busy" and counted(flow, "503") == 1


def test_a_generation_failure_is_a_500_that_leaks_nothing(pair, caplog):
    class Failing(FakeEngine):
        def submit(self, ids, sampling, *, alpha, deliver, on_first=None, on_token=None, prompt_first=True):
            deliver(RuntimeError("the model broke"))
            return Submission(ids, sampling, alpha, deliver)

    flow = flow_of(pair, Failing())
    response = respond(flow, CHAT)
    error = answer(response)["error"]
    assert response.status_code == 500 and error["type"] == "server_error"
    assert "the model broke" not in error["message"] and "the model broke" in caplog.text  # logged, not sent


@pytest.mark.parametrize("action", ["flag", "block"])
def test_the_guard_flags_or_blocks_on_the_prompt_tuco(pair, action):
    guard = Guard(threshold=0.5, fpr=0.05, benign=20, measured_fpr=0.05)
    events = [TokenEvent(0, 65, "A", 0.25, 0.2, "length")]
    flow = flow_of(pair, FakeEngine(events), guard=guard, guard_action=action)
    body = answer(respond(flow, CHAT))
    assert body["tuco"]["flagged"] and body["tuco"]["threshold"] == 0.5
    if action == "block":
        assert body["choices"][0]["message"]["content"] == REFUSAL
        assert body["choices"][0]["finish_reason"] == "content_filter"
    else:
        assert body["choices"][0]["message"]["content"] == "A"
    assert flow.metrics.registry.get_sample_value("tuco_flagged_total") == 1


def test_a_row_whose_alpha_overflows_the_model_is_the_request_s_400(pair):
    from tuco.engine import RowError

    class Overflowing(FakeEngine):
        def submit(self, ids, sampling, *, alpha, deliver, on_first=None, on_token=None, prompt_first=True):
            deliver(RowError("the logits are not finite", overflow=True))
            return Submission(ids, sampling, alpha, deliver)

    response = respond(flow_of(pair, Overflowing()), dict(CHAT, alpha=90))
    error = answer(response)["error"]
    assert response.status_code == 400 and error["param"] == "alpha" and "closer to 1" in error["message"]
