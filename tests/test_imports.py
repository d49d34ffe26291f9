"""The dependency direction of DESIGN.md, checked on the source and on what importing really loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "store": {
        "torch",
        "transformers",
        "peft",
        "trl",
        "discord",
        "engine",
        "bot",
        "trainer",
        "sim",
        "gradschool",
    },
    "engine": {"discord", "bot", "trainer", "sim", "gradschool"},
    "bot": {"trainer", "sim", "gradschool"},
    "trainer": {"bot", "discord", "sim", "gradschool"},
}


def imported_roots(path: Path) -> set[str]:
    """Top-level module names a file imports, anywhere in it (function-level imports count too)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_follow_the_design(package: str) -> None:
    offences = [
        f"{path.relative_to(ROOT)} imports {sorted(imported_roots(path) & FORBIDDEN[package])}"
        for path in sorted((ROOT / package).rglob("*.py"))
        if imported_roots(path) & FORBIDDEN[package]
    ]
    assert not offences, "\n".join(offences)


def test_tests_import_helpers_only_from_fixtures_and_support() -> None:
    """Shared test code lives in tests/fixtures and tests/reliability/support, not in tests or conftests."""
    offences = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            last = [name.split(".")[-1] for name in names if name.split(".")[0] == "tests"]
            if any(part.startswith("test_") or part == "conftest" for part in last):
                offences.append(f"{path.relative_to(ROOT)} imports {names[0]}")
    assert not offences, "\n".join(offences)


def test_importing_the_store_loads_no_ml_or_discord_library() -> None:
    code = (
        "import sys, store, store.settings, store.models, store.db, store.crud, store.runs, store.registry\n"
        "heavy = sorted({'torch', 'transformers', 'peft', 'trl', 'discord'} & set(sys.modules))\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "", f"store pulled in: {result.stdout.strip()}"


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    offender = tmp_path / "bad.py"
    offender.write_text("def f():\n    from trainer.job import run\n    import torch.nn\n")
    assert {"trainer", "torch"} <= imported_roots(offender)
