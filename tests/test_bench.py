"""The benchmarks are code too: every script answers --help, and the soak's quick path runs on the tiny model.

Each runs as people run it, `python bench/NAME.py` in a process of its own (the scripts import their
siblings, e.g. bench/random_llama.py, as top-level modules).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SCRIPTS = sorted(path for path in BENCH.glob("*.py") if 'if __name__ == "__main__":' in path.read_text())
SIBLINGS = sorted(set(BENCH.glob("*.py")) - set(SCRIPTS))  # imported by the scripts, never run


def run(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_benchmark_file_is_a_script_or_a_sibling_they_import() -> None:
    assert SCRIPTS and {path.stem for path in SIBLINGS} == {"memory_growth", "random_llama"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_each_benchmark_prints_its_usage(script: Path) -> None:
    done = run(str(script.relative_to(ROOT)), "--help")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"usage: {script.name} ")


@pytest.mark.parametrize("sibling", SIBLINGS, ids=lambda path: path.name)
def test_each_sibling_module_imports(sibling: Path) -> None:
    done = run("-c", f"import {sibling.stem}", cwd=BENCH)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_short_soak_on_the_tiny_model_serves_everyone_and_finds_no_problem(tmp_path: Path) -> None:
    """bench/soak.py's quick path: a few people for 12 s on the tiny model, serving only (about 30 s)."""
    figures_file = tmp_path / "soak.json"
    done = run(
        "bench/soak.py",
        *("--model", "tiny", "--minutes", "0.2", "--users", "3", "--channels", "1", "--no-training"),
        *("--json", str(figures_file)),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    assert (figures["model"], figures["trainer"]) == ("tiny", "none")
    assert figures["answered"] > 0 and figures["questions_recorded"] == figures["questions_delivered"]
    assert figures["problems"] == [] and figures["log_errors"] == []
    assert f"answered {figures['answered']}," in done.stdout  # the printed summary
