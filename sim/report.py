"""What a simulation shows: the table per round and the plot of the held-out 👍-rate by round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLUMNS = (
    ("round", 5),
    ("held-out 👍", 14),
    ("votes", 9),
    ("fixes", 5),
    ("🔁", 3),
    ("adapter", 12),
    ("pref acc", 8),
    ("margin", 7),
    ("vote AUC", 8),
    ("general NLL", 14),
    ("train s", 7),
)


def _cell(value: Any, width: int) -> str:
    return str(value).rjust(width)


CROSS_COLUMN = ("other tastes 👍", 15)  # several communities: the answers graded by the others' judges


def table(result: dict[str, Any]) -> str:
    """A fixed-width table: the base model's line, then one line per round."""
    cross = "base_cross_up_rate" in result
    columns = COLUMNS + ((CROSS_COLUMN,) if cross else ())
    header = " ".join(name.rjust(width) for name, width in columns)
    base_nll = result.get("base_general_nll")
    lines = [header, "-" * len(header)]
    base = [
        "base",
        _rate(result, "base_held_out_up_rate"),
        "",
        "",
        "",
        "-",
        "",
        "",
        "",
        _nll(base_nll, None),
        "",
    ] + ([_rate(result, "base_cross_up_rate")] if cross else [])
    lines.append(" ".join(_cell(v, w) for v, (_, w) in zip(base, columns, strict=True)))
    for row in result["rounds"]:
        gate = row.get("gate") or {}
        adapter = row.get("adapter_version") or "-"
        if row.get("adapter_status") == "candidate":  # too little held-out evidence: live votes settle it
            adapter = f"{adapter} canary"
        if row.get("run_status") not in (None, "succeeded"):
            adapter = (
                f"{adapter} {row['run_status'][:4]}" if row.get("adapter_version") else row["run_status"]
            )
        cells = [
            row["round"],
            _rate(row, "held_out_up_rate"),
            f"{_count(row['up_votes'])}/{_count(row['votes'])}",
            _count(row["corrections"]),
            _count(row["regenerations"]),
            adapter,
            _number(gate.get("pref_accuracy"), "{:.2f}"),
            _number(gate.get("reward_margin"), "{:.2f}"),
            _number(gate.get("vote_auc"), "{:.2f}"),
            _nll(gate.get("general_nll"), base_nll),
            _number(row.get("train_seconds"), "{:.0f}"),
        ] + ([_rate(row, "cross_up_rate")] if cross else [])
        lines.append(" ".join(_cell(v, w) for v, (_, w) in zip(cells, columns, strict=True)))
    return "\n".join(lines)


def _rate(row: dict[str, Any], key: str) -> str:
    """A 👍-rate; over several seeds, the mean and the min-max."""
    if f"{key}_min" not in row:
        return f"{row[key]:.0%}"
    return f"{row[key]:.0%} ({row[f'{key}_min']:.0%}-{row[f'{key}_max']:.0%})".replace("%-", "-", 1)


def _count(value: float | None) -> str:
    """A count, or over several seeds its mean."""
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) or float(value).is_integer() else f"{value:.1f}"


def _number(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _nll(value: float | None, base: float | None) -> str:
    if value is None:
        return "-"
    if base:
        return f"{value:.3f} ({value / base - 1:+.0%})"
    return f"{value:.3f}"


def plot(result: dict[str, Any], path: Path) -> Path:
    """A PNG of the held-out 👍-rate from the base model (round 0) through every round (one line per
    community when there are several, beside their mean)."""
    rounds = [0] + [row["round"] for row in result["rounds"]]
    rates = [result["base_held_out_up_rate"]] + [row["held_out_up_rate"] for row in result["rounds"]]
    figure = Figure(figsize=(7, 4), dpi=100, layout="constrained")  # Agg, no pyplot: no display needed
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    communities = result.get("communities") or []
    axes.plot(rounds, [100 * rate for rate in rates], marker="o", label="mean" if communities else None)
    for community in communities:
        own = [community["base_held_out_up_rate"]] + [row["held_out_up_rate"] for row in community["rounds"]]
        axes.plot(rounds[: len(own)], [100 * rate for rate in own], marker=".", linestyle="--",
                  label=f"{community.get('guild', '?')} ({community.get('judge', '?')})")  # fmt: skip
    if communities:
        axes.legend(fontsize=8)
    if "base_held_out_up_rate_min" in result:  # several seeds: the band from the worst to the best
        low = [result["base_held_out_up_rate_min"]] + [
            row["held_out_up_rate_min"] for row in result["rounds"]
        ]
        high = [result["base_held_out_up_rate_max"]] + [
            row["held_out_up_rate_max"] for row in result["rounds"]
        ]
        axes.fill_between(rounds, [100 * v for v in low], [100 * v for v in high], alpha=0.2)
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


LADDER_RUNGS = ("base", "instructions", "knowledge", "finetune")
LADDER_NAMES = {
    "base": "base model",
    "instructions": "+ instructions",
    "knowledge": "+ open book (after round 1)",
    "finetune": "+ fine-tuned adapter (last round)",
}


def ladder_table(result: dict[str, Any]) -> str:
    """The held-out 👍-rate on each rung of the ladder (with the range over seeds, when there are several)."""
    spread = result.get("ladder_range", {})
    lines = ["rung                                 held-out 👍-rate"]
    for rung in LADDER_RUNGS:
        if rung in result["ladder"]:
            low_high = spread.get(rung)
            extra = f"  ({low_high[0]:.0%}-{low_high[1]:.0%})" if low_high else ""
            lines.append(f"{LADDER_NAMES[rung]:<36} {result['ladder'][rung]:>5.0%}{extra}")
    return "\n".join(lines)


def combine_seeds(results: list[dict[str, Any]], *, kept: str | None = "seeds") -> dict[str, Any]:
    """One result from several seeds' results: per round the mean (and min-max) of the rates, each seed kept.

    `base_held_out_up_rate` and `rounds[]` hold means, as one seed's result holds its own figures, so
    anything that reads a result reads this one too; `seeds` (`kept`) holds every seed's own result. With
    several communities each seed's result has `communities`: the combined one has them too, each
    community's figures combined over the seeds. The same mean serves over the communities of one run
    (`kept="communities"`).
    """
    first = results[0]
    combined: dict[str, Any] = {
        key: first[key]
        for key in ("judge", "corrector", "guild", "train_prompts", "heldout_prompts")
        if key in first
    }
    if all("ladder" in r for r in results):
        rungs = [rung for rung in LADDER_RUNGS if all(rung in r["ladder"] for r in results)]
        combined["ladder"] = {rung: _mean([r["ladder"][rung] for r in results]) for rung in rungs}
        combined["ladder_range"] = {
            rung: [min(r["ladder"][rung] for r in results), max(r["ladder"][rung] for r in results)]
            for rung in rungs
        }
    for key in ("base_held_out_up_rate", "base_dev_up_rate", "base_cross_up_rate"):
        if all(key in r for r in results):
            combined |= _spread([r[key] for r in results], key)
    combined["base_general_nll"] = _mean([r.get("base_general_nll") for r in results])
    combined["rounds"] = []
    for number in range(min(len(r["rounds"]) for r in results)):
        rows = [r["rounds"][number] for r in results]
        row: dict[str, Any] = {"round": number + 1}
        for key in ("held_out_up_rate", "dev_up_rate", "cross_up_rate", "book_up_rate", "book_dev_up_rate"):
            if all(key in one for one in rows):
                row |= _spread([one[key] for one in rows], key)
        for key in ("votes", "up_votes", "down_votes", "corrections", "regenerations", "train_seconds"):
            row[key] = _mean([one.get(key) for one in rows])
        gates = [one.get("gate") or {} for one in rows]
        row["gate"] = {
            key: _mean([gate.get(key) for gate in gates])
            for key in ("pref_accuracy", "reward_margin", "vote_auc", "general_nll")
        }
        row["adapters_passed"] = sum(
            one.get("adapter_status") == "active" for one in rows
        )  # outright, no canary
        row["adapter_version"] = f"{row['adapters_passed']}/{len(rows)} passed"
        row["run_status"] = None
        combined["rounds"].append(row)
    if all("communities" in r for r in results):
        combined["communities"] = [
            combine_seeds([r["communities"][i] for r in results], kept=None)
            for i in range(min(len(r["communities"]) for r in results))
        ]
    if kept is not None:
        combined[kept] = results
    combined["seconds"] = round(sum(r.get("seconds", 0.0) for r in results), 1)
    return combined


def _spread(values: list[float], key: str) -> dict[str, Any]:
    return {key: sum(values) / len(values), f"{key}_min": min(values), f"{key}_max": max(values)}


def _mean(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float)]
    return sum(numbers) / len(numbers) if numbers else None
