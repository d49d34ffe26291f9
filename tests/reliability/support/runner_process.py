"""A trainer process for the fault tests: the real `run_cycle` for one claimed run, in its own process.

    python -m tests.reliability.support.runner_process SETTINGS_JSON RUN_ID
        [--die-at before-rename|after-rename]

Its own process, so a test can run it with a full or read-only filesystem mounted for it alone, or watch
it die. With --die-at it SIGKILLs itself (no cleanup, no rollback, no finally) at the registry's one rename
of the staged folder into `adapters_dir`: just before the rename, or just after it, before the row's
commit. Only this throwaway process has its `os.replace` wrapped; the code under test is unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

from store.db import make_engine
from store.settings import load_settings
from trainer.runner import run_cycle


def die_at_the_rename(adapters_dir: Path, when: str) -> None:
    """Make this process SIGKILL itself when the registry moves a staged adapter into `adapters_dir`."""
    replace = os.replace

    def replace_and_die(source: str | os.PathLike, destination: str | os.PathLike) -> None:
        if Path(destination).parent != adapters_dir:  # not the registry's move
            return replace(source, destination)
        if when == "after-rename":
            replace(source, destination)
        os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace_and_die  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("settings", type=Path, help="Settings as JSON (Settings.model_dump_json()).")
    parser.add_argument("run_id", type=int, help="The claimed TrainingRun to run.")
    parser.add_argument("--die-at", choices=["before-rename", "after-rename"], default=None)
    args = parser.parse_args()
    settings = load_settings(env_file=None, **json.loads(args.settings.read_text()))
    if args.die_at is not None:
        die_at_the_rename(settings.adapters_dir, args.die_at)
    run = run_cycle(settings=settings, database=make_engine(settings.database_url), run_id=args.run_id)
    print(f"run {args.run_id}: {run.status if run else None}", flush=True)


if __name__ == "__main__":
    main()
