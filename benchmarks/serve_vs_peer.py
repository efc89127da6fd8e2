"""``tuco serve`` against transformers' own continuous-batching server, side by side on this machine.

    python benchmarks/serve_vs_peer.py            # demo pair, float32, 32 clients x 32 tokens, 3 repeats

1. The peer's model: the demo pair's fine-tuned model (base + chat LoRA) merged into one plain
   checkpoint (safetensors, with its tokenizer and chat template) in a temporary folder.
2. Three servers, one at a time, each on 127.0.0.1 at a free port, the same dtype:
   ``transformers serve --continuous-batching`` on that checkpoint (the peer), then
   ``tuco serve --pair demo --max-batch 32 --monitor prompt`` and ``tuco serve --pair demo
   --max-batch 32`` (TuCo on every token), every other option at its default (``--servers`` adds
   ``prompt-alone``: ``--monitor prompt --first-token alone``).
3. For each: the same warm-up (8 streaming clients x 8 tokens, twice), then ``--repeats`` times each
   load: a burst (``--clients`` streaming chat clients at once) and arrivals over time (one every
   ``--every`` seconds); ``--max-tokens`` new tokens each, temperature 0, each its own prompt.
   Tokens are streamed content chunks (one token each); time to first token is to the first content
   chunk. Prints tokens/s, p50/p95 latency and p50 time to first token for each server and load
   (medians over the repeats), the ratios to the peer, and how many answers equal the peer's.

It stops by itself: every request has a timeout, every server is stopped at the end (and the whole
run is bounded by ``--deadline`` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import load_parser, machine

TOPICS = ["the sea", "a cat", "bread", "trains", "winter", "music", "a garden", "the moon"]
ASKS = ["Write one sentence about", "Give me a fact about", "Describe", "Tell me a story about"]


def chats(n: int, tag: str = "") -> list[list[dict]]:
    return [[{"role": "user", "content": f"{ASKS[i % 4]} {TOPICS[i % 8]} (#{i}{tag})."}] for i in range(n)]


def merged_checkpoint(pair_name: str, dtype: str, folder: Path) -> None:
    """The pair's fine-tuned model as one plain checkpoint (a PEFT adapter merged into its base)."""
    from tuco import models

    pair = models.load(models.resolve(pair=pair_name), dtype)
    model = pair.finetuned
    if pair.adapter_mode:
        model = model.merge_and_unload()
    model.save_pretrained(folder, safe_serialization=True)
    pair.tokenizer.save_pretrained(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(command: list[str], port: int, log: Path, wait: float, src: str | None = None):
    """A server process on ``port``, ready (its /health answers), stopped at the end (``src``: the
    tuco source tree it imports, first on its path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env if src else None
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait
        while True:
            if process.poll() is not None:
                tail = log.read_text()[-3000:]
                raise RuntimeError(f"{command[0]} exited ({process.returncode}):\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not answer /health in {wait:.0f} s; see {log}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def one_client(client: httpx.AsyncClient, url: str, model: str, chat, max_tokens: int, delay: float):
    await asyncio.sleep(delay)
    body = {"model": model, "messages": chat, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start, first, chunks, text = time.perf_counter(), None, 0, ""
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            content = (choices[0].get("delta") or {}).get("content")
            if content:
                first = first or time.perf_counter()
                chunks += 1
                text += content
    end = time.perf_counter()
    return {"start": start, "end": end, "ttft": (first or end) - start, "chunks": chunks, "text": text}


def run_load(url: str, model: str, prompts, max_tokens: int, every: float, timeout: float) -> dict:
    async def everyone():
        limits = httpx.Limits(max_connections=len(prompts) + 4)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            jobs = [one_client(client, url, model, c, max_tokens, i * every) for i, c in enumerate(prompts)]
            return await asyncio.wait_for(asyncio.gather(*jobs), timeout + every * len(prompts))

    results = asyncio.run(everyone())
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    latencies = sorted(r["end"] - r["start"] for r in results)
    return {
        "tokens/s": sum(r["chunks"] for r in results) / wall,
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "ttft": statistics.median(r["ttft"] for r in results),
        "texts": [r["text"] for r in results],
    }


def measure(url: str, model: str, args) -> dict[str, dict]:
    for round_ in range(2):  # the same warm-up for every server
        run_load(url, model, chats(8, f"w{round_}"), 8, 0.0, args.timeout)
    loads = {"burst": 0.0, f"one every {args.every:g} s": args.every}
    out: dict[str, dict] = {}
    for name, every in loads.items():
        runs = [
            run_load(url, model, chats(args.clients), args.max_tokens, every, args.timeout)
            for _ in range(args.repeats)
        ]
        out[name] = {k: statistics.median(r[k] for r in runs) for k in ("tokens/s", "p50", "p95", "ttft")}
        out[name]["texts"] = runs[-1]["texts"]
        print(
            f"  {name}: " + ", ".join(f"{k} {out[name][k]:.2f}" for k in ("tokens/s", "p50", "p95", "ttft")),
            flush=True,
        )
    return out


def main() -> int:
    parser = load_parser(__doc__, dtype="float32")
    parser.add_argument("--every", type=float, default=0.25, help="seconds between arrivals over time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=300, help="seconds one request may take")
    parser.add_argument(
        "--tuco-src", help="run the tuco servers from this source tree (an earlier checkout's src/)"
    )
    parser.add_argument(
        "--servers",
        default="peer,prompt,tokens",
        help="which to run: peer, prompt, prompt-alone (--first-token alone), tokens (the peer is the base)",
    )
    parser.add_argument("--deadline", type=float, default=3000, help="seconds the whole run may take")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: sys.exit("serve_vs_peer: past --deadline, stopped"))
    signal.alarm(int(args.deadline))
    print(f"# tuco serve vs transformers serve --continuous-batching: {machine('cpu')} dtype={args.dtype}")
    print(f"# {args.clients} streaming clients x {args.max_tokens} tokens, {args.repeats} repeats, medians")
    if args.tuco_src:
        print(f"# tuco from {args.tuco_src}")
    with tempfile.TemporaryDirectory(prefix="tuco-peer-") as tmp:
        folder = Path(tmp) / "merged"
        merged_checkpoint(args.pair, args.dtype, folder)
        peer = [
            str(Path(sys.executable).with_name("transformers")), "serve", "--continuous-batching",
            "--dtype", args.dtype, "--device", "cpu",
            "--host", "127.0.0.1", "--log-level", "warning", str(folder),
        ]  # fmt: skip
        tuco = [
            sys.executable, "-m", "tuco", "serve", "--pair", args.pair, "--dtype", args.dtype,
            "--max-batch", str(args.max_batch),
        ]  # fmt: skip
        servers = {
            "transformers serve --continuous-batching": (peer, str(folder), "peer"),
            "tuco serve --monitor prompt": ([*tuco, "--monitor", "prompt"], "demo", "prompt"),
            "tuco serve --monitor prompt --first-token alone": (
                [*tuco, "--monitor", "prompt", "--first-token", "alone"],
                "demo",
                "prompt-alone",
            ),
            "tuco serve (TuCo on every token)": (tuco, "demo", "tokens"),
        }
        servers = {k: v[:2] for k, v in servers.items() if v[2] in args.servers.split(",")}
        results: dict[str, dict] = {}
        for name, (command, model) in servers.items():
            port = free_port()
            print(f"\n{name}", flush=True)
            src = args.tuco_src if model == "demo" else None
            log = Path(tmp) / f"{len(results)}.log"
            with server([*command, "--port", str(port)], port, log, 600, src) as url:
                results[name] = measure(url, model, args)
    base = results.get("transformers serve --continuous-batching") or next(iter(results.values()))
    for load in base:
        print(f"\n## {load}: {args.clients} clients x {args.max_tokens} tokens")
        print("| server | tokens/s | x peer | TTFT p50 | x peer | latency p50 | p95 | x peer | = peer's |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, by_load in results.items():
            r, b = by_load[load], base[load]
            same = sum(x == y for x, y in zip(r["texts"], b["texts"], strict=True))
            print(
                f"| {name} | {r['tokens/s']:.1f} | {r['tokens/s'] / b['tokens/s']:.2f} "
                f"| {r['ttft']:.2f} s | {r['ttft'] / b['ttft']:.2f} | {r['p50']:.2f} s | {r['p95']:.2f} s "
                f"| {r['p95'] / b['p95']:.2f} | {same}/{len(b['texts'])} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
