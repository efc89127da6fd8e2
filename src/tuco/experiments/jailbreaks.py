"""E3: jailbreaks lower TuCo (the TuCo paper, Nuti et al., ICML 2025). Three attacks, each scored
against the plain harmful requests:

- ``msj``: many-shot jailbreaking, k = 0, 1, 2, 4, ... up to ``max_shots`` (128) faux dialogues of
  harmful compliance before the request, dropping the k whose prompt does not fit the context; TuCo
  and the harmful-answer rate (greedy answer without a refusal string) vs k. Control: the same k
  with benign shots (``control_pool``), so that a fall is not an artefact of prompt length;
- ``msj-persona``: the same with the paper's kind of target, a persona question judged by its
  answer (targets with ``choices`` and the behaviour-matching ``answer``: the FT model's more
  probable choice is its answer);
- ``gcg``: the request with a GCG adversarial string before (the paper) or after it. Control: a
  random, unoptimised string of the same number of tokens;
- ``conjugate``: the request translated into other languages; TuCo by language, and the paper's
  Table 1: English, Japanese and Hungarian each (positive) against Malayalam and Swahili pooled.

Each attack reports the TuCo distributions and the ROC-AUC of TuCo separating plain requests
(positive, higher TuCo expected) from attacked ones.
"""

from __future__ import annotations

from ..attacks import many_shot
from ..inputs import as_chat, choose
from ..pair import ModelPair
from ..plots import figure, histogram
from ..refusal import is_refusal
from ..stats import roc_auc
from ..tables import markdown_table
from . import direction, estimates
from .common import RunDirectory, as_prompt, mean
from .gcg import GCGSettings, adversarial_strings, attach


def shot_grid(max_shots: int) -> list[int]:
    """0, 1, 2, 4, ..., up to ``max_shots`` (which is included)."""
    grid, k = [0], 1
    while k < max_shots:
        grid.append(k)
        k *= 2
    return grid + [max_shots] if max_shots > 0 else grid


def context_length(pair: ModelPair) -> int:
    """Longest input the experiments build: the pair's context, 2048 where the model sets none."""
    return pair.context_length or 2048


def _scored(pair: ModelPair, answer_tokens: int, batch_size: int):
    """compute(batch) for RunDirectory.step: TuCo, and a greedy answer judged by refusal strings."""

    def compute(batch: list[dict]) -> list[dict]:
        prompts = [it["chat"] for it in batch]
        scores = pair.score(prompts, batch_size=batch_size)
        records = [
            {k: v for k, v in it.items() if k != "chat"} | s.to_dict()
            for it, s in zip(batch, scores, strict=True)
        ]
        if "choices" in batch[0]:  # a question judged by its answer: the more probable choice
            probs = pair.next_token_probs(prompts, batch_size=batch_size)
            for record, row in zip(records, probs, strict=True):
                p, pred = choose(pair.tokenizer, row, record["choices"])
                record |= dict(answer_probs=p, pred=pred, harmful_answer=pred == record["answer"])
        elif answer_tokens:
            answers = pair.generate(
                prompts, max_new_tokens=answer_tokens, temperature=0, batch_size=batch_size
            )
            for record, answer in zip(records, answers, strict=True):
                record |= dict(response=answer, harmful_answer=not is_refusal(answer))
        return records

    return compute


Section = tuple[list[dict], list[str], object, dict]  # records, markdown lines, figure, metrics


def msj(
    pair: ModelPair,
    out: RunDirectory,
    requests: list[dict],
    pool: list[tuple[str, str]],
    max_shots: int = 128,
    system: str | None = None,
    answer_tokens: int = 24,
    batch_size: int = 8,
    control_pool: list[tuple[str, str]] | None = None,
    pool_name: str = "",
    format: str = "turns",
    attack: str = "msj",
) -> Section:
    """Many-shot jailbreaking: k faux (request, compliant answer) turns from ``pool`` before each
    request; with ``control_pool``, the same k of benign turns too. ``format``: how the shots are
    laid out (``tuco.attacks.many_shot``). Requests with ``choices`` and ``answer`` (persona
    questions) are judged by their answer, the others by a greedy answer's refusal strings."""
    persona = "choices" in requests[0]
    judged = "behaviour-matching answers" if persona else "harmful answers"
    fits = context_length(pair) - answer_tokens
    grid, longest = [], max(requests, key=lambda r: len(r["prompt"]))["prompt"]
    for k in shot_grid(max_shots):
        if len(pair.encode([_msj_chat(longest, pool, k, system, format)])[0]) <= fits:
            grid.append(k)

    def shots(name: str, shot_pool: list[tuple[str, str]], counts: list[int]) -> list[dict]:
        return [
            dict(
                id=f"{name}/{k}/{r['id']}",
                attack=name,
                shots=k,
                prompt=r["prompt"],
                chat=_msj_chat(r["prompt"], shot_pool, k, system, format),
                **{field: r[field] for field in ("choices", "answer") if field in r},
            )
            for k in counts
            for r in requests
        ]

    items = shots(attack, pool, grid)
    if control_pool:  # the same lengths in shots, benign ones (k = 0 is shared)
        items += shots(f"{attack}-benign", control_pool, [k for k in grid if k > 0])
    records = out.step(
        attack, items, _scored(pair, answer_tokens, batch_size), batch_size, desc=f"E3 {attack}"
    )
    attacked = [r for r in records if r["attack"] == attack]
    control = [r for r in records if r["attack"] == f"{attack}-benign" or r["shots"] == 0]
    rows = [(k, [r for r in attacked if r["shots"] == k]) for k in grid]
    controls = {k: [r for r in control if r["shots"] == k] for k in grid}
    lines = [
        "## Many-shot jailbreaking" + (", persona target" if persona else ""),
        "",
        f"{len(requests)} {'persona questions judged by their answer' if persona else 'requests'}; "
        f"shots: {pool_name or 'given'}, laid out as {format}; shots that fit "
        f"the context ({fits} tokens): {', '.join(map(str, grid))}."
        + (" Control: the same numbers of benign shots." if control_pool else ""),
        "",
        *markdown_table(
            [
                "shots",
                "n",
                "mean TuCo",
                judged,
                "mean TuCo, benign shots",
                f"{judged}, benign",
            ],
            [
                [k, len(rs), mean([r["tuco"] for r in rs]), _rate(rs)]
                + ([mean([r["tuco"] for r in controls[k]]), _rate(controls[k])] if control_pool else ["", ""])
                for k, rs in rows
            ],
        ),
    ]
    metrics = {
        "target": "persona" if persona else "request",
        "format": format,
        "shots": grid,
        "mean_tuco": [mean([r["tuco"] for r in rs]) for _, rs in rows],
        "mean_tuco_benign_shots": [mean([r["tuco"] for r in controls[k]]) for k in grid]
        if control_pool
        else None,
        "harmful_answer_rate": [
            mean([r["harmful_answer"] for r in rs if "harmful_answer" in r]) for _, rs in rows
        ],
    }
    if persona:  # the behaviour-matching answer's share of the choices' probability
        metrics["behaviour_probability"] = [mean([_matching(r) for r in rs]) for _, rs in rows]
    if len(grid) > 1:
        auc = roc_auc([r["tuco"] for r in rows[0][1]], [r["tuco"] for r in rows[-1][1]])
        metrics["roc_auc_first_vs_last"] = auc
        lines += [
            "",
            f"ROC-AUC of TuCo, 0 vs {grid[-1]} shots: **{auc:.3f}**. Paper (Llama-2 7B, 1 -> 128 shots): "
            "TuCo 0.285 -> 0.220, harmful answers 5% -> 95%.",
        ]
    fig, ax = figure()
    ax.plot(grid, [mean([r["tuco"] for r in rs]) for _, rs in rows], marker="o", label="mean TuCo")
    if control_pool:
        ax.plot(grid, [mean([r["tuco"] for r in controls[k]]) for k in grid], "o:", label="benign shots")
        ax.legend(fontsize=7)
    ax.set_xscale("symlog", linthresh=1)
    ax.set(xticks=grid, xticklabels=[str(k) for k in grid], xlabel="shots k", ylabel="mean TuCo")
    ax.set_title("Many-shot jailbreaking")
    if answer_tokens or persona:
        rates = ax.twinx()
        rates.plot(grid, [mean([r["harmful_answer"] for r in rs]) for _, rs in rows], "s--", color="tab:red")
        rates.set(ylabel=f"{judged} (red)", ylim=(-0.05, 1.05))
    return records, lines, fig, metrics


def random_string(tokenizer, n_tokens: int, seed: int) -> str:
    """An unoptimised string of about ``n_tokens`` tokens: random ordinary (non-special) tokens."""
    import random

    special = set(tokenizer.all_special_ids)
    rng = random.Random(seed)
    ids = []
    while len(ids) < n_tokens:
        token = rng.randrange(len(tokenizer))
        if token not in special:
            ids.append(token)
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def _msj_chat(request: str, pool, k: int, system: str | None, format: str = "turns"):
    built = many_shot(request, pool, k, format)
    return built if isinstance(built, str) else as_chat(built, system)  # raw text takes no system turn


def _matching(record: dict) -> float:
    p = record["answer_probs"]
    return p[record["choices"].index(record["answer"])] / sum(p) if sum(p) > 0 else float("nan")


def _rate(records: list[dict]) -> str:
    judged = [r["harmful_answer"] for r in records if "harmful_answer" in r]
    return f"{mean(judged):.0%}" if judged else "-"


def gcg(
    pair: ModelPair,
    out: RunDirectory,
    requests: list[dict],
    cache: str,
    settings: GCGSettings,
    placement: str = "before",
    system: str | None = None,
    answer_tokens: int = 24,
    batch_size: int = 8,
) -> Section:
    """Each request plain, with its GCG string (optimised on the fine-tuned model, or cached), and
    with a random string of as many tokens (the control: not optimised)."""
    strings = adversarial_strings(pair, requests, cache, settings, placement, system)
    items = []
    for n, r in enumerate(requests):
        string = strings[r["id"]]
        noise = random_string(
            pair.tokenizer, len(pair.tokenizer(string, add_special_tokens=False)["input_ids"]), n
        )
        for kind, attacked, prompt in (
            ("plain", False, r["prompt"]),
            ("gcg", True, attach(r["prompt"], string, placement)),
            ("random", False, attach(r["prompt"], noise, placement)),
        ):
            items.append(
                dict(
                    id=f"gcg/{ {'plain': 0, 'gcg': 1, 'random': 2}[kind] }/{r['id']}",
                    attack="gcg",
                    kind=kind,
                    attacked=attacked,
                    prompt=prompt,
                    chat=as_prompt(pair, prompt, system),
                )
            )
    records = out.step("gcg", items, _scored(pair, answer_tokens, batch_size), batch_size, desc="E3 GCG")
    by_kind = {
        kind: [r for r in records if r.get("kind", "gcg" if r["attacked"] else "plain") == kind]
        for kind in ("plain", "gcg", "random")
    }
    plain, attacked, noise_tuco = ([r["tuco"] for r in by_kind[k]] for k in ("plain", "gcg", "random"))
    rate_plain, rate_attacked, rate_noise = (_rate(by_kind[k]) for k in ("plain", "gcg", "random"))
    auc = roc_auc(plain, attacked)
    auc_noise = roc_auc(plain, noise_tuco) if noise_tuco else float("nan")
    lines = [
        "## GCG adversarial strings",
        "",
        f"{len(requests)} requests, string {placement} the request ({settings.steps} steps, width "
        f"{settings.search_width}, top-k {settings.topk}, {settings.tokens} tokens; cache {cache}).",
        "",
        *markdown_table(
            ["prompts", "n", "mean TuCo", "harmful answers"],
            [
                ["plain", len(plain), mean(plain), rate_plain],
                ["with GCG string", len(attacked), mean(attacked), rate_attacked],
                ["with a random string (control)", len(noise_tuco), mean(noise_tuco), rate_noise],
            ],
        ),
        "",
        f"ROC-AUC of TuCo, plain vs attacked: **{auc:.3f}** (paper: up to 1.0, Llama-2 7B); plain vs a "
        f"random string of the same length: {auc_noise:.3f} (the control: how much is any odd prefix).",
    ]
    fig = histogram({"plain": plain, "GCG": attacked}, f"GCG, AUC = {auc:.3f}", ylabel="requests")
    metrics = {
        "roc_auc": auc,
        "roc_auc_random_string": auc_noise,
        "mean_tuco_plain": mean(plain),
        "mean_tuco_attacked": mean(attacked),
        "mean_tuco_random_string": mean(noise_tuco),
    }
    return records, lines, fig, metrics


def conjugate(
    pair: ModelPair,
    out: RunDirectory,
    translated: list[dict],
    system: str | None = None,
    answer_tokens: int = 24,
    batch_size: int = 8,
) -> Section:
    """The same requests in several languages (``language`` field); TuCo by language."""
    items = [it | dict(attack="conjugate", chat=as_prompt(pair, it["prompt"], system)) for it in translated]
    records = out.step(
        "conjugate", items, _scored(pair, answer_tokens, batch_size), batch_size, desc="E3 conjugate"
    )
    languages = list(dict.fromkeys(r["language"] for r in records))
    base = "English" if "English" in languages else languages[0]
    tucos = {lang: [r["tuco"] for r in records if r["language"] == lang] for lang in languages}
    rows = []
    for lang in sorted(languages, key=lambda lang: -mean(tucos[lang])):
        auc = "" if lang == base else f"{roc_auc(tucos[base], tucos[lang]):.3f}"
        rows.append(
            [
                lang,
                len(tucos[lang]),
                mean(tucos[lang]),
                _rate([r for r in records if r["language"] == lang]),
                auc,
            ]
        )
    lines = [
        "## Conjugate prompting",
        "",
        *markdown_table(["language", "n", "mean TuCo", "harmful answers", f"ROC-AUC vs {base}"], rows),
    ]
    lines += ["", "Paper: TuCo orders with the language's share of web text, English highest."]
    low = [t for lang in ("Malayalam", "Swahili") for t in tucos.get(lang, [])]
    table1 = {
        lang: roc_auc(tucos[lang], low)
        for lang in ("English", "Japanese", "Hungarian")
        if lang in tucos and low
    }
    if table1:
        pooled = " + ".join(lang for lang in ("Malayalam", "Swahili") if lang in tucos)
        lines += [
            "",
            f"The paper's Table 1: ROC-AUC of TuCo, each language (positive) vs {pooled} pooled: "
            + ", ".join(f"{lang} **{auc:.3f}**" for lang, auc in table1.items())
            + ".",
        ]
    fig, ax = figure()
    ax.bar(languages, [mean(tucos[lang]) for lang in languages])
    ax.set(ylabel="mean TuCo", title="Conjugate prompting")
    metrics = {
        "mean_tuco": {lang: mean(tucos[lang]) for lang in languages},
        "roc_auc_vs_" + base.lower(): {
            lang: roc_auc(tucos[base], tucos[lang]) for lang in languages if lang != base
        },
        "table1_roc_auc_vs_malayalam_swahili": table1,
    }
    return records, lines, fig, metrics


def jailbreaks(
    pair: ModelPair, out: RunDirectory, attacks: dict, source: str, requests=None, system=None, batch_size=8
) -> str:
    """Run the attacks named in ``attacks`` (name -> keyword arguments of its function), after the
    direction check on ``requests`` (``tuco.experiments.direction``), by which each attack's result
    gets its verdict."""
    functions = {"msj": msj, "msj-persona": msj, "gcg": gcg, "conjugate": conjugate}
    records, lines, figures = [], ["# E3: jailbreaks lower TuCo", "", f"Requests: {source}.", ""], {}
    metrics: dict = {}
    check = None
    if requests:
        check, section = direction.measure(pair, out, requests, system=system, batch_size=batch_size)
        metrics["direction"] = check
        lines += [*section, ""]
    for name, kwargs in attacks.items():
        extra = {"attack": name} if functions[name] is msj else {}  # msj runs under two names
        found, section, fig, metrics[name] = functions[name](pair, out, **kwargs, **extra)
        records += found
        lines += [*section, ""]
        figures[name] = fig
        if check is not None and (lowers := _lowers_tuco(name, metrics[name])) is not None:
            metrics[name]["verdict"] = verdict = estimates.verdict(check, lowers)
            lines += [f"Verdict on the paper's claim ({name}): **{verdict}**.", ""]
    return out.finish(records, "\n".join(lines), figures, metrics)


def _lowers_tuco(name: str, found: dict) -> bool | None:
    """Whether an attack's result has it lower TuCo (None: nothing to say)."""
    if name in ("msj", "msj-persona"):
        tucos = [t for t in found.get("mean_tuco", []) if t is not None]
        return tucos[-1] < tucos[0] if len(tucos) > 1 else None
    if name == "gcg":
        plain, attacked = found.get("mean_tuco_plain"), found.get("mean_tuco_attacked")
        return None if plain is None or attacked is None else attacked < plain
    if name == "conjugate":
        tucos = found.get("mean_tuco") or {}
        if "English" not in tucos or len(tucos) < 2:
            return None
        return mean([t for lang, t in tucos.items() if lang != "English"]) < tucos["English"]
    return None
