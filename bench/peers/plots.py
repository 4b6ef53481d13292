"""Draw any plot dict of :mod:`peers.report` as a PNG (matplotlib, Agg backend).

``draw(plot, out_dir)`` renders a ``"bar"`` or ``"line"`` plot into ``out_dir/plot["file"]``.
Peer ids get a fixed colour in every plot; pooly's two flavours are highlighted (strong
colours, thicker lines, bold tick labels), the peers are drawn in muted ones.
"""

from __future__ import annotations

import os
from typing import Any

POOLY_COLOURS = {"pooly-executor": "#d62728", "pooly-lease": "#ff7f0e", "pooly": "#d62728"}
PEER_COLOURS = {
    "stdlib": "#1f77b4",
    "mp-pool": "#2ca02c",
    "pebble": "#9467bd",
    "loky": "#8c564b",
    "mpire": "#17becf",
    "deadpool": "#7f7f7f",
    "ray": "#bcbd22",
}
OTHER = ["#aec7e8", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"]


def colour(label: str, i: int) -> str:
    base = label.split(" ")[0].split("|")[0]
    if base in POOLY_COLOURS:
        return POOLY_COLOURS[base]
    if base in PEER_COLOURS:
        return PEER_COLOURS[base]
    if base.startswith("pooly"):
        return POOLY_COLOURS["pooly"]
    return OTHER[i % len(OTHER)]


def is_pooly(label: str) -> bool:
    return label.startswith("pooly")


def draw(p: dict[str, Any], out_dir: str) -> str:
    """Render ``p`` to ``out_dir/p["file"]``; returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    path = os.path.join(out_dir, p["file"])
    series = p["series"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    try:
        if p["kind"] == "bar":
            labels = [k for k, v in series.items() if v is not None]
            values = [float(series[k]) for k in labels]
            colours = [colour(k, i) for i, k in enumerate(labels)]
            bars = ax.bar(
                range(len(labels)),
                values,
                color=colours,
                edgecolor=["black" if is_pooly(k) else "none" for k in labels],
                linewidth=1.2,
            )
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=30, ha="right")
            for t in ax.get_xticklabels():
                if is_pooly(t.get_text()):
                    t.set_fontweight("bold")
            for b, v in zip(bars, values, strict=True):
                ax.annotate(
                    _short(v),
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
            ax.margins(y=0.12)
        elif p["kind"] == "line":
            ordered = sorted(series, key=lambda k: (not is_pooly(k), k))
            for i, label in enumerate(ordered):
                pts = sorted((float(x), float(y)) for x, y in series[label] if y is not None)
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                pooly = is_pooly(label)
                ax.plot(
                    xs,
                    ys,
                    marker="o",
                    color=colour(label, i),
                    linewidth=2.8 if pooly else 1.3,
                    markersize=6 if pooly else 4,
                    zorder=3 if pooly else 2,
                    label=label,
                )
            ax.legend(fontsize=8, ncols=2)
        else:
            raise ValueError(f"unknown plot kind {p['kind']!r}")
        for axis, on in ((ax.xaxis, p.get("log_x")), (ax.yaxis, p.get("log_y"))):
            if on:
                (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
                # Plain numbers (1, 2, 5, 10, 20 ...), not 2 x 10^2.
                axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.10g}"))
                axis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(p["title"], fontsize=11)
        ax.set_xlabel(p.get("xlabel", ""))
        ax.set_ylabel(p.get("ylabel", ""))
        ax.grid(True, which="major", axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _short(v: float) -> str:
    a = abs(v)
    if a >= 10_000:
        return f"{v / 1000:.0f}k"
    if a >= 1000:
        return f"{v / 1000:.1f}k"
    if a >= 10:
        return f"{v:.0f}"
    return f"{v:.2f}"
