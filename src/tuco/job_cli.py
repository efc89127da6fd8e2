"""``tuco score | generate | sweep``: from the command line's options to a resumable job (``tuco.runs``).

Everything is checked before a model loads: the options, every prompt of a file, the output path
and, on ``--resume``, the settings the results were made with. Data-parallel launches (``torchrun``)
write one shard per rank, which rank 0 merges in input order.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .errors import UsageError

log = logging.getLogger("tuco")


def check_job_options(args) -> None:
    """What can be refused from the options alone, before anything is read or loaded."""
    suffix = os.path.splitext(args.out)[1].lower()
    if suffix in (".csv", ".parquet"):
        raise UsageError(
            f"--out {args.out}: results are written as JSONL as they arrive; give --out NAME.jsonl and "
            f"--format {suffix[1:]} (which writes NAME{suffix} beside it)"
        )
    if getattr(args, "chain", None) and (getattr(args, "components", False) or getattr(args, "heads", False)):
        raise UsageError(
            "--components/--heads split a pair's blocks, not a chain's stages: score two of its "
            "checkpoints as a pair (--pretrained/--finetuned) with --components"
        )
    if args.command in ("generate", "sweep") and not args.alpha:
        args.alpha = [1.0]
    if args.command in ("generate", "sweep") and len(set(args.alpha)) < len(args.alpha):
        raise UsageError(f"--alpha {' '.join(map(str, args.alpha))}: an alpha is repeated")
    if args.command == "generate" and not args.do_sample:
        given = [f"--{k.replace('_', '-')}" for k in ("temperature", "top_p", "top_k") if getattr(args, k)]
        if given:
            raise UsageError(f"{', '.join(given)} take effect only with --do-sample (greedy otherwise)")
    if args.command == "sweep" and args.choices is not None:
        if len(args.choices) < 2 or len(set(args.choices)) < len(args.choices):
            raise UsageError(f"--choices {' '.join(args.choices)}: give two or more different answers")


def job_settings(args, chosen) -> dict:
    """What the results of a run depend on: recorded beside them, compared on --resume."""
    settings = chosen.to_dict() | {
        "command": args.command,
        "prompts": os.path.abspath(args.prompts) if args.prompts not in (None, "-") else args.prompts,
        "dataset": args.dataset,
        "split": args.split if args.dataset else None,
        "field": args.field,
        "dtype": args.dtype,
        "chat_template": args.chat_template,
        "system_prompt": args.system_prompt,
        "max_length": args.max_length,
        "truncate": args.truncate,
    }
    if args.command == "score":
        settings |= {"per_token": args.per_token, "norm": args.norm, "baselines": args.output_baselines}
        split = {"components": args.components or args.heads, "heads": args.heads}
        return settings | {k: True for k, on in split.items() if on}  # absent when off: older runs resume
    settings["alphas"] = args.alpha
    if args.command == "sweep":
        return settings | {"choices": args.choices}
    sampling = {k: getattr(args, k) for k in ("do_sample", "temperature", "top_p", "top_k", "seed", "tuco")}
    return settings | {"max_new_tokens": args.max_new_tokens} | sampling


def run_job(args) -> int:
    from . import models, runs, store
    from .data import count_records, read_dataset, read_prompts
    from .sampling import Sampling

    check_job_options(args)
    chosen = models.resolve_options(args)
    models.placement(args.device, args.device_map)  # a device this machine lacks: refused now
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out_path = args.out if world == 1 else shard_path(args.out, rank, world)
    if world > 1 and os.path.exists(args.out) and not args.overwrite:
        raise UsageError(
            f"{args.out} already exists: pass --overwrite to replace it (--resume continues shards)"
        )

    def records(on_error=None):
        if args.prompts:
            return read_prompts(args.prompts, field=args.field, fmt=args.input_format, on_error=on_error)
        return read_dataset(args.dataset, args.split, args.field)

    # every prompt is read and checked before a model loads (stdin and datasets: as they stream)
    quiet_skip = (lambda e: None) if args.skip_invalid else None
    total = (
        count_records(args.prompts, field=args.field, fmt=args.input_format, on_error=quiet_skip)
        if (args.prompts)
        else None
    )
    settings = job_settings(args, chosen)
    with store.ResultsFile(
        out_path, resume=args.resume, overwrite=args.overwrite, key=("id", "alpha"), settings=settings
    ) as out:
        pair = models.load_options(chosen, args)
        dtype = pair.dtype_name
        if out.first is not None and "dtype" in out.first:  # "auto" may choose another dtype elsewhere
            out.check_same(out.first, {"dtype": dtype})
        job = runs.Job(
            pair=pair,
            out=out,
            batch_size=args.batch_size,
            chat_template=args.chat_template,
            system_prompt=args.system_prompt,
            max_length=args.max_length,
            truncate=args.truncate,
            reserve=args.max_new_tokens if args.command == "generate" else 0,
            skip_invalid=args.skip_invalid,
            quiet=args.quiet,
            meta=chosen.to_dict()
            | {"dtype": dtype, "dtype_reason": pair.dtype_reason, "tuco_version": __version__},
            total=total,
            rank=rank,
            world=world,
        )
        job.check_lengths()
        if args.command == "score":
            vectors = (
                _vector_writer(args, job, total, chosen.to_dict() | {"dtype": dtype})
                if args.save_vectors
                else None
            )
            runs.score(
                job,
                records(job.on_invalid),
                per_token=args.per_token,
                norm=args.norm,
                baselines=args.output_baselines,
                components=args.components or args.heads,
                heads=args.heads,
                vectors=vectors,
            )
        elif args.command == "generate":
            given = {k: getattr(args, k) for k in ("temperature", "top_p", "top_k")}
            seed = args.seed if args.tuco else None  # generate: torch's global generator, seeded at load
            sampling = Sampling.of_model(
                pair.finetuned.generation_config,
                args.do_sample,
                max_new_tokens=args.max_new_tokens,
                seed=seed,
                **given,
            )
            runs.generate(job, records(job.on_invalid), args.alpha, sampling, tuco=args.tuco)
        else:
            if args.choices:
                job.check_choices(args.choices)
            runs.sweep(job, records(job.on_invalid), args.alpha, args.choices)
    print(
        f"{job.written} new records -> {out_path}" + (f" ({job.skipped} skipped)" if job.skipped else ""),
        file=sys.stderr,
    )
    if world > 1:  # every rank has finished its shard: rank 0 merges them in input order
        open(out_path, "a").close()  # a rank that got no window still leaves its (empty) shard
        _barrier()
        if rank != 0:
            return 0
        shards = [shard_path(args.out, r, world) for r in range(world)]
        runs.merge_shards(args.out, shards, records(on_error=lambda e: None), args.batch_size)
        store.write_atomic(store.settings_path(Path(args.out)), json.dumps(settings, indent=1) + "\n")
        for shard in shards:
            os.remove(shard)
            store.settings_path(Path(shard)).unlink(missing_ok=True)
        print(f"merged {world} shards -> {args.out}", file=sys.stderr)
    if args.format != "jsonl":
        print(f"converted -> {store.convert(args.out, args.format)}", file=sys.stderr)
    if args.command == "sweep":
        print(accuracy_table(store.load_results([args.out])))
    return 0


def shard_path(out: str, rank: int, world: int) -> str:
    return f"{out}.shard-{rank}-of-{world}"


def _barrier() -> None:
    """Wait for every rank of a torchrun / accelerate launch run (gloo: CPU-only is enough)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()
    dist.destroy_process_group()


def accuracy_table(frame) -> str:
    if "correct" not in frame:
        return "no answers given: no accuracy"
    table = frame.dropna(subset=["correct"]).groupby("alpha")["correct"].agg(["mean", "count"])
    lines = ["alpha   accuracy   n"] + [
        f"{a:<7g} {row['mean']:8.4f}   {int(row['count'])}" for a, row in table.iterrows()
    ]
    return "\n".join(lines)


def _vector_writer(args, job, total: int | None, meta: dict):
    """``--save-vectors DIR``: the writer, after the size estimate is logged and the disk checked
    (rows: one per prompt, or with --per-token at most the longest prompt's tokens each)."""
    from .blocks import num_layers
    from .vectors import VectorWriter, check_room, estimate_bytes

    config = job.pair.finetuned.config.get_text_config()
    layers, width = num_layers(job.pair.finetuned) or 0, config.hidden_size
    writer = VectorWriter(
        args.save_vectors, meta, layers, width, args.per_token, resume=args.resume, overwrite=args.overwrite
    )
    if total is not None:
        left = total - len(writer.done)
        rows = left * (job.limit() or 2048) if args.per_token else left
        needed = estimate_bytes(rows, layers, width)
        bound = "at most " if args.per_token else ""
        log.info(
            "vectors: %s%.3f GB for %d prompts x %d layers x %d (float32, PTC and FTC)",
            bound,
            needed / 1e9,
            left,
            layers,
            width,
        )
        check_room(args.save_vectors, needed)
    return writer
