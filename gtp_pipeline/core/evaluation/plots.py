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
    """One line per name: {name: (xs, ys)}; the legend outside the axes, so it never covers a point.

    Lines that coincide stay visible: each has its own marker and a small horizontal offset of its markers. On a
    log axis the ticks are the data's own x values, written as plain numbers."""
    plt, (fig, ax) = _figure(6.4, 3.6)
    markers = "osD^vP*X"
    names = list(series)
    for i, name in enumerate(names):
        xs, ys = list(series[name][0]), list(series[name][1])
        shift = 1 + 0.015 * (i - (len(names) - 1) / 2) if log_x else 1.0  # a nudge apart, in log space
        ax.plot([x * shift for x in xs], ys, marker=markers[i % len(markers)], label=name, alpha=0.85)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_x:
        from matplotlib.ticker import FixedLocator, NullLocator

        ticks = sorted({float(x) for xs, _ in series.values() for x in xs})
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.legend(fontsize=8, bbox_to_anchor=(1.0, 1.0), loc="upper left")
    return _png(plt, fig)


def stacked_bar_png(
    labels: Sequence[str], series: dict[str, Sequence[float]], title: str = "", ylabel: str = ""
) -> bytes:
    """One bar per label, stacked by series name ({name: values aligned with labels})."""
    plt, (fig, ax) = _figure(7.0, 3.6)
    bottom = [0.0] * len(labels)
    for name, values in series.items():
        ax.bar(list(labels), list(values), bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=7, bbox_to_anchor=(1.0, 1.0), loc="upper left")
    return _png(plt, fig)


def heatmap_png(matrix: Sequence[Sequence[float]], labels: Sequence[str], title: str = "") -> bytes:
    """A square matrix with its values written in the cells (e.g. overlap between selections)."""
    plt, (fig, ax) = _figure(4.2, 3.6)
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45)
    ax.set_yticks(range(len(labels)), labels)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(
                j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="black" if value < 0.6 else "white"
            )
    fig.colorbar(image, ax=ax)
    ax.set_title(title)
    return _png(plt, fig)


def forest_png(
    labels: Sequence[str],
    estimates: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    title: str = "",
    xlabel: str = "",
) -> bytes:
    """One row per comparison: the estimate with its interval, and a line at 0 (no difference) to read it against."""
    plt, (fig, ax) = _figure(6.5, max(2.4, 0.35 * len(labels) + 1.0))
    rows = list(range(len(labels)))
    estimates = list(estimates)
    below = [e - lo for e, lo in zip(estimates, lows, strict=True)]
    above = [hi - e for e, hi in zip(estimates, highs, strict=True)]
    ax.errorbar(estimates, rows, xerr=[below, above], fmt="o", color="#3b6ea5", ecolor="#3b6ea5", capsize=3)
    ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(rows, list(labels))
    ax.invert_yaxis()  # first label on top, as in a table
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    return _png(plt, fig)


SVG_COLORS = ("blue", "red", "green", "purple", "gray", "brown", "teal")  # names: shorter than hex, no "#" to escape


def lines_svg(series: dict[str, Sequence[float]], xticks: Sequence[str]) -> str:
    """A bare line chart in a few hundred bytes of SVG: one line per name over evenly spaced x positions (`xticks`),
    labelled at its right end, the y range written at the left. Small enough to embed where a UI draws only short
    markdown inline (the selection report's at-a-glance plot); the full plots are PNGs."""
    values = [y for ys in series.values() for y in ys if y == y]
    lo, hi = min(values), max(values)
    width, height = 300, 150  # an <img>'s default size for an SVG without one: no attributes needed
    left, right, top, bottom = 26, 56, 8, 16

    def px(i: int) -> int:
        return round(left + i * (width - left - right) / max(1, len(xticks) - 1))

    def py(y: float) -> int:
        return round(top + (hi - y) / ((hi - lo) or 1.0) * (height - top - bottom))

    def last(ys: Sequence[float]) -> float:
        return next(y for y in reversed(ys) if y == y)

    lines, labels, label_y = [], [], -99
    drawn = [(k, name, ys) for k, (name, ys) in enumerate(series.items()) if any(y == y for y in ys)]
    for k, name, ys in sorted(drawn, key=lambda e: py(last(e[2]))):
        color = SVG_COLORS[k % len(SVG_COLORS)]
        lines.append(
            f'<path d="M{" ".join(f"{px(i)},{py(y)}" for i, y in enumerate(ys) if y == y)}" stroke="{color}"/>'
        )
        label_y = max(py(last(ys)) + 3, label_y + 10)  # labels of lines that end close together stay apart
        labels.append(f'<text x="{width - right + 3}" y="{label_y}" fill="{color}">{name}</text>')
    ticks = "".join(f'<tspan x="{px(i) - 8}">{t}</tspan>' for i, t in enumerate(xticks))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" font-size="10">'
        f'<g fill="none">{"".join(lines)}</g>{"".join(labels)}<text y="{top + 5}">{hi:.2f}</text>'
        f'<text y="{height - bottom}">{lo:.2f}</text><text y="{height - 2}">{ticks}</text></svg>'
    )
