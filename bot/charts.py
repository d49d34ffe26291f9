"""The /stats chart: 👍-rate and vote counts per adapter version over time, as a PNG."""

from __future__ import annotations

import io
from collections import defaultdict
from datetime import datetime

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DailyVotes = list[tuple[datetime, str | None, int, int]]  # (day, adapter, 👍, 👎), as the store returns them


def votes_chart(daily: DailyVotes) -> bytes:
    """Two panels sharing the time axis: the up-vote rate per version (top) and the vote counts (bottom)."""
    series: dict[str, list[tuple[datetime, int, int]]] = defaultdict(list)
    for day, adapter, up, down in daily:
        series[adapter or "base"].append((day, up, down))
    figure = Figure(figsize=(8, 5), dpi=100, layout="constrained")  # Agg, no pyplot: safe off the main thread
    FigureCanvasAgg(figure)
    rate_axes, count_axes = figure.subplots(2, 1, sharex=True)
    for name, points in series.items():
        days = [day for day, _, _ in points]
        rate_axes.plot(days, [up / (up + down) for _, up, down in points], marker="o", label=name)
        count_axes.plot(days, [up + down for _, up, down in points], marker="s", label=name)
    rate_axes.set_ylim(0, 1.05)
    rate_axes.set_ylabel("up-vote rate")
    rate_axes.set_title("Votes on gradschool's answers, by adapter version")
    rate_axes.legend(loc="best", fontsize="small")
    rate_axes.grid(alpha=0.3)
    count_axes.set_ylim(bottom=0)
    count_axes.set_ylabel("votes per day")
    count_axes.grid(alpha=0.3)
    figure.autofmt_xdate()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
