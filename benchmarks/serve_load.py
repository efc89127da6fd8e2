"""Load test of ``tuco serve`` on loopback, and the cost of monitoring TuCo while generating.

    python benchmarks/serve_load.py --pair demo --clients 32 --max-tokens 32 --max-batch 16

1. Monitoring cost: the same prompts, greedy, ``--max-tokens`` new tokens each (end of sequence
   off), generated in batches of ``--max-batch`` by plain ``pair.generate`` (transformers' loop, no
   TuCo), by ``generate_with_tuco(monitor="prompt")`` and by ``monitor="tokens"``; tokens/s and the
   ratio to plain generation, median of ``--runs`` interleaved runs.
2. Load: a server on 127.0.0.1 (a free port, in this process) and ``--clients`` concurrent
   streaming chat clients, each with its own prompt, at temperature 0. Every stream must end with
   its final chunk, carry one TuCo per content chunk, and give exactly the text and token TuCos the
   prompt gets when generated alone (so no token was lost or crossed between streams). Prints
   requests/s, tokens/s, p50/p95 latency and time to first token. It stops by itself: the whole
   load phase is bounded by ``--deadline`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import threading
import time

import httpx
import uvicorn
from common import load_parser, machine

from tuco import models
from tuco.pair_base import PairBase
from tuco.server import create_app

TOPICS = ["the sea", "a cat", "bread", "trains", "winter", "music", "a garden", "the moon"]


def prompts_for(n: int) -> list[list[dict]]:
    asks = ["Write one sentence about", "Give me a fact about", "Describe", "Tell me a story about"]
    return [[{"role": "user", "content": f"{asks[i % 4]} {TOPICS[i % 8]} (#{i})."}] for i in range(n)]


def monitoring_cost(pair, chats, max_tokens: int, batch: int, runs: int) -> None:
    def plain():
        return pair.generate(
            chats, batch_size=batch, max_new_tokens=max_tokens, do_sample=False, eos_token_id=None
        )

    def watched(kind):
        return lambda: pair.generate_with_tuco(
            chats, batch_size=batch, max_new_tokens=max_tokens, monitor=kind
        )

    ways = {
        "plain generate (no TuCo)": plain,
        'monitor="prompt"': watched("prompt"),
        'monitor="tokens"': watched("tokens"),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(runs):
        for name, run in ways.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    tokens = len(chats) * max_tokens
    base = statistics.median(times["plain generate (no TuCo)"])
    print(f"\n## Monitoring cost ({len(chats)} prompts, batch {batch}, {max_tokens} new tokens, {runs} runs)")
    print("| generation | median time | tokens/s | time / plain |\n|---|---|---|---|")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"| {name} | {t:.2f} s | {tokens / t:.1f} | {t / base:.2f} |")


async def one_client(client: httpx.AsyncClient, url: str, chat, max_tokens: int) -> dict:
    body = {"model": "m", "messages": chat, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start, first, text, tucos, final = time.perf_counter(), None, "", [], None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choice = chunk["choices"][0]
            if "token" in chunk.get("tuco", {}):
                first = first or time.perf_counter()
                text += choice["delta"]["content"]
                tucos.append(chunk["tuco"]["token"])
            if choice["finish_reason"]:
                final = chunk["tuco"]
    return {
        "latency": time.perf_counter() - start,
        "ttft": (first or start) - start,
        "text": text,
        "tucos": tucos,
        "final": final,
    }


def load_test(pair, chats, max_tokens: int, max_batch: int, window: float, deadline: float) -> int:
    expected = pair.generate_with_tuco(chats, batch_size=max_batch, max_new_tokens=max_tokens)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(
        pair, name="demo", max_batch=max_batch, max_queue=max(len(chats), max_batch), window=window
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"

    async def everyone():
        async with httpx.AsyncClient(timeout=deadline) as client:
            return await asyncio.wait_for(
                asyncio.gather(*(one_client(client, url, c, max_tokens) for c in chats)), deadline
            )

    start = time.perf_counter()
    try:
        results = asyncio.run(everyone())
    finally:
        server.should_exit = True
        thread.join(30)
    wall = time.perf_counter() - start
    bad = 0
    for i, (r, e) in enumerate(zip(results, expected, strict=True)):
        same = r["text"] == e.text and len(r["tucos"]) == len(e.token_ids)
        close = same and all(abs(a - b) <= 1e-5 for a, b in zip(r["tucos"], e.tokens_tuco, strict=True))
        if not (close and r["final"] is not None and r["final"]["tokens"] == r["tucos"]):
            bad += 1
            print(f"client {i}: differs from its prompt generated alone", file=sys.stderr)
    tokens = sum(len(r["tucos"]) for r in results)
    latencies = sorted(r["latency"] for r in results)
    ttft = sorted(r["ttft"] for r in results)

    def pct(values, q):
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    print(
        f"\n## Load: {len(chats)} concurrent streaming clients, {max_tokens} tokens each, "
        f"--max-batch {max_batch}, --batch-window {window:g} s"
    )
    print(
        "| clients complete | lost or crossed | requests/s | tokens/s | latency p50 | p95 "
        "| first token p50 | p95 | steps |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {len(results) - bad}/{len(chats)} | {bad} | {len(results) / wall:.2f} | {tokens / wall:.1f} | "
        f"{pct(latencies, 0.5):.2f} s | {pct(latencies, 0.95):.2f} s | {pct(ttft, 0.5):.2f} s | "
        f"{pct(ttft, 0.95):.2f} s | {app.state.engine.stats.steps} |"
    )
    return bad


def main() -> int:
    parser = load_parser(__doc__, dtype="auto")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--cost-prompts", type=int, default=16, help="prompts of the monitoring-cost part")
    parser.add_argument("--runs", type=int, default=3, help="runs of the monitoring-cost part (0: skip it)")
    parser.add_argument("--batch-window", type=float, default=0.02, help="the server's --batch-window")
    parser.add_argument("--deadline", type=float, default=900, help="seconds the load phase may take")
    args = parser.parse_args()
    pair = models.load(models.resolve(pair=args.pair), args.dtype)
    dtype = next(pair.finetuned.parameters()).dtype
    print(
        f"# tuco serve on {args.pair}: {machine(str(pair.device))} dtype={str(dtype).removeprefix('torch.')}"
    )
    eos = PairBase.eos_ids
    PairBase.eos_ids = lambda pair: set()  # every answer runs to --max-tokens: equal work for each way
    try:
        if args.runs:
            monitoring_cost(pair, prompts_for(args.cost_prompts), args.max_tokens, args.max_batch, args.runs)
        chats = prompts_for(args.clients)
        bad = load_test(pair, chats, args.max_tokens, args.max_batch, args.batch_window, args.deadline)
        return 1 if bad else 0
    finally:
        PairBase.eos_ids = eos


if __name__ == "__main__":
    sys.exit(main())
