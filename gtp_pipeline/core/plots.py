"""Small PNG plots for asset metadata (matplotlib, headless). Each returns PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence


def _figure(width: float = 6.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")  # no display on servers or CI
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(width, height), dpi=100)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def histogram_png(
    values: Sequence[float], bins: int = 30, title: str = "", xlabel: str = "", log_y: bool = False
) -> bytes:
    plt, (fig, ax) = _figure()
    ax.hist(list(values), bins=bins, color="#3b6ea5", edgecolor="white")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if log_y:
        ax.set_yscale("log")
    return _png(plt, fig)


def bar_png(
    labels: Sequence[str], values: Sequence[float], title: str = "", ylabel: str = "", horizontal: bool = False
) -> bytes:
    plt, (fig, ax) = _figure(6.0, max(3.2, 0.22 * len(labels)) if horizontal else 3.2)
    if horizontal:
        ax.barh(list(labels), list(values), color="#3b6ea5")
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
    else:
        ax.bar(list(labels), list(values), color="#3b6ea5")
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", rotation=45)
    ax.set_title(title)
    return _png(plt, fig)


def lines_png(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    log_x: bool = False,
) -> bytes:
    """One line per name: {name: (xs, ys)}."""
    plt, (fig, ax) = _figure()
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_x:
        ax.set_xscale("log")
    ax.legend()
    return _png(plt, fig)
