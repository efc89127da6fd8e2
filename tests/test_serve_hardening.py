"""``tuco serve`` under hostile clients and the web: isolation, limits, keys, one error contract, the
OpenAI fields clients send (echo, logprobs, prompt lists, token ids), real clients and a fuzzer."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from conftest import make_pair
from test_server import CHAT, serving

from tuco.completions import Completions
from tuco.pair_base import PairBase
from tuco.sampling import Sampling
from tuco.server import create_app

KEYS = ["key-one", "key-two"]


@pytest.fixture(scope="module")
def pair():
    from tuco.testing import byte_tokenizer

    return make_pair("llama", byte_tokenizer())


@pytest.fixture(scope="module")
def url(pair):
    with serving(
        create_app(pair, name="tiny", max_batch=8, window=0.1, api_keys=KEYS, max_body_bytes=20_000)
    ) as base:
        yield base


def post(url, path, body, key=KEYS[0], **options):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=60, **options)


def counted(url, route, status) -> float:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"}).text
    line = f'tuco_requests_total{{route="{route}",status="{status}"}}'
    return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)), 0.0)


# ---------------------------------------------------------------------- isolation
def test_a_row_that_fails_at_run_time_fails_alone(url, pair, monkeypatch):
    real = Sampling.next_token

    def broken(self, logits, greedy, generator):
        if self.seed == 13:
            raise RuntimeError("this row's sampler broke")
        return real(self, logits, greedy, generator)

    monkeypatch.setattr(Sampling, "next_token", broken)
    bodies = [{"messages": CHAT, "max_tokens": 6, "temperature": 0.5, "seed": s} for s in (1, 2, 13, 4, 5, 6)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda b: post(url, "/v1/chat/completions", b), bodies))
    assert [a.status_code for a in answers] == [200, 200, 500, 200, 200, 200]
    assert "broke" not in answers[2].text and answers[2].json()["error"]["type"] == "server_error"
    alone = post(url, "/v1/chat/completions", bodies[0]).json()
    assert answers[0].json()["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]


def test_prompts_are_tokenised_off_the_event_loop(url, monkeypatch):
    threads = []
    real = Completions.validate

    def spy(self, body, kind):
        threads.append(threading.current_thread().name)
        return real(self, body, kind)

    monkeypatch.setattr(Completions, "validate", spy)
    assert post(url, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 2}).status_code == 200
    assert threads and threads[0] != "MainThread" and not threads[0].startswith("Thread-1 ")


# ---------------------------------------------------------------------- limits
def test_bodies_over_the_limit_get_413_before_they_are_read(url):
    big = {"messages": [{"role": "user", "content": "x" * 30_000}]}
    answer = post(url, "/v1/chat/completions", big)
    assert answer.status_code == 413 and answer.json()["error"]["message"].startswith("the body is")

    def chunks():  # no Content-Length: counted as it is read
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 1000
        yield b'"}]}'

    headers = {"Authorization": f"Bearer {KEYS[0]}", "Content-Type": "application/json"}
    chunked = httpx.post(f"{url}/v1/chat/completions", content=chunks(), headers=headers, timeout=30)
    assert chunked.status_code == 413 and "error" in chunked.json()
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_a_prompt_over_the_context_is_a_400_before_any_work(url):
    answer = post(url, "/v1/completions", {"prompt": "y" * 15_000, "max_tokens": 2})
    assert answer.status_code == 400 and "context" in answer.json()["error"]["message"]


def test_a_collected_request_whose_client_leaves_stops_decoding(pair, monkeypatch):
    monkeypatch.setattr(PairBase, "eos_ids", lambda self: set())
    app = create_app(pair, name="t", max_batch=1)
    with serving(app) as base:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/completions", json={"prompt": "Go", "max_tokens": 1800}, timeout=0.5)
        deadline = time.monotonic() + 20
        while httpx.get(f"{base}/health").json()["load"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{base}/health").json()["load"] == 0
        assert app.state.engine.stats.tokens < 1800
        metrics = httpx.get(f"{base}/metrics").text
        assert 'tuco_requests_total{route="/v1/completions",status="499"} 1.0' in metrics


# ---------------------------------------------------------------------- the key and the browser
def test_the_key_guards_v1_and_metrics_and_leaves_the_rest_open(url):
    for key in (None, "wrong"):
        answer = post(url, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 1}, key=key)
        assert answer.status_code == 401 and answer.json()["error"]["type"] == "authentication_error"
        assert answer.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/metrics").status_code == 401
    for key in KEYS:
        assert (
            post(url, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 1}, key=key).status_code == 200
        )
    for path in ("/health", "/openapi.json", "/"):
        assert httpx.get(f"{url}{path}").status_code == 200
    assert counted(url, "/v1/chat/completions", "401") >= 2


def test_only_json_bodies_and_only_local_host_names(url):
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    body = json.dumps({"messages": CHAT, "max_tokens": 1})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        h = headers | ({"Content-Type": content_type} if content_type else {})
        answer = httpx.post(f"{url}/v1/chat/completions", content=body, headers=h)
        assert answer.status_code == 415 and "application/json" in answer.json()["error"]["message"]
    json_headers = headers | {"Content-Type": "application/json; charset=utf-8"}
    for host, status in (
        ("evil.example:8000", 400),
        ("localhost:1", 200),
        ("[::1]:9", 200),
        ("127.0.0.1", 200),
    ):
        answer = httpx.post(f"{url}/v1/chat/completions", content=body, headers=json_headers | {"Host": host})
        assert answer.status_code == status, (host, answer.text)


def test_binding_beyond_loopback_without_a_key_warns():
    from tuco.serve_cli import bind_warning

    assert "no API key" in bind_warning("0.0.0.0", [])
    assert bind_warning("0.0.0.0", ["k"]) is None and bind_warning("127.0.0.1", []) is None
    assert bind_warning("localhost", []) is None and bind_warning("::1", []) is None


# ---------------------------------------------------------------------- one error contract
@pytest.mark.parametrize(
    "content",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"messages": "\xff\xfe"}',
        b'{"messages": [], "max_tokens": Infinity}',
        b"{",
    ],
)
def test_malformed_json_is_a_400_and_counted(url, content):
    before = counted(url, "/v1/chat/completions", "400")
    headers = {"Authorization": f"Bearer {KEYS[0]}", "Content-Type": "application/json"}
    answer = httpx.post(f"{url}/v1/chat/completions", content=content, headers=headers)
    assert answer.status_code in (400, 413) and set(answer.json()["error"]) >= {"message", "type", "param"}
    assert "Traceback" not in answer.text
    if answer.status_code == 400:
        assert counted(url, "/v1/chat/completions", "400") == before + 1


def test_404_405_and_models_by_id_are_openai_errors(url):
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    missing = httpx.get(f"{url}/v1/nothing", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = httpx.get(f"{url}/v1/chat/completions", headers=headers)
    assert wrong.status_code == 405 and "GET is not allowed" in wrong.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/models/tiny", headers=headers).json()["id"] == "tiny"
    other = httpx.get(f"{url}/v1/models/gpt-4", headers=headers)
    assert other.status_code == 404 and other.json()["error"]["param"] == "model"
    assert counted(url, "unmatched", "404") >= 1


# ---------------------------------------------------------------------- the OpenAI fields
def test_echo_logprobs_are_the_pair_s_own(url, pair):
    answer = post(
        url, "/v1/completions", {"prompt": "Once upon", "max_tokens": 0, "echo": True, "logprobs": 2}
    )
    choice = answer.json()["choices"][0]
    ids = pair.encode(["Once upon"])[0]
    logp = torch.log_softmax(pair.logits(["Once upon"])[0], -1)
    expected = [None] + [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]
    got = choice["logprobs"]["token_logprobs"]
    assert got[0] is None and got[1:] == pytest.approx(expected[1:], abs=1e-5)
    assert choice["text"] == "Once upon" and len(choice["logprobs"]["tokens"]) == len(ids)
    assert all(len(top) <= 2 for top in choice["logprobs"]["top_logprobs"][1:])
    offsets = choice["logprobs"]["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)


def test_generated_logprobs_lists_of_prompts_and_token_ids(url, pair):
    one = post(
        url, "/v1/completions", {"prompt": "Hi", "max_tokens": 3, "temperature": 0, "logprobs": 1}
    ).json()
    lp = one["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(lp["tokens"]) == one["usage"]["completion_tokens"]
    assert all(
        max(top.values()) == pytest.approx(t)
        for t, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True)
    )
    ids = pair.encode(["Hi"])[0]
    body = {"prompt": ["Hi", ids], "max_tokens": 3, "temperature": 0}
    both = post(url, "/v1/completions", body).json()["choices"]
    assert [c["index"] for c in both] == [0, 1] and both[0]["text"] == both[1]["text"] == one["choices"][0][
        "text"
    ]
    assert both[0]["tuco"]["prompt"] == pytest.approx(both[1]["tuco"]["prompt"])
    chat = post(
        url, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 2, "logprobs": True, "top_logprobs": 2}
    )
    content = chat.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 2 and all(len(c["top_logprobs"]) == 2 and "bytes" in c for c in content)


def test_no_op_fields_are_accepted_and_streams_are_not_cached(url):
    body = {"messages": CHAT, "max_tokens": 2, "response_format": {"type": "text"}, "tool_choice": "none"}
    assert post(url, "/v1/chat/completions", body | {"tools": [], "logit_bias": {}}).status_code == 200
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body | {"stream": True}, headers=headers
    ) as r:
        assert r.headers["cache-control"] == "no-cache"
        assert list(r.iter_lines())[-2] == "data: [DONE]"


def test_openapi_describes_the_bodies(url):
    spec = httpx.get(f"{url}/openapi.json").json()
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["required"] == ["messages"]
    assert "tuco" in chat["responses"]["200"]["content"]["application/json"]["schema"]["properties"]


# ---------------------------------------------------------------------- real clients
def test_lm_eval_local_completions_log_likelihoods_match_the_model(pair, tmp_path, monkeypatch):
    """The harness's main use (log-likelihood tasks) end to end: every log-likelihood it gets is a sum
    of the token logprobs the server sent, and those are the pair's own (``pair.logits``)."""
    lm_eval = pytest.importorskip("lm_eval")
    from test_harness import local_task, loglikelihoods

    sent = []  # (prompt ids, token_logprobs) of every choice the server answered
    real = Completions.choice_object

    def spy(self, shape, choice, answer, parsed, own_tuco):
        out = real(self, shape, choice, answer, parsed, own_tuco)
        sent.append((choice.ids, out["logprobs"]["token_logprobs"]))
        return out

    monkeypatch.setattr(Completions, "choice_object", spy)
    tokenizer_dir = tmp_path / "tokenizer"
    pair.tokenizer.save_pretrained(tokenizer_dir)
    root = tmp_path / "task"
    root.mkdir()
    tasks = local_task(root, items=4)
    with serving(create_app(pair, name="tiny", max_batch=4)) as base:
        api = lm_eval.api.registry.get_model("local-completions")(
            base_url=f"{base}/v1/completions",
            model="tiny",
            tokenizer=str(tokenizer_dir),
            tokenizer_backend="huggingface",
            tokenized_requests=True,
            num_concurrent=1,
            max_retries=1,
            batch_size=2,
        )
        served = loglikelihoods(api, tasks)
    assert len(served) == 8 and len(sent) == 8
    sums = []
    for ids, token_logprobs in sent:
        logp = torch.log_softmax(pair.logits([ids])[0], -1)
        own = [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]
        assert token_logprobs[0] is None and token_logprobs[1 : len(ids)] == pytest.approx(own, abs=1e-4)
        sums.append([sum(own[k - 1 :]) for k in range(1, len(ids))])  # every continuation's log-likelihood
    for ll in served:
        assert any(abs(ll - s) < 1e-4 for row in sums for s in row), ll


def test_a_schema_driven_fuzzer_finds_no_5xx(pair):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    app = create_app(pair, name="tiny", max_batch=4, window=0.0)
    failures, statuses = [], []
    with serving(app) as base:
        schema = schemathesis.openapi.from_dict(httpx.get(f"{base}/openapi.json").json())
        for operation in schema.get_all_operations():
            op = operation.ok()

            @settings(
                max_examples=15,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                derandomize=True,  # the same cases on every run: CI is repeatable
            )
            @given(case=op.as_strategy())
            def run(case):
                response = case.call(base_url=base, timeout=60)
                statuses.append(response.status_code)
                if response.status_code >= 500:
                    failures.append((case.method, case.path, case.body, response.text[:200]))

            run()
        assert httpx.get(f"{base}/health").json()["status"] == "ok"
    assert failures == [] and len(statuses) >= 40 and 200 in statuses


def test_the_page_works_with_a_key(url, pair, tmp_path):
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium) so the page cannot be rendered")
    from browser import Browser

    with Browser(chromium, tmp_path / "profile") as browser:
        browser.open(f"{url}/")
        browser.wait_for("typeof send === 'function'", timeout=30)  # the page's script has run
        browser.evaluate(f"sessionStorage.setItem('tuco-key', '{KEYS[1]}'); send('Tell me something.'); 1")
        browser.wait_for("document.getElementById('finish')", timeout=90)
        status = browser.evaluate("document.getElementById('status').textContent")
        spans = browser.evaluate("document.querySelectorAll('#answer span.token').length")
    assert "prompt TuCo" in status and spans > 0
