"""``tuco experiment NAME``: the paper's experiments (and steering) as one command each.

    tuco experiment alpha-sweep       --pair llama2-7b --mmlu all --persona narcissism --out runs/e1
    tuco experiment web-vs-chat       --pair llama2-7b --online --out runs/e2
    tuco experiment jailbreaks        --pair llama2-7b --requests harmful_behaviors.csv --out runs/e3
    tuco experiment jailbreak-success --pair llama2-7b --requests harmful_behaviors.csv --out runs/e4
    tuco experiment tuco-vs-outputco  --pair llama2-7b --out runs/e5
    tuco experiment steering          --pair demo --out runs/steering
    tuco experiment components        --pair demo --out runs/components   (attention vs MLP, heads)
    tuco experiment direction         --pair demo-safety --out runs/direction  (does TuCo rise with alpha?)
    tuco experiment attack-set        --pair demo-safety --attacks msj gcg --out runs/guard  (calibrate files)

Without data options each runs offline on stand-ins (named as such in its table); without models, on
``--pair demo``. ``settings.json`` names the models; ``metrics.json`` holds the headline numbers.
Rerunning the same command resumes; ``--overwrite`` starts again.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from .errors import UsageError, finite_alpha, nonnegative_int, positive_float, positive_int
from .experiments import request_sets, sources

NAMES = (
    "alpha-sweep",
    "web-vs-chat",
    "jailbreaks",
    "jailbreak-success",
    "tuco-vs-outputco",
    "steering",
    "components",
    "direction",
    "attack-set",
)
NOT_SETTINGS = ("out", "overwrite", "batch_size", "device", "device_map", "quiet", "command")


def add_parser(sub, model_options) -> None:
    p = sub.add_parser(
        "experiment",
        help="one of the paper's experiments, end to end (see docs/RESULTS.md)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=NAMES)
    model_options(p)
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output directory (rerun to resume)")
    g.add_argument(
        "--overwrite", action="store_true", help="discard the finished steps in --out and start again"
    )
    g.add_argument(
        "--limit", type=positive_int, help="at most N items per task / group / language (quick runs)"
    )
    g.add_argument("--batch-size", type=positive_int, default=8)
    g.add_argument("--system-prompt", help="system message (default: the registered pair's)")
    g.add_argument("--online", action="store_true", help="the paper's datasets from the Hugging Face hub")
    g.add_argument(
        "--alpha",
        type=finite_alpha,
        nargs="+",
        help="alpha grid (alpha-sweep: the paper's; steering: 0..1.5)",
    )
    g = p.add_argument_group("alpha-sweep (E1)")
    g.add_argument("--mmlu", nargs="+", metavar="SUBJECT", help="MMLU subjects, or 'all' (5-shot)")
    g.add_argument("--mmlu-dir", help="local MMLU copy (the original data/ layout) instead of the hub")
    g.add_argument(
        "--persona",
        nargs="+",
        metavar="BEHAVIOUR",
        help="Anthropic persona evals: names (e.g. narcissism), 'paper' (the paper's 23) or 'all'",
    )
    g.add_argument("--persona-dir", help="local directory of <behaviour>.jsonl persona files")
    g.add_argument(
        "--mc-file", nargs="+", default=[], help="local multiple-choice files (prompt, choices, answer)"
    )
    g.add_argument("--folds", type=positive_int, default=5)
    g = p.add_argument_group("jailbreaks (E3) and jailbreak-success (E4)")
    g.add_argument("--requests", help="harmful requests: AdvBench harmful_behaviors.csv or a prompt file")
    g.add_argument(
        "--attacks",
        nargs="+",
        choices=["msj", "msj-persona", "gcg", "conjugate"],
        default=["msj", "msj-persona", "gcg", "conjugate"],
        help="msj-persona: many-shot with a persona question as the target, judged by its answer (the "
        "paper's figure; --persona-dir, else a project-written stand-in)",
    )
    g.add_argument(
        "--max-shots", type=positive_int, help="many-shot: up to N shots (default 128; tuco-vs-outputco: 32)"
    )
    g.add_argument(
        "--shots-file", help="many-shot dialogues: a prompt file with 'prompt' and 'answer' fields"
    )
    g.add_argument(
        "--msj-format",
        choices=["turns", "one-turn", "raw"],
        default="turns",
        help="many-shot layout: real chat turns (default), the dialogues written out in one user turn, "
        "or that text with no chat template",
    )
    g.add_argument("--translations", help="conjugate prompting: translated requests with a 'language' field")
    g.add_argument("--gcg-cache", help="GCG strings cache (default: OUT/gcg_strings.jsonl)")
    g.add_argument(
        "--gcg-from",
        metavar="MODEL",
        help="E4: reuse the strings optimised on MODEL (in --gcg-cache), as the paper reused Llama-2-7B's",
    )
    g.add_argument("--gcg-steps", type=positive_int, default=250)
    g.add_argument("--gcg-width", type=positive_int, default=512, help="GCG candidates per step")
    g.add_argument("--gcg-topk", type=positive_int, default=256)
    g.add_argument("--gcg-tokens", type=positive_int, default=20, help="length of the adversarial string")
    g.add_argument(
        "--gcg-limit",
        type=positive_int,
        metavar="N",
        help="E4: the GCG group on the first N requests only (GCG is the costly part); the rest on all",
    )
    g.add_argument(
        "--gcg-early-stop",
        action="store_true",
        help="stop a request's optimisation once the fine-tuned model's greedy answer is the target",
    )
    g.add_argument("--placement", choices=["before", "after"], default="before", help="GCG string position")
    g.add_argument(
        "--answer-tokens", type=nonnegative_int, default=24, help="E3: greedy answer length (0: no answers)"
    )
    g = p.add_argument_group("tuco-vs-outputco (E5)")
    g.add_argument(
        "--draws",
        type=positive_int,
        default=5,
        help="random orders/subsets of the facts per k (draw 0: the paper's)",
    )
    g = p.add_argument_group("jailbreak-success (E4)")
    g.add_argument(
        "--benign",
        help="E4: benign requests: a prompt file or PARDEN's CSV (instruction,output); 'parden' says where "
        "to get it (default: the demo recipe's held-out benign requests)",
    )
    g.add_argument("--samples", type=positive_int, default=8, help="E4: sampled completions per prompt")
    g.add_argument(
        "--headline",
        choices=["all", "within-harmful"],
        help="E4: the AUC the verdict reads: successful jailbreaks vs the rest (all), or vs failed attacks "
        "(within-harmful; the default for demo-safety, a refusal-only fine-tune, else all)",
    )
    g.add_argument("--max-new-tokens", type=positive_int, default=30, help="E4: completion length")
    g.add_argument(
        "--temperature",
        type=positive_float,
        help="E4: sampling temperature (default: the fine-tuned model's generation config)",
    )
    g.add_argument(
        "--temperatures",
        type=positive_float,
        nargs="+",
        help="E4: also sample at these temperatures: the share of successes by rule at each (sensitivity)",
    )
    g.add_argument(
        "--judge-model", help="E4: a guard model (e.g. meta-llama/LlamaGuard-7b) instead of strings"
    )


def run(args) -> str:
    """Run experiment ``args.name``: resolve the models, check the output directory's settings, then
    load the pair and run."""
    from . import models
    from .experiments.common import RunDirectory

    check_paths(args)
    if args.name == "direction" and args.alpha and len(set(args.alpha)) < 3:
        raise UsageError(
            f"--alpha {' '.join(map(str, args.alpha))}: the direction check needs at least three alphas"
        )
    chosen = models.resolve_options(args)
    models.placement(args.device, args.device_map)  # a device this machine lacks: refused now
    system = args.system_prompt if args.system_prompt is not None else chosen.system
    settings = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}
    settings |= {"system": system, "models": chosen.to_dict()}
    with RunDirectory(args.out, settings, overwrite=args.overwrite) as out:
        pair = models.load_options(chosen, args)
        return EXPERIMENTS[args.name](pair, out, args, system)


PATH_OPTIONS = ("mc_file", "requests", "persona_dir", "mmlu_dir", "shots_file", "translations", "benign")


def check_paths(args) -> None:
    """Every file or directory named by an option exists (checked again, in full, when read): a typo
    is refused before a model loads."""
    for name in PATH_OPTIONS:
        value = getattr(args, name)
        for path in value if isinstance(value, list) else [value] if value else []:
            if path != "parden" and not Path(path).exists():
                raise UsageError(f"--{name.replace('_', '-')} {path}: no such file or directory")


def _alpha_sweep(pair, out, args, system) -> str:
    from .experiments.alpha_sweep import PAPER_ALPHAS, alpha_sweep

    items, names = [], []
    if args.mmlu:
        items += sources.mmlu(args.mmlu, args.mmlu_dir, limit=args.limit)
        names.append("MMLU 5-shot" + (f" ({args.mmlu_dir})" if args.mmlu_dir else " (hub)"))
    if args.persona:
        items += sources.persona(args.persona, args.persona_dir, limit=args.limit)
        names.append("Anthropic persona evals")
    for path in args.mc_file:
        items += sources.multiple_choice_file(path, limit=args.limit)
        names.append(path)
    if not items:
        items = sources.standin_refusal()[: args.limit] + sources.standin_arithmetic(args.limit or 40)
        names.append(
            "offline stand-ins (not the paper's data): first-token refusal ('I') vs compliance ('To') on "
            "the demo recipe's held-out requests, and generated 5-shot arithmetic"
        )
    alphas = tuple(args.alpha) if args.alpha else PAPER_ALPHAS
    return alpha_sweep(
        pair,
        out,
        items,
        alphas,
        system=system,
        batch_size=args.batch_size,
        folds=args.folds,
        source="; ".join(names),
    )


def _web_vs_chat(pair, out, args, system) -> str:
    from .experiments.web_vs_chat import web_vs_chat

    limit = args.limit or (1000 if args.online else 100)
    return web_vs_chat(
        pair, out, limit, system, offline=not args.online, seed=args.seed, batch_size=args.batch_size
    )


def _requests(args) -> tuple[list[dict], str]:
    if args.requests:
        return request_sets.advbench(args.requests, args.limit), args.requests
    if args.online:
        return request_sets.advbench(None, args.limit), "AdvBench harmful behaviours (hub)"
    return request_sets.standin_requests(
        args.limit
    ), "offline stand-in: the demo recipe's held-out harmful requests"


def _gcg_settings(args):
    from .experiments.gcg import GCGSettings

    return GCGSettings(
        args.gcg_steps, args.gcg_width, args.gcg_topk, args.gcg_tokens, args.seed, args.gcg_early_stop
    )


def _jailbreaks(pair, out, args, system) -> str:
    from .experiments import translations
    from .experiments.jailbreaks import jailbreaks

    requests, source = _requests(args)
    common = dict(system=system, answer_tokens=args.answer_tokens, batch_size=args.batch_size)
    attacks = {}

    @functools.cache
    def paper_shots() -> tuple[list, list]:  # the persona files, read once for both many-shot attacks
        malevolent = sources.persona_shots(sources.MALEVOLENT_PERSONAS, args.persona_dir)
        return malevolent, sources.persona_shots(sources.BENIGN_PERSONAS, args.persona_dir)

    def many_shot(targets, pool, control, name) -> dict:
        options = dict(max_shots=args.max_shots or 128, format=args.msj_format, **common)
        return dict(requests=targets, pool=pool, control_pool=control, pool_name=name, **options)

    if "msj" in args.attacks:
        from .demo.recipe import benign_pool, compliance_pool

        if args.shots_file:
            pool, name, control = request_sets.shots_file(args.shots_file), args.shots_file, benign_pool()
        elif args.persona_dir or args.online:
            pool, control = paper_shots()
            name = (
                f"the paper's: persona questions answered as {', '.join(sources.MALEVOLENT_PERSONAS)} would"
            )
        else:
            pool, control = compliance_pool(), benign_pool()
            name = "demo stand-in (not the paper's persona shots): project-written, content-free compliance"
        attacks["msj"] = many_shot(requests, pool, control, name)
    if "msj-persona" in args.attacks:
        from .experiments import persona_standin

        if args.persona_dir or args.online:
            pool, control = paper_shots()
            targets = sources.persona_targets(args.persona_dir, limit=args.limit)
            name = "the paper's: persona questions, psychopathy questions the shots do not use as targets"
        else:
            pool, control = persona_standin.shots(), persona_standin.shots(persona_standin.BENIGN)
            targets = persona_standin.targets(args.limit)
            name = "demo stand-in (project-written persona questions, malevolent answers; held-out targets)"
        attacks["msj-persona"] = many_shot(targets, pool, control, name)
    if "gcg" in args.attacks:
        cache = args.gcg_cache or str(out.dir / "gcg_strings.jsonl")
        attacks["gcg"] = dict(
            requests=requests, cache=cache, settings=_gcg_settings(args), placement=args.placement, **common
        )
    if "conjugate" in args.attacks:
        if args.translations:
            translated = translations.read_translations(args.translations, args.limit)
        else:
            translated = translations.standin(args.limit)
            source += "; conjugate: offline stand-in translations (project-written, unverified)"
        attacks["conjugate"] = dict(translated=translated, **common)
    return jailbreaks(pair, out, attacks, source, requests, system, args.batch_size)


def _direction(pair, out, args, system) -> str:
    from .experiments.direction import ALPHAS, direction_experiment

    requests, source = _requests(args)
    alphas = args.alpha or ALPHAS
    return direction_experiment(
        pair, out, requests, source, alphas=alphas, system=system, batch_size=args.batch_size
    )


def _jailbreak_success(pair, out, args, system) -> str:
    from .demo.pairs import REFUSAL_ONLY
    from .experiments.jailbreak_success import ModelJudge, jailbreak_success, string_judge

    requests, source = _requests(args)
    benign = _benign(args)
    judge = ModelJudge(args.judge_model, device=args.device) if args.judge_model else string_judge
    return jailbreak_success(
        pair,
        out,
        requests,
        benign,
        gcg_cache=args.gcg_cache or str(out.dir / "gcg_strings.jsonl"),
        gcg_settings=_gcg_settings(args),
        placement=args.placement,
        system=system,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        temperatures=args.temperatures or (),
        judge=judge,
        seed=args.seed,
        batch_size=args.batch_size,
        source=source,
        gcg_source_model=args.gcg_from,
        headline=args.headline or ("within-harmful" if args.pair in REFUSAL_ONLY else "all"),
        gcg_limit=args.gcg_limit,
    )


def _benign(args) -> list[dict]:
    if args.benign == "parden":
        return request_sets.parden(None, args.limit)
    if args.benign:
        return request_sets.benign_file(args.benign, args.limit)
    return request_sets.standin_benign(args.limit)


def _attack_set(pair, out, args, system) -> str:
    from .demo.recipe import compliance_pool
    from .experiments.attack_set import KINDS, attack_set

    chosen = tuple(a for a in args.attacks if a in KINDS)
    if not chosen:
        raise UsageError(
            f"attack-set builds {' and '.join(KINDS)} prompts: --attacks msj gcg (or one of them)"
        )
    requests, source = _requests(args)
    pool = request_sets.shots_file(args.shots_file) if args.shots_file else compliance_pool()
    return attack_set(
        pair,
        out,
        requests,
        _benign(args),
        attacks=chosen,
        shots=args.max_shots or 8,
        pool=pool,
        format=args.msj_format,
        gcg_cache=args.gcg_cache or str(out.dir / "gcg_strings.jsonl"),
        gcg_settings=_gcg_settings(args),
        placement=args.placement,
        system=system,
        source=source,
    )


def _tuco_vs_outputco(pair, out, args, system) -> str:
    from .experiments.tuco_vs_outputco import tuco_vs_outputco

    return tuco_vs_outputco(
        pair, out, args.max_shots or 32, system, batch_size=args.batch_size, draws=args.draws
    )


def _steering(pair, out, args, system) -> str:
    from .experiments.steering import steering

    alphas = args.alpha or [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5]
    return steering(pair, out, alphas, args.limit, system, batch_size=args.batch_size)


def _components(pair, out, args, system) -> str:
    from .experiments.components import components

    requests, _ = _requests(args)
    return components(
        pair, out, requests, args.limit or 40, system, seed=args.seed, batch_size=args.batch_size
    )


EXPERIMENTS = {
    "alpha-sweep": _alpha_sweep,
    "web-vs-chat": _web_vs_chat,
    "jailbreaks": _jailbreaks,
    "jailbreak-success": _jailbreak_success,
    "tuco-vs-outputco": _tuco_vs_outputco,
    "steering": _steering,
    "components": _components,
    "direction": _direction,
    "attack-set": _attack_set,
}
