"""``tuco report``: one static HTML page (plots embedded as PNG, no server) or a markdown summary.

At the top, where the numbers come from (models, dtype, tuco version, command, date). From score
results: TuCo histograms per group, per-layer PTC/FTC profiles, beta_l curves, ROC-AUC of TuCo
between the two values of a label field, a summary table, the prompts with the highest and lowest
TuCo (token by token with ``--per-token``), and with ``--components`` / ``--heads`` attention vs MLP
per layer and per-head heat maps (``tuco.report_sections``). From sweep results: accuracy
vs alpha per group. From generate results: sample texts per alpha, and with ``generate --tuco`` the
answers as tokens coloured by their TuCo (a heat map).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from .errors import DataError, RunError, UsageError
from .plots import figure, png
from .report_sections import extremes, provenance, stages, sublayers
from .stats import roc_auc
from .store import load_results
from .tables import markdown_table


def write_report(
    results: list[str], out: str, *, group_by: str | None = None, label: str = "label", fmt: str = "html"
) -> Path:
    frame = load_results(results)
    group = group_by or ("group" if "group" in frame else None)
    if group is not None and group not in frame:
        fields = ", ".join(map(str, frame.columns.drop("source")))
        raise UsageError(f"--group-by {group!r}: no such field in the results; fields: {fields}")
    frame = frame.assign(_group=frame[group].astype(str) if group else "all")
    sections = [provenance(results, frame), *_sections(frame, label)]
    for section in sections:  # show the grouping field under its own name
        table = section.get("table")
        if table is not None:
            table.index.name = group or "all" if table.index.name == "_group" else table.index.name
            table.columns.name = group if table.columns.name == "_group" else table.columns.name
    path = Path(out)
    title = f"tuco report: {', '.join(Path(r).name for r in results)}"
    text = _html(title, sections) if fmt == "html" else _markdown(title, sections)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise RunError(f"{path}: cannot write the report ({e.strerror or e})") from e
    return path


def _sections(frame, label: str) -> list[dict]:
    """Each section: title, optional text, optional table (DataFrame), optional figure (PNG bytes)."""
    sections = []
    scores = frame[frame["tuco"].notna()] if "tuco" in frame else frame.iloc[0:0]
    if len(scores):
        summary = scores.groupby("_group")["tuco"].agg(["count", "mean", "std", "median", "min", "max"])
        if "outputco" in scores:
            summary["outputco_mean"] = scores.groupby("_group")["outputco"].mean()
        sections.append({"title": "TuCo per group", "table": summary.round(4), "figure": _histograms(scores)})
        if "ftc_layers" in scores:
            sections.append(
                {"title": "Per-layer PTC and FTC norms (mean over prompts)", "figure": _profiles(scores)}
            )
        if "beta" in scores:
            sections.append({"title": "Cumulative ratio beta_l (mean over prompts)", "figure": _beta(scores)})
        if "ftc_attn_layers" in scores:
            sections += sublayers(scores)
        if "stage_tuco" in scores:
            sections += stages(scores)
        sections.append(extremes(scores))
        if label in scores:
            sections.append(_roc(scores, label))
    if "correct" in frame:
        sweep = frame[frame["correct"].notna()]
        accuracy = sweep.groupby(["_group", "alpha"])["correct"].mean().unstack(0)
        sections.append(
            {"title": "Accuracy vs alpha", "table": accuracy.round(4), "figure": _vs_alpha(accuracy)}
        )
    if "tokens_tuco" in frame:
        monitored = frame[frame["tokens_tuco"].notna()].head(HEATMAP_RECORDS)
        if len(monitored):
            sections.append(_heatmap(monitored))
    if "text" in frame:
        generated = frame[frame["text"].notna()]
        samples = generated.groupby("alpha").head(5)[["id", "alpha", "text"]].set_index("id")
        sections.append({"title": "Generated text (first 5 per alpha)", "table": samples})
    if not sections:
        raise DataError(
            "no tuco, sweep or generate results in the given files (no 'tuco', 'correct' or 'text' "
            "field): give results files of tuco score, sweep or generate."
        )
    return sections


def _roc(scores, label: str) -> dict:
    from sklearn.metrics import roc_curve

    data = scores[scores[label].notna()]
    values = [v.item() if hasattr(v, "item") else v for v in data[label].unique()]
    values = sorted((int(v) if isinstance(v, float) and v.is_integer() else v for v in values), key=str)
    if len(values) != 2:
        return {
            "title": f"ROC-AUC by {label}",
            "text": f"needs exactly two values of {label!r}, found {values}.",
        }
    positive = values[1]
    y = (data[label] == positive).to_numpy()
    auc = roc_auc(data["tuco"][y].tolist(), data["tuco"][~y].tolist())
    fpr, tpr, _ = roc_curve(y, data["tuco"])
    fig, ax = figure()
    ax.plot(fpr, tpr, label=f"TuCo, AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey")
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"{label} = {positive!r} vs {values[0]!r}",
    )
    ax.legend()
    text = (
        f"ROC-AUC of TuCo for {label} = {positive!r} (positive) vs {values[0]!r}: {auc:.4f} (n = {len(data)})"
    )
    return {"title": f"ROC-AUC by {label}", "text": text, "figure": png(fig)}


HEATMAP_RECORDS = 6


def _heatmap(rows) -> dict:
    """Answers as tokens coloured by their TuCo (``tuco generate --tuco``), on one shared scale."""
    from matplotlib import colormaps

    values = [float(v) for tucos in rows["tokens_tuco"] for v in tucos if v is not None]
    low, high = min(values), max(values)
    cmap = colormaps["RdYlBu"]  # red: low TuCo (little fine-tuning), blue: high

    def span(token: str, value) -> str:
        if value is None:
            return html.escape(token)
        r, g, b, _ = cmap((value - low) / (high - low) if high > low else 0.5)
        colour = f"rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f})"
        tip = f"TuCo {value:.4f}"
        return f"<span class='tok' style='background:{colour}' title='{tip}'>{html.escape(token)}</span>"

    blocks = []
    for _, row in rows.iterrows():
        tokens = row["tokens"] if "tokens" in row and isinstance(row["tokens"], list | np.ndarray) else None
        if tokens is None:
            tokens = [f"[{i}]" for i in range(len(row["tokens_tuco"]))]
        body = "".join(span(t, v) for t, v in zip(tokens, row["tokens_tuco"], strict=False))
        head = html.escape(f"id {row['id']}, alpha {row.get('alpha', 1.0):g}, prompt TuCo {row['tuco']:.4f}")
        blocks.append(f"<div class='answer'><div class='meta'>{head}</div><div>{body}</div></div>")
    scale = f"colour scale: red = TuCo {low:.3f} (least fine-tuning) ... blue = TuCo {high:.3f}"
    table = rows[["id", "alpha", "tuco"]].assign(
        mean_token_tuco=[float(np.mean(v)) for v in rows["tokens_tuco"]],
        min_token_tuco=[float(np.min(v)) for v in rows["tokens_tuco"]],
    )
    return {
        "title": f"TuCo of every generated token (first {len(rows)} records)",
        "text": scale,
        "html": "".join(blocks),
        "table": table.set_index("id").round(4),
    }


def _layer_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _histograms(scores) -> bytes:
    fig, ax = figure()
    bins = np.linspace(scores["tuco"].min(), scores["tuco"].max() + 1e-9, 30)
    for name, rows in scores.groupby("_group"):
        ax.hist(rows["tuco"], bins=bins, alpha=0.5, label=f"{name} (n={len(rows)})", density=True)
    ax.set(xlabel="TuCo", ylabel="density")
    ax.legend()
    return png(fig)


def _mean_curve(rows, column: str) -> np.ndarray:
    return np.mean(np.stack([np.asarray(v, dtype=float) for v in rows[column]]), axis=0)


def _profiles(scores) -> bytes:
    fig, ax = figure()
    for name, rows in scores.groupby("_group"):
        line = ax.plot(_mean_curve(rows, "ftc_layers"), label=f"FTC, {name}")[0]
        ax.plot(_mean_curve(rows, "ptc_layers"), ls="--", c=line.get_color(), label=f"PTC, {name}")
    ax.set(xlabel="block l", ylabel="norm at the last token", yscale="log")
    _layer_axis(ax)
    ax.legend(fontsize=8)
    return png(fig)


def _beta(scores) -> bytes:
    fig, ax = figure()
    for name, rows in scores.groupby("_group"):
        ax.plot(_mean_curve(rows, "beta"), label=str(name))
    ax.set(xlabel="block l", ylabel="beta_l")
    _layer_axis(ax)
    ax.legend()
    return png(fig)


def _vs_alpha(accuracy) -> bytes:
    fig, ax = figure()
    for name in accuracy.columns:
        ax.plot(accuracy.index, accuracy[name], marker="o", label=str(name))
    ax.set(xlabel="alpha", ylabel="accuracy")
    ax.legend()
    return png(fig)


def _html(title: str, sections: list[dict]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;max-width:40em;overflow-wrap:anywhere}"
        "img{max-width:100%;display:block}"
        ".answer{margin:1em 0;line-height:1.8}.meta{color:#666;font-size:90%}"
        ".tok{white-space:pre-wrap;padding:1px 0;border-radius:2px}",
        f"</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section['title'])}</h2>")
        if "text" in section:
            parts.append(f"<p>{html.escape(section['text'])}</p>")
        if "html" in section:
            parts.append(section["html"])
        if section.get("table") is not None:
            parts.append(section["table"].to_html(escape=True))
        if section.get("figure") is not None:
            data = base64.b64encode(section["figure"]).decode()
            parts.append(f"<img alt='{html.escape(section['title'])}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _markdown(title: str, sections: list[dict]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section['title']}", ""]
        if "text" in section:
            lines += [section["text"], ""]
        if section.get("table") is not None:
            lines += [_md_table(section["table"]), ""]
    return "\n".join(lines)


def _md_table(table) -> str:
    table = table.reset_index()
    rows = [[v if not isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    return "\n".join(markdown_table([str(c) for c in table.columns], rows))
