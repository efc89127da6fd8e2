"""Matplotlib figures as PNG bytes, for reports and experiment outputs (no display needed).

>>> fig, ax = figure()
>>> ax.plot([0, 1], [0.2, 0.3])
>>> Path("curve.png").write_bytes(png(fig))
"""

from __future__ import annotations

import io


def figure(ncols: int = 1):
    """A matplotlib (figure, axes) pair, 7 x 4 inches per panel, for ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(ncols=ncols, figsize=(7 * ncols, 4), dpi=100)


def png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def histogram(groups: dict[str, list[float]], title: str, ylabel: str = "prompts", bins: int = 15):
    """Overlaid TuCo histograms of named groups, as a matplotlib figure."""
    fig, ax = figure()
    ax.hist(list(groups.values()), bins=bins, label=list(groups), alpha=0.7)
    ax.set(xlabel="TuCo", ylabel=ylabel, title=title)
    ax.legend()
    return fig


def stacked_sides(panels: list[tuple[str, list[float], list[float]]]):
    """One panel per (title, attention side, MLP side) of per-block FTC norms, stacked bars."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, axes = figure(ncols=len(panels))
    for ax, (title, attn, mlp) in zip(np.atleast_1d(axes), panels, strict=True):
        layers = np.arange(len(attn))
        ax.bar(layers, attn, label="attention")
        ax.bar(layers, mlp, bottom=attn, label="MLP")
        ax.set(xlabel="block l", ylabel="||FTC_l|| at the last token", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    return fig


def head_maps(panels: list[tuple[str, object]]):
    """One heat map per (title, [L, H] grid of FTC norms per block and head)."""
    import numpy as np

    fig, axes = figure(ncols=len(panels))
    for ax, (title, grid) in zip(np.atleast_1d(axes), panels, strict=True):
        image = ax.imshow(np.asarray(grid).T, aspect="auto", origin="lower", cmap="viridis")
        ax.set(xlabel="block l", ylabel="head", title=title)
        fig.colorbar(image, ax=ax, label="||FTC head||")
    return fig


def stage_shares(table, panels: list[tuple[str, object]], names: list[str]):
    """Left: one stacked bar per group of the PTC share and each stage's (``table``: groups x
    [PTC, *names]); then one panel per (title, [K, L] stage norms per block) with a line per stage."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, axes = figure(ncols=1 + len(panels))
    axes = np.atleast_1d(axes)
    bottom = np.zeros(len(table))
    for column in table.columns:
        axes[0].bar([str(i) for i in table.index], table[column], bottom=bottom, label=column)
        bottom += table[column].to_numpy()
    axes[0].set(ylabel="share of ||P|| + sum_k ||C_k||", title="PTC and each stage")
    axes[0].legend(fontsize=8)
    for ax, (title, grid) in zip(axes[1:], panels, strict=True):
        for name, norms in zip(names, np.asarray(grid), strict=True):
            ax.plot(norms, marker="o", label=name)
        ax.set(xlabel="block l", ylabel="||C_{k,l}|| at the last token", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    return fig
