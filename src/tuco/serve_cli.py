"""``tuco serve`` and ``tuco calibrate``: the live monitor and the guard it uses.

    tuco calibrate --pair demo --benign benign.jsonl --attacks attacks.jsonl --fpr 0.05 --out guard.json
    tuco serve     --pair demo --guard guard.json [--guard-action block] [--port 8000] [--max-batch 32]

``serve`` needs the ``serve`` extra (``pip install 'tuco[serve]'``: FastAPI, uvicorn, Prometheus
client). It listens on 127.0.0.1 unless ``--host`` says otherwise; one pair per process, so scale
out with replicas behind a load balancer (README).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .errors import DataError, UsageError, nonnegative_int, positive_float, positive_int, probability

log = logging.getLogger("tuco")


def add_parsers(sub, model_options) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible server reporting TuCo of every prompt and token")
    model_options(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    g.add_argument("--port", type=positive_int, default=8000)
    g.add_argument("--name", help="the model name /v1/models reports (default: the pair's name)")
    g.add_argument("--max-batch", type=positive_int, default=32, help="requests decoded together at most")
    g.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        default=65536,
        help="KV cache budget: running requests x the longest one's prompt + max_tokens (per cache); "
        "a request that does not fit waits, one that never could gets 400",
    )
    g.add_argument(
        "--prefill-tokens",
        type=positive_int,
        default=2048,
        help="prompt tokens prefilled per step between the others' decoding (longer prompts: in chunks)",
    )
    g.add_argument(
        "--first-token",
        choices=("ride", "alone"),  # tuco.batcher.FIRST_TOKEN (not imported: --help stays quick)
        default="ride",
        help="a newcomer's first token: unembedded with the others' next decoding pass (ride: one read of "
        "the unembedding per step), or by its own pass right after its prefill (alone: sooner, one more "
        "read of the unembedding per step with a newcomer)",
    )
    g.add_argument("--max-queue", type=positive_int, help="requests waiting or running before 503 (8x batch)")
    g.add_argument(
        "--batch-window", type=positive_float, default=0.02, help="seconds an idle server waits for a burst"
    )
    g.add_argument(
        "--monitor",
        default="tokens",
        choices=["tokens", "prompt"],
        help="tokens: TuCo of every generated token (default); prompt: of the prompt only (cheaper)",
    )
    g.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="require Authorization: Bearer KEY on /v1 and /metrics (repeat for several; or TUCO_API_KEY, "
        "comma-separated)",
    )
    g.add_argument("--metrics-open", action="store_true", help="serve /metrics without the API key")
    g.add_argument(
        "--max-body-bytes", type=positive_int, default=4 << 20, help="larger request bodies get 413 (4 MiB)"
    )
    g.add_argument("--shutdown-timeout", type=positive_float, default=30.0, help="seconds SIGTERM waits")
    g.add_argument("--debug", action="store_true", help="tracebacks of failed requests in the log")
    g.add_argument("--guard", help="guard.json from tuco calibrate: sets tuco.flagged")
    g.add_argument(
        "--guard-on-error",
        default="open",
        choices=["open", "closed"],
        help="a prompt whose TuCo cannot be computed: open (default) passes it, closed flags it",
    )
    g.add_argument(
        "--guard-action",
        default="flag",
        choices=["flag", "block"],
        help="flag (default): answer and report; block: refuse flagged prompts "
        "(finish_reason content_filter)",
    )

    p = sub.add_parser("calibrate", help="fit a TuCo guard's threshold on benign prompts")
    model_options(p)
    p.add_argument("--benign", required=True, help="benign prompts (JSONL, CSV, Parquet or text)")
    p.add_argument("--attacks", help="attack prompts: report the guard's true-positive rate on them")
    p.add_argument("--field", help="field holding the prompt (default: prompt, messages or text)")
    p.add_argument("--fpr", type=probability, default=0.05, help="target false-positive rate (default 0.05)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument(
        "--chat-template",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="format prompts as chats, as the server does for /v1/chat/completions (default: when it can)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write the guard even when the attacks' AUC interval includes 0.5 (it cannot tell them apart)",
    )
    p.add_argument(
        "--answer-tokens",
        type=nonnegative_int,
        default=0,
        help="also fit the answer rule on greedy benign answers of this many tokens (0: prompt only)",
    )
    p.add_argument("--window", type=positive_int, default=8, help="tokens the answer rule averages over")
    p.add_argument("--out", required=True, help="guard JSON file")


def bind_warning(host: str, keys: list[str]) -> str | None:
    """The loud warning for a server bound beyond loopback with no API key (None: nothing to say)."""
    from .gate import LOOPBACK_NAMES, host_name

    if keys or host_name(host) in LOOPBACK_NAMES:
        return None
    return (
        f"tuco serve: WARNING: listening on {host} with no API key: anyone who can reach this machine "
        "can generate with it. Give --api-key KEY (or TUCO_API_KEY), or bind 127.0.0.1."
    )


def _name(chosen) -> str:
    if chosen.pair:
        return chosen.pair
    return os.path.basename(os.path.normpath(chosen.finetuned or chosen.adapter))


def run_serve(args) -> int:
    from . import models

    try:
        import uvicorn

        from .server import create_app
    except ImportError as e:
        raise UsageError(
            f"tuco serve needs the serve extra ({e.name} is missing): pip install 'tuco[serve]'"
        ) from None
    from .gate import LOOPBACK_NAMES, host_name
    from .guard import Guard

    guard = Guard.load(args.guard) if args.guard else None
    if args.guard_action == "block" and guard is None:
        raise UsageError("--guard-action block needs --guard guard.json (make one with tuco calibrate)")
    if args.max_queue is not None and args.max_queue < args.max_batch:
        raise UsageError(f"--max-queue {args.max_queue} is less than --max-batch {args.max_batch}")
    keys = list(args.api_key) + [
        k.strip() for k in os.environ.get("TUCO_API_KEY", "").split(",") if k.strip()
    ]
    loopback = host_name(args.host) in LOOPBACK_NAMES
    if (warning := bind_warning(args.host, keys)) is not None:
        print(warning, file=sys.stderr)
    chosen = models.resolve_options(args)
    models.placement(args.device, args.device_map)
    pair = serving_pair(chosen, args)
    if not pair.formats_chats:
        print(
            "tuco serve: the tokenizer has no chat template: /v1/chat/completions will refuse chats",
            file=sys.stderr,
        )
    app = create_app(
        pair,
        name=args.name or _name(chosen),
        guard=guard,
        guard_action=args.guard_action,
        monitor=args.monitor,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        window=args.batch_window,
        max_batch_tokens=args.max_batch_tokens,
        prefill_tokens=args.prefill_tokens,
        first_token=args.first_token,
        api_keys=keys,
        loopback=loopback,
        max_body_bytes=args.max_body_bytes,
        metrics_open=args.metrics_open,
        debug=args.debug,
        guard_on_error=args.guard_on_error,
    )
    print(f"tuco serve: {args.name or _name(chosen)} on http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=int(args.shutdown_timeout),
    )
    return 0


def serving_pair(chosen, args):
    """The pair as ``tuco serve`` and ``tuco calibrate`` load it: "auto" is float32 (README, dtype),
    and a LoRA adapter is merged into its base weights there (``PairBase.merge_adapter``: the FT
    side as fast as a merged checkpoint, the same TuCo to 1e-6)."""
    from . import models

    pair = models.load_options(chosen, args, batch_invariant=True)
    if pair.adapter_mode and (why := pair.merge_adapter()) is not None:
        log.info("tuco: the adapter stays apart from its base weights: %s", why)
    return pair


def formatted_prompts(pair, path: str, field: str | None, chat_template: bool | None) -> list:
    """Every record of a prompts file, formatted as the server formats requests."""
    from .data import read_prompts
    from .inputs import as_chat

    use_chat = pair.formats_chats if chat_template is None else chat_template
    if use_chat and not pair.formats_chats:
        raise UsageError("--chat-template was given but the tokenizer has no chat template")
    prompts = [as_chat(r.prompt) if use_chat else r.prompt for r in read_prompts(path, field=field)]
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def prompt_tucos(pair, prompts: list, batch_size: int, alpha: float = 1.0) -> list[float]:
    """Prompt TuCo of every prompt (``formatted_prompts``), along the FTC-alpha stream."""
    return [r.tuco for r in pair.score(prompts, alpha=alpha, batch_size=batch_size)]


def run_calibrate(args) -> int:
    from . import models
    from .guard import calibrate
    from .store import write_atomic

    for path in (args.benign, args.attacks):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{path}: no such file")
    if not 0 < args.fpr < 1:
        raise UsageError(f"--fpr {args.fpr}: give a rate between 0 and 1 (exclusive)")
    chosen = models.resolve_options(args)
    models.placement(args.device, args.device_map)
    pair = serving_pair(chosen, args)  # as tuco serve loads it
    benign_prompts = formatted_prompts(pair, args.benign, args.field, args.chat_template)
    benign = prompt_tucos(pair, benign_prompts, args.batch_size)
    attack_prompts = (
        formatted_prompts(pair, args.attacks, args.field, args.chat_template) if args.attacks else []
    )
    attacks = prompt_tucos(pair, attack_prompts, args.batch_size) if args.attacks else None
    guard = calibrate(benign, args.fpr, attacks, force=args.force)
    if attacks is not None:  # the direction check on the attacks (at alpha = 1: the TuCos above)
        from .experiments.direction import ALPHAS
        from .experiments.estimates import direction

        by_alpha = {
            a: attacks if a == 1.0 else prompt_tucos(pair, attack_prompts, args.batch_size, alpha=a)
            for a in ALPHAS
        }
        guard.alpha_direction = direction(by_alpha)
    guard.models = chosen.to_dict() | {"benign": os.path.abspath(args.benign)}
    guard.dtype = pair.dtype_name
    if args.answer_tokens:
        from .guard import calibrate_answers

        answers = pair.generate_with_tuco(
            benign_prompts, max_new_tokens=args.answer_tokens, temperature=0, batch_size=args.batch_size
        )
        calibrate_answers(guard, [g.tokens_tuco or [] for g in answers], args.window)
    guard.batching = (
        f"batches of {args.batch_size}, length-sorted ({pair.dtype_name}: TuCo independent of the batch)"
    )
    import json
    from dataclasses import asdict
    from pathlib import Path

    write_atomic(Path(args.out), json.dumps(asdict(guard), indent=1) + "\n")
    lines = [
        f"guard -> {args.out}: flag prompts with {guard.describe()}",
        f"  benign: {guard.benign} prompts, {guard.measured_fpr:.1%} flagged (target {guard.fpr:.1%}); "
        f"{guard.dtype} ({pair.dtype_reason})",
    ]
    if guard.tpr is not None and guard.auc_interval is not None:
        side = "low" if guard.direction == "below" else "high"
        lo, hi = guard.auc_interval
        cv = "n/a" if guard.cv_tpr is None else f"{guard.cv_tpr:.1%}"
        lines.append(
            f"  attacks: {guard.attacks} prompts, {guard.tpr:.1%} flagged; ROC-AUC of {side} TuCo "
            f"{guard.auc:.3f} (95% interval {lo:.3f}-{hi:.3f}); cross-validated TPR {cv}"
            + ("; WRITTEN WITH --force: the interval includes 0.5" if guard.forced else "")
        )
    else:
        lines.append("  untested: no --attacks, so the side is the paper's (low TuCo) and the TPR unknown")
    if (check := guard.alpha_direction) is not None:
        lo, hi = check["interval"]
        lines.append(
            f"  direction check on the attacks: TuCo slope {check['slope']:+.4f} per unit alpha "
            f"(95% interval {lo:+.4f} .. {hi:+.4f}): "
            + (
                "TuCo rises with alpha, so attacks that act like alpha < 1 lower it here"
                if check["rises_with_alpha"]
                else "TuCo does not rise with alpha: the paper's reading (attacks lower TuCo) is "
                "untestable on this pair"
            )
        )
    if guard.token_threshold is not None:
        sign = "<" if guard.direction == "below" else ">"
        lines.append(
            f"  answers: flag when the mean TuCo of {guard.token_window} tokens {sign} "
            f"{guard.token_threshold:.4f} (fitted on {guard.answers} benign answers)"
        )
    print("\n".join(lines))
    return 0
