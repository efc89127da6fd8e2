"""``tuco serve``: the OpenAI Python client against a real server on 127.0.0.1, a tiny random pair."""

import contextlib
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from conftest import make_pair
from openai import OpenAI

from tuco.guard import Guard
from tuco.server import REFUSAL, create_app

CHAT = [{"role": "user", "content": "Tell me something."}]


@contextlib.contextmanager
def serving(app):
    """The app on a free port of 127.0.0.1 in a thread; its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def pair():
    from tuco.testing import byte_tokenizer

    return make_pair("llama", byte_tokenizer())


@pytest.fixture(scope="module")
def url(pair):
    with serving(create_app(pair, name="tiny", max_batch=4, window=0.05)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def test_chat_completion_carries_the_prompt_and_token_tuco(client, pair):
    response = client.chat.completions.create(model="anything", messages=CHAT, max_tokens=8, temperature=0)
    tuco = response.model_extra["tuco"]
    expected = pair.generate_with_tuco([CHAT], max_new_tokens=8)[0]
    assert response.choices[0].message.content == expected.text
    assert response.choices[0].finish_reason == expected.finish_reason
    assert tuco["prompt"] == pytest.approx(pair.score([CHAT])[0].tuco, abs=1e-5)
    assert tuco["tokens"] == pytest.approx(expected.tokens_tuco, abs=1e-5)
    # the per-token TuCo of the served answer, recomputed without a cache on prompt + answer
    ids = pair.encode([CHAT])[0]
    again = pair.score([ids + expected.token_ids[:-1]], per_token=True, fast=False)[0].tuco_tokens
    assert tuco["tokens"] == pytest.approx(again[len(ids) - 1 :], abs=1e-5)
    assert response.usage.completion_tokens == len(tuco["tokens"])
    assert response.usage.prompt_tokens == len(ids)
    assert tuco["min"] == min(tuco["tokens"]) and tuco["flagged"] is False and tuco["threshold"] is None
    assert response.model == "anything"


def test_streaming_chunks_carry_each_tokens_tuco(client):
    whole = client.chat.completions.create(model="m", messages=CHAT, max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=CHAT,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    content = [c for c in chunks if c.choices and c.choices[0].delta.content is not None]
    tokens = [c for c in content if "token" in (c.model_extra.get("tuco") or {})]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content for c in content) == whole.choices[0].message.content
    assert [c.model_extra["tuco"]["token"] for c in tokens] == pytest.approx(
        whole.model_extra["tuco"]["tokens"]
    )
    assert tokens[0].model_extra["tuco"]["prompt"] == pytest.approx(whole.model_extra["tuco"]["prompt"])
    last = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert last.model_extra["tuco"]["tokens"] == pytest.approx(whole.model_extra["tuco"]["tokens"])
    assert chunks[-1].usage.completion_tokens == len(tokens) == whole.usage.completion_tokens


def test_completions_endpoint_and_alpha(client, pair):
    response = client.completions.create(
        model="m", prompt="Once upon a time", max_tokens=6, temperature=0, extra_body={"alpha": 0.5}
    )
    expected = pair.generate_with_tuco(["Once upon a time"], 0.5, max_new_tokens=6)[0]
    assert response.choices[0].text == expected.text
    assert response.model_extra["tuco"]["prompt"] == pytest.approx(expected.prompt_tuco, abs=1e-5)
    assert response.model_extra["tuco"]["tokens"] == pytest.approx(expected.tokens_tuco, abs=1e-5)


def test_stop_and_seed(client):
    first = client.completions.create(model="m", prompt="Hello", max_tokens=12, temperature=0)
    text = first.choices[0].text
    stop = text[4:6]
    cut = client.completions.create(model="m", prompt="Hello", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    sampled = [
        client.completions.create(model="m", prompt="Hello", max_tokens=12, temperature=1.3, seed=seed)
        for seed in (5, 5, 6)
    ]
    texts = [s.choices[0].text for s in sampled]
    assert texts[0] == texts[1] != texts[2]


def test_concurrent_requests_are_batched_and_independent(url, client, pair):
    """Same tokens and TuCo as when sent alone, whatever else was in the batch; nothing crossed."""
    prompts = [f"Prompt number {i}: " + "x" * i for i in range(8)]
    lengths = [3, 9, 5, 12, 4, 8, 10, 6]

    def ask(i):
        return client.completions.create(model="m", prompt=prompts[i], max_tokens=lengths[i], temperature=0)

    alone = [ask(i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(8)))
    assert client_stats(url) > 1  # some were decoded together
    for a, b, n in zip(alone, together, lengths, strict=True):
        assert b.choices[0].text == a.choices[0].text
        assert b.model_extra["tuco"]["tokens"] == pytest.approx(a.model_extra["tuco"]["tokens"], abs=1e-5)
        assert b.model_extra["tuco"]["prompt"] == pytest.approx(a.model_extra["tuco"]["prompt"], abs=1e-5)
        assert b.usage.completion_tokens <= n


def client_stats(url) -> int:
    """The most requests the server decoded in one step."""
    metrics = httpx.get(f"{url}/metrics").text
    return int(
        next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("tuco_peak_rows"))
    )


BAD = [
    ("chat", b"{not json", None, "not valid JSON"),
    ("chat", b"[1, 2]", None, "must be a JSON object"),
    ("chat", {"model": "m"}, "messages", "'messages' is required"),
    ("chat", {"messages": []}, "messages", "empty"),
    ("chat", {"messages": "hi"}, "messages", "must be a list"),
    ("chat", {"messages": [{"role": "user"}]}, "messages", "not a"),
    ("chat", {"messages": [{"role": "user", "content": 5}]}, "messages", "'content' must be a string"),
    ("chat", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages", "'wizard'"),
    ("chat", {"messages": [{"role": "user", "content": "   "}]}, "messages", "no text"),
    ("chat", {"messages": [{"role": "user", "content": "x" * 3000}]}, "messages", "context"),
    ("chat", {"messages": CHAT, "max_tokens": 0}, "max_tokens", "at least 1"),
    ("chat", {"messages": CHAT, "max_tokens": -3}, "max_tokens", "at least 1"),
    ("chat", {"messages": CHAT, "max_tokens": "ten"}, "max_tokens", "an integer"),
    ("chat", {"messages": CHAT, "max_tokens": 10**6}, "max_tokens", "ask for at most"),
    ("chat", {"messages": CHAT, "temperature": "hot"}, "temperature", "a number"),
    ("chat", {"messages": CHAT, "temperature": 9}, "temperature", "at most 2"),
    ("chat", {"messages": CHAT, "top_p": 0}, "top_p", "above 0"),
    ("chat", {"messages": CHAT, "seed": -1}, "seed", "at least 0"),
    ("chat", {"messages": CHAT, "stop": [1]}, "stop", "non-empty string"),
    ("chat", {"messages": CHAT, "stream": "yes"}, "stream", "true or false"),
    ("chat", {"messages": CHAT, "alpha": "x"}, "alpha", "a number"),
    ("chat", {"messages": CHAT, "n": 3}, "n", "not supported"),
    ("chat", {"messages": CHAT, "colour": "red"}, "colour", "unknown field 'colour'"),
    ("completion", {"prompt": ""}, "prompt", "non-empty string"),
    ("completion", {"prompt": ["a", ""]}, "prompt", "'prompt'[1] must be a non-empty string"),
    ("completion", {"prompt": "hi", "echo": "yes"}, "echo", "true or false"),
    ("completion", {"prompt": "hi", "echo": True, "stream": True}, "echo", "not supported with 'stream'"),
    ("completion", {"prompt": [[1, 2], [5000]]}, "prompt", "outside the model's vocabulary"),
    ("chat", {"messages": CHAT, "temperature": 1e-300}, "temperature", "0 (greedy) or at least"),
    ("chat", {"messages": CHAT, "alpha": 1e6}, "alpha", "at most 100"),
    (
        "chat",
        {"messages": CHAT, "response_format": {"type": "json_object"}},
        "response_format",
        "ask for nothing",
    ),
    ("chat", {"messages": CHAT, "top_logprobs": 2}, "top_logprobs", "needs 'logprobs'"),
]


@pytest.mark.parametrize("kind, body, param, message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_requests_get_a_400_naming_the_field(url, kind, body, param, message):
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(url + path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (
        message in error["message"] and error["param"] == param and error["type"] == "invalid_request_error"
    )
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_nan_alpha_is_refused(url):
    response = httpx.post(
        f"{url}/v1/chat/completions",
        content=b'{"messages": [{"role": "user", "content": "hi"}], "alpha": NaN}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "alpha"


def test_models_health_and_metrics(url, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=3, temperature=0)
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["load"] == 0
    metrics = httpx.get(f"{url}/metrics").text
    for name in (
        "tuco_prompt_tuco_bucket",
        "tuco_token_tuco_count",
        "tuco_requests_total",
        "tuco_flagged_total",
    ):
        assert name in metrics
    assert 'tuco_requests_total{route="/v1/chat/completions",status="200"}' in metrics


def test_a_client_that_leaves_mid_stream_frees_its_slot(url, pair, monkeypatch):
    from tuco.pair_base import PairBase

    monkeypatch.setattr(PairBase, "eos_ids", lambda pair: set())  # a random model may end at once
    app = create_app(pair, name="t", max_batch=1, max_queue=1)
    with serving(app) as base:
        body = {"prompt": "Go on", "max_tokens": 1500, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            busy = httpx.post(f"{base}/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
            assert busy.json()["error"]["type"] == "server_busy"
        deadline = time.monotonic() + 20
        while httpx.get(f"{base}/health").json()["load"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{base}/health").json()["load"] == 0
        again = httpx.post(f"{base}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30)
        assert again.status_code == 200
        time.sleep(0.3)
        assert app.state.engine.stats.tokens < 1500  # the left row stopped decoding


def test_the_guard_flags_and_blocks(pair):
    score = pair.score([CHAT])[0].tuco
    guard = Guard(threshold=score + 0.01, fpr=0.05, benign=10, measured_fpr=0.0)
    with serving(create_app(pair, guard=guard)) as base:
        client = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        flagged = client.chat.completions.create(model="m", messages=CHAT, max_tokens=4, temperature=0)
        assert (
            flagged.model_extra["tuco"]["flagged"] is True
            and flagged.choices[0].finish_reason != "content_filter"
        )
        assert flagged.model_extra["tuco"]["threshold"] == pytest.approx(score + 0.01)
        counted = flagged.usage.completion_tokens
        assert f"tuco_generated_tokens_total {counted:.1f}" in httpx.get(f"{base}/metrics").text
    with serving(create_app(pair, guard=guard, guard_action="block")) as base:
        client = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        blocked = client.chat.completions.create(model="m", messages=CHAT, max_tokens=4, temperature=0)
        assert (
            blocked.choices[0].message.content == REFUSAL
            and blocked.choices[0].finish_reason == "content_filter"
        )
        assert blocked.usage.completion_tokens == 0 and blocked.model_extra["tuco"]["flagged"] is True
        chunks = list(client.chat.completions.create(model="m", messages=CHAT, max_tokens=4, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == REFUSAL
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        assert "tuco_flagged_total 2.0" in httpx.get(f"{base}/metrics").text
        other = [{"role": "user", "content": "A different question entirely, much longer than the first."}]
        if pair.score([other])[0].tuco >= guard.threshold:
            passed = client.chat.completions.create(model="m", messages=other, max_tokens=3, temperature=0)
            assert passed.choices[0].finish_reason != "content_filter"


def test_the_page_streams_tokens_coloured_by_tuco_in_chromium(url, pair, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium) so the page cannot be rendered")
    page = httpx.get(url + "/").text
    assert "tuco serve" in page and "/v1/chat/completions" in page
    from browser import Browser

    with Browser(chromium, tmp_path / "profile") as browser:
        browser.open(f"{url}/?q=Tell%20me%20something.")
        browser.wait_for("document.getElementById('finish')", timeout=90)
        spans = browser.evaluate(
            "[...document.querySelectorAll('#answer span.token')].map(s => [s.textContent, s.title, "
            "getComputedStyle(s).backgroundColor])"
        )
        status = browser.evaluate("document.getElementById('status').textContent")
    expected = pair.generate_with_tuco([CHAT], max_new_tokens=64)[0]
    assert len(spans) == len(expected.token_ids)
    assert [float(title.split()[1]) for _, title, _ in spans] == pytest.approx(expected.tokens_tuco, abs=1e-4)
    assert "".join(text for text, _, _ in spans) == expected.text
    assert all(colour.startswith("rgb(") for _, _, colour in spans) and len({c for *_, c in spans}) > 1
    assert f"prompt TuCo {expected.prompt_tuco:.4f}" in status and "guard: not flagged" in status
    assert status.endswith(expected.finish_reason)


def test_a_chat_the_template_refuses_is_a_400(pair):
    import copy

    from tuco import ModelPair

    tok = copy.deepcopy(pair.tokenizer)
    tok.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}" + pair.tokenizer.chat_template
    )
    strict = ModelPair(pair.pretrained, pair.finetuned, tok)
    with serving(create_app(strict)) as base:
        chat = [{"role": "system", "content": "Be brief."}, *CHAT]
        response = httpx.post(f"{base}/v1/chat/completions", json={"messages": chat, "max_tokens": 2})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "messages" and "System role not supported" in error["message"]
        ok = httpx.post(f"{base}/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2}, timeout=30)
        assert ok.status_code == 200


def test_a_request_past_the_kv_budget_is_a_400_and_the_budget_is_in_the_metrics(pair):
    with serving(create_app(pair, max_batch_tokens=120)) as base:
        for stream in (False, True):
            body = {"messages": CHAT, "max_tokens": 119, "temperature": 0, "stream": stream}
            response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert "--max-batch-tokens" in error["message"] and error["param"] == "max_tokens"
        body = {"messages": CHAT, "max_tokens": 3, "temperature": 0}
        assert httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60).status_code == 200
        metrics = httpx.get(f"{base}/metrics").text
    assert 'tuco_requests_total{route="/v1/chat/completions",status="400"} 2.0' in metrics
    assert "tuco_steps " in metrics and "tuco_running_rows 0.0" in metrics


def test_with_monitor_prompt_a_stream_gets_its_prompts_tuco_right_after_its_first_token(pair):
    with serving(create_app(pair, monitor="prompt", max_batch=4, window=0.05)) as base:
        client = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        whole = client.chat.completions.create(model="m", messages=CHAT, max_tokens=6, temperature=0)
        prompt = whole.model_extra["tuco"]["prompt"]
        assert prompt == pytest.approx(pair.score([CHAT])[0].tuco, abs=1e-5)
        for extra, first in (({}, False), ({"guard_threshold": -1.0}, True)):
            chunks = list(
                client.chat.completions.create(
                    model="m", messages=CHAT, max_tokens=6, temperature=0, stream=True, extra_body=extra
                )
            )
            parts = [c for c in chunks if c.choices and not c.choices[0].finish_reason]
            content = [c for c in parts if c.choices[0].delta.content]
            assert "".join(c.choices[0].delta.content for c in content) == whole.choices[0].message.content
            with_prompt = [c for c in parts if "prompt" in (c.model_extra.get("tuco") or {})]
            assert len(with_prompt) == 1
            assert with_prompt[0].model_extra["tuco"]["prompt"] == pytest.approx(prompt, abs=1e-6)
            if first:  # a guard judges the prompt: its TuCo comes with the first token, which waits for it
                assert with_prompt[0] is content[0]
            else:  # nothing waits for it: a chunk of its own, with no content, right after the first token
                assert parts.index(with_prompt[0]) == parts.index(content[0]) + 1
                assert with_prompt[0].choices[0].delta.content is None
            assert chunks[-1].model_extra["tuco"]["prompt"] == pytest.approx(prompt, abs=1e-6)


def test_first_token_reaches_the_batcher_from_the_command_line(pair, capsys):
    from tuco.batcher import FIRST_TOKEN
    from tuco.cli import build_parser

    args = build_parser().parse_args(["serve", "--pair", "demo", "--first-token", "alone"])
    assert args.first_token == "alone"
    assert build_parser().parse_args(["serve", "--pair", "demo"]).first_token == "ride"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--pair", "demo", "--first-token", "soon"])
    assert "invalid choice: 'soon'" in capsys.readouterr().err
    actions = build_parser()._subparsers._group_actions[0].choices["serve"]._actions  # noqa: SLF001
    assert next(a for a in actions if a.dest == "first_token").choices == FIRST_TOKEN
    for choice in FIRST_TOKEN:
        app = create_app(pair, monitor="prompt", first_token=choice)
        assert app.state.engine.batcher.first_token == choice
        with serving(app) as base:
            got = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0).chat.completions.create(
                model="m", messages=CHAT, max_tokens=4, temperature=0
            )
            assert got.choices[0].message.content == pair.generate_with_tuco([CHAT], max_new_tokens=4)[0].text
