"""What a simulation shows: the table per round and the plot of the held-out 👍-rate by round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLUMNS = (
    ("round", 5),
    ("held-out 👍", 11),
    ("votes", 9),
    ("fixes", 5),
    ("🔁", 3),
    ("adapter", 12),
    ("pref acc", 8),
    ("margin", 7),
    ("general NLL", 14),
    ("train s", 7),
)


def _cell(value: Any, width: int) -> str:
    return str(value).rjust(width)


def table(result: dict[str, Any]) -> str:
    """A fixed-width table: the base model's line, then one line per round."""
    header = " ".join(name.rjust(width) for name, width in COLUMNS)
    base_nll = result.get("base_general_nll")
    lines = [header, "-" * len(header)]
    base = [
        "base",
        f"{result['base_held_out_up_rate']:.0%}",
        "",
        "",
        "",
        "-",
        "",
        "",
        _nll(base_nll, None),
        "",
    ]
    lines.append(" ".join(_cell(v, w) for v, (_, w) in zip(base, COLUMNS, strict=True)))
    for row in result["rounds"]:
        gate = row.get("gate") or {}
        adapter = row.get("adapter_version") or "-"
        if row.get("run_status") not in (None, "succeeded"):
            adapter = (
                f"{adapter} {row['run_status'][:4]}" if row.get("adapter_version") else row["run_status"]
            )
        cells = [
            row["round"],
            f"{row['held_out_up_rate']:.0%}",
            f"{row['up_votes']}/{row['votes']}",
            row["corrections"],
            row["regenerations"],
            adapter,
            _number(gate.get("pref_accuracy"), "{:.2f}"),
            _number(gate.get("reward_margin"), "{:.2f}"),
            _nll(gate.get("general_nll"), base_nll),
            _number(row.get("train_seconds"), "{:.0f}"),
        ]
        lines.append(" ".join(_cell(v, w) for v, (_, w) in zip(cells, COLUMNS, strict=True)))
    return "\n".join(lines)


def _number(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _nll(value: float | None, base: float | None) -> str:
    if value is None:
        return "-"
    if base:
        return f"{value:.3f} ({value / base - 1:+.0%})"
    return f"{value:.3f}"


def plot(result: dict[str, Any], path: Path) -> Path:
    """A PNG of the held-out 👍-rate from the base model (round 0) through every round."""
    rounds = [0] + [row["round"] for row in result["rounds"]]
    rates = [result["base_held_out_up_rate"]] + [row["held_out_up_rate"] for row in result["rounds"]]
    figure = Figure(figsize=(7, 4), dpi=100, layout="constrained")  # Agg, no pyplot: no display needed
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.plot(rounds, [100 * rate for rate in rates], marker="o")
    for x, rate, row in zip(rounds[1:], rates[1:], result["rounds"], strict=True):
        axes.annotate(row.get("adapter_version") or row.get("run_status") or "", (x, 100 * rate), fontsize=8)
    axes.set_xticks(rounds, ["base"] + [str(r) for r in rounds[1:]])
    axes.set_ylim(0, 105)
    axes.set_xlabel("round (feedback, then /retrain)")
    axes.set_ylabel("held-out up-vote rate (%)")
    axes.set_title(f"Judge: {result.get('judge', '?')}")
    axes.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
