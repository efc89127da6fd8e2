"""The ``tuco`` command (also ``python -m tuco``).

    tuco score    --pretrained P --finetuned F --prompts prompts.jsonl --out results.jsonl
    tuco generate --pretrained P --adapter A --prompts - --alpha 0.8 1.2 --max-new-tokens 40 --out gen.jsonl
    tuco sweep    --pretrained P --finetuned F --prompts mc.jsonl --alpha 0.75 1 1.25 --choices Yes No \
                  --out sweep.jsonl
    tuco check    --pretrained P --finetuned F
    tuco report   results.jsonl --out report.html [--group-by group]
    tuco serve    --pair demo [--guard guard.json] [--port 8000]    (an OpenAI-compatible server)
    tuco calibrate --pair demo --benign benign.jsonl --fpr 0.05 --out guard.json

Exit codes: 0 ok, 1 model or runtime failure (loading, incompatible pair, disk full, overflow, out
of memory, failed check), 2 usage or data error (bad options, bad prompt data, existing results
without --resume, results made with other settings). Errors print one message naming the thing and
the fix; `tuco --debug ...` (or TUCO_DEBUG=1) shows the traceback too.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .errors import (
    TucoError,
    UsageError,
    finite_alpha,
    nonnegative_int,
    positive_float,
    positive_int,
    probability,
)

log = logging.getLogger("tuco")


def _model_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("models (none given: --pair demo)")
    g.add_argument(
        "--pair",
        help="a named pair: demo (Gemma-3-270m base -> its LoRA chat fine-tune, the default), demo-safety "
        "(SmolLM2-135M-Instruct -> its LoRA safety fine-tune), or a paper pair (llama2-7b, ...)",
    )
    g.add_argument("--pretrained", help="pre-trained model: hub id or local directory")
    g.add_argument("--finetuned", help="fine-tuned model: hub id or local directory")
    g.add_argument("--adapter", help="PEFT LoRA adapter on top of --pretrained (instead of --finetuned)")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="auto (default): the checkpoint's dtype on GPU; on CPU bf16 only where native, else float32",
    )
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    g.add_argument("--device-map", help='"auto" or a JSON module->device map (shards both models alike)')
    g.add_argument(
        "--trust-remote-code", action="store_true", help="run model code from the checkpoint (off)"
    )
    g.add_argument("--seed", type=nonnegative_int, default=0)


def _prompt_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("prompts")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="JSONL, CSV, Parquet or text file; - for stdin")
    src.add_argument("--dataset", help="Hugging Face dataset id or save_to_disk directory")
    g.add_argument("--split", default="train", help="dataset split (with --dataset)")
    g.add_argument("--field", help="field holding the prompt (default: prompt, messages or text)")
    g.add_argument(
        "--input-format", choices=["jsonl", "csv", "parquet", "text"], help="override the extension"
    )
    g.add_argument("--batch-size", type=positive_int, default=8)
    g.add_argument("--max-length", type=positive_int, help="longest prompt in tokens (default: the context)")
    g.add_argument(
        "--truncate",
        default="error",
        choices=["left", "right", "error"],
        help="a prompt beyond --max-length or the model's context: cut on the left or right, or refuse it",
    )
    g.add_argument(
        "--chat-template",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="format prompts with the tokenizer's chat template (default: when it has one)",
    )
    g.add_argument("--system-prompt", help="system message prepended to every chat")
    g.add_argument("--skip-invalid", action="store_true", help="skip bad records with a warning, not fail")
    o = parser.add_argument_group("results")
    o.add_argument("--out", required=True, help="results JSONL (written as results arrive)")
    o.add_argument(
        "--format", default="jsonl", choices=["jsonl", "parquet", "csv"], help="also convert at the end"
    )
    o.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    o.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    o.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuco", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"tuco {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (TUCO_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="TuCo of every prompt")
    _model_options(p)
    _prompt_options(p)
    p.add_argument("--per-token", action="store_true", help="also TuCo at every token")
    p.add_argument("--norm", default="l1", choices=["l1", "l2"])
    p.add_argument("--output-baselines", action="store_true", help="also OutputCo and KL(p_FT || p_PT)")
    p.add_argument(
        "--components",
        action="store_true",
        help="also attention vs MLP per block (tuco_attn, tuco_mlp, sum_check)",
    )
    p.add_argument("--heads", action="store_true", help="also per-head FTC/PTC norms (implies --components)")
    chain = p.add_argument_group("a chain of training stages (instead of a pair)")
    chain.add_argument(
        "--chain",
        nargs="+",
        metavar="CKPT",
        help="checkpoints M_0 (pre-trained) .. M_K: TuCo of the chain and each stage's share (stage_tuco); "
        "one base with --chain-adapters; or `--chain demo` (Gemma-3-270m base -> + chat -> + caution LoRA)",
    )
    chain.add_argument(
        "--chain-adapters",
        nargs="+",
        metavar="ADAPTER",
        help="PEFT adapters stacked in order on --chain BASE",
    )
    p.add_argument(
        "--save-vectors",
        metavar="DIR",
        help="also write every prompt's per-layer PTC and FTC vectors (last token, or every token with "
        "--per-token) to DIR as safetensors shards with an index (tuco.vectors.load_vectors)",
    )

    p = sub.add_parser("generate", help="generate with the FTC-alpha model")
    _model_options(p)
    _prompt_options(p)
    p.add_argument(
        "--alpha", type=finite_alpha, nargs="+", action="extend", default=None, help="one or more alphas"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=positive_float, help="with --do-sample")
    p.add_argument("--top-p", type=probability, help="with --do-sample")
    p.add_argument("--top-k", type=positive_int, help="with --do-sample")
    p.add_argument(
        "--tuco",
        action="store_true",
        help="also the prompt's TuCo and one TuCo per generated token (tokens, tokens_tuco), read off "
        "the same forward passes; sampling then seeds every prompt with --seed",
    )

    p = sub.add_parser("sweep", help="multiple-choice answers vs alpha")
    _model_options(p)
    _prompt_options(p)
    p.add_argument("--alpha", type=finite_alpha, nargs="+", action="extend", default=None)
    p.add_argument("--choices", nargs="+", help="candidate answers (or a 'choices' field per record)")

    p = sub.add_parser("check", help="compatibility and alpha=1 exactness of a pair")
    _model_options(p)

    p = sub.add_parser("demo", help="an embedded demo pair: build it, or run the demo on it")
    p.add_argument(
        "action", choices=["build", "run"], help="build the pair (cached), or build and run the demo"
    )
    p.add_argument(
        "--pair",
        default="demo",
        choices=["demo", "demo-safety", "demo-chain"],
        help="demo: Gemma-3-270m base -> its LoRA chat fine-tune (default); "
        "demo-safety: SmolLM2-135M-Instruct -> its LoRA safety fine-tune; demo-chain (build only): the "
        "caution LoRA stacked on the demo's chat LoRA, the third stage of `--chain demo`",
    )
    p.add_argument("--out", default="demo-output", help="output directory of `demo run`")
    p.add_argument(
        "--force",
        action="store_true",
        help="train the adapter again from the recipe (instead of the shipped one)",
    )
    p.add_argument("--ship", action="store_true", help="with build --force: replace the shipped adapter")
    p.add_argument("--tiny", action="store_true", help="a few steps and prompts: checks the pipeline, fast")
    p.add_argument("--home", help="cache directory (default: $TUCO_HOME or ~/.cache/tuco)")
    p.add_argument(
        "--dtype", default="auto", choices=["auto", "bfloat16", "float32"], help="auto: from the hardware"
    )
    p.add_argument("--device", default="cpu", help="build: where to train (cpu, cuda)")

    from .experiment_cli import add_parser as add_experiment_parser

    add_experiment_parser(sub, _model_options)

    from .serve_cli import add_parsers as add_serve_parsers

    add_serve_parsers(sub, _model_options)

    p = sub.add_parser("report", help="HTML or markdown report of results files")
    p.add_argument("results", nargs="+", help="results files (JSONL, Parquet or CSV)")
    p.add_argument("--out", required=True)
    p.add_argument("--group-by", help="field that splits prompts into groups (default: group, if present)")
    p.add_argument("--label", default="label", help="binary field for ROC-AUC of TuCo (default: label)")
    p.add_argument("--format", default="html", choices=["html", "md"])
    return parser


def run_job(args) -> int:
    from .job_cli import run_job

    return run_job(args)


def run_check(args) -> int:
    from . import models
    from .check import check_pair

    ok, lines = check_pair(models.load_options(models.resolve_options(args), args))
    print("\n".join(lines))
    return 0 if ok else 1


def run_report(args) -> int:
    from .report import write_report

    path = write_report(args.results, args.out, group_by=args.group_by, label=args.label, fmt=args.format)
    print(f"report -> {path}", file=sys.stderr)
    return 0


def run_demo(args) -> int:

    from .demo import run as demo_run
    from .demo.pairs import demo_pair

    config = demo_run.tiny(args.pair) if args.tiny else demo_run.DemoConfig(pair=args.pair)
    home = Path(args.home) if args.home else None
    if args.ship and not (args.action == "build" and args.force and not args.tiny):
        raise UsageError("--ship goes with `tuco demo build [--pair P] --force` (the default recipe)")
    if args.pair == "demo-chain":
        return _build_demo_chain(args, home)
    if args.action == "build":
        demo = demo_pair(args.pair, args.tiny, home, args.force, args.dtype, args.device, ship=args.ship)
        print(f"demo pair {demo.name!r}: {demo.title}; adapter in {demo.adapter}")
        for name, m in demo.metrics["held_out"].items():
            ends = f"FT ends its turn {m['ends_turn_ft']:.0%}  " if "ends_turn_ft" in m else ""
            ft, pt = m["refusal_ft"], m["refusal_pt"]
            print(f"  {name:<28} n={m['n']:<3} {ends}FT refuses {ft:.0%}  PT refuses {pt:.0%}")
        return 0
    demo_run.run(args.out, config, home, dtype=args.dtype, force=args.force)
    return 0


def _build_demo_chain(args, home) -> int:
    from .demo.stage import demo_chain

    if args.action != "build":
        raise UsageError("--pair demo-chain is built, not run: score it with `tuco score --chain demo`")
    chain = demo_chain(
        args.tiny, home=home, force=args.force, dtype=args.dtype, device=args.device, ship=args.ship
    )
    print(f"demo chain: {chain.title}; adapters {', '.join(map(str, chain.adapters))}")
    for name, m in chain.metrics["held_out"].items():
        print(
            f"  {name:<28} n={m['n']:<3} caution refuses {m['refusal_caution']:.0%}  chat refuses "
            f"{m['refusal_chat']:.0%}  caution defers {m['defers_caution']:.0%}"
        )
    return 0


def run_experiment(args) -> int:
    from .experiment_cli import run

    print(run(args))
    return 0


def run_serve(args) -> int:
    from .serve_cli import run_serve

    return run_serve(args)


def run_calibrate(args) -> int:
    from .serve_cli import run_calibrate

    return run_calibrate(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, format="tuco: %(message)s"
    )
    if getattr(args, "quiet", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    handlers = {
        "score": run_job,
        "generate": run_job,
        "sweep": run_job,
        "check": run_check,
        "report": run_report,
        "demo": run_demo,
        "experiment": run_experiment,
        "serve": run_serve,
        "calibrate": run_calibrate,
    }
    debug = args.debug or os.environ.get("TUCO_DEBUG", "") not in ("", "0")
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print(
            f"tuco {args.command}: interrupted; finished results are kept (rerun with --resume)",
            file=sys.stderr,
        )
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"tuco {args.command}: error: {describe(e)}", file=sys.stderr)
        return e.exit_code if isinstance(e, TucoError) else 2 if isinstance(e, UsageError) else 1


def describe(error: Exception) -> str:
    """One line (or a few) for an error: tuco's own say what to do; others get their type and a hint."""
    import errno

    if isinstance(error, TucoError):
        return str(error)
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        where = f" writing {error.filename}" if error.filename else ""
        return f"no space left on the device{where}: free space, then rerun (with --resume for results)."
    if isinstance(error, MemoryError):
        return "out of memory (CPU RAM): use a smaller --batch-size, --dtype bfloat16 or --device-map auto."
    if isinstance(error, OSError | ValueError | RuntimeError) and str(error):
        return f"{error} ({type(error).__name__}; --debug shows the traceback)"
    return (
        f"unexpected {type(error).__name__}: {error}. This is a bug in tuco or an input it does not "
        "expect: rerun with --debug for the traceback, and please report it."
    )


if __name__ == "__main__":
    sys.exit(main())
