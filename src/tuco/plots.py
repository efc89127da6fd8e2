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
