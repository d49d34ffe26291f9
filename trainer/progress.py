"""A TrainerCallback that writes step, total, loss and a heartbeat to the run's TrainingRun row."""

from __future__ import annotations

from sqlalchemy import Engine as Database
from sqlmodel import Session
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from store import runs


class RunProgress(TrainerCallback):
    """Reports progress every `every` steps from the main process; a run failed meanwhile stops training."""

    def __init__(
        self, *, database: Database | None, run_id: int | None, every: int, planned_total: int
    ) -> None:
        self.database, self.run_id, self.every = database, run_id, every
        self.offset = 0  # steps of the stages before this one
        self.planned_total = planned_total  # updated with each stage's real step count
        self.loss: float | None = None

    def next_stage(self, finished_steps: int, planned_rest: int) -> None:
        """Count the finished stage's steps and re-plan what remains."""
        self.offset += finished_steps
        self.planned_total = self.offset + planned_rest

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        logs = kwargs.get("logs") or {}
        if "loss" in logs:
            self.loss = float(logs["loss"])

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        if state.global_step % self.every == 0:
            self._write(state)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        self._write(state)

    def _write(self, state: TrainerState) -> None:
        if self.database is None or self.run_id is None or not state.is_world_process_zero:
            return
        with Session(self.database) as session:
            # raises once the run is no longer running (failed as stale, say): training for it is pointless
            runs.update_run_progress(
                session=session,
                run_id=self.run_id,
                step=self.offset + state.global_step,
                total_steps=max(self.planned_total, self.offset + state.max_steps),
                loss=self.loss,
            )
