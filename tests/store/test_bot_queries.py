"""The store queries the bot's /status, /stats and progress messages rely on."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session

from store import crud, runs
from store.models import Feedback, utcnow


def _generation(session: Session, adapter: str | None) -> int:
    generation = crud.record_generation(
        session=session, prompt=[{"role": "user", "content": "q"}], completion="a", adapter_version=adapter
    )
    assert generation.id is not None
    return generation.id


def test_votes_by_adapter_counts_live_votes_per_version(session: Session) -> None:
    base, v1 = _generation(session, None), _generation(session, "v1")
    crud.record_feedback(session=session, generation_id=base, rater_id=1, value=1)
    crud.record_feedback(session=session, generation_id=v1, rater_id=1, value=1)
    crud.record_feedback(session=session, generation_id=v1, rater_id=2, value=-1)
    crud.record_feedback(session=session, generation_id=v1, rater_id=3, value=1)
    crud.retract_feedback(session=session, generation_id=v1, rater_id=3)

    assert crud.votes_by_adapter(session=session) == {None: (1, 0), "v1": (1, 1)}
    assert crud.votes_by_adapter(session=session, scope="guild-9") == {}


def test_votes_by_adapter_since_counts_only_later_answers(session: Session) -> None:
    earlier = _generation(session, "v1")
    crud.record_feedback(session=session, generation_id=earlier, rater_id=1, value=-1)
    canary_start = utcnow()
    later = _generation(session, "v1")
    crud.record_feedback(session=session, generation_id=later, rater_id=1, value=1)

    assert crud.votes_by_adapter(session=session) == {"v1": (1, 1)}
    assert crud.votes_by_adapter(session=session, since=canary_start) == {"v1": (1, 0)}


def test_daily_votes_by_adapter_groups_by_utc_day(session: Session) -> None:
    v1, v2 = _generation(session, "v1"), _generation(session, "v2")
    old = crud.record_feedback(session=session, generation_id=v1, rater_id=1, value=1)
    crud.record_feedback(session=session, generation_id=v1, rater_id=2, value=-1)
    crud.record_feedback(session=session, generation_id=v2, rater_id=1, value=1)
    yesterday = utcnow() - timedelta(days=1)
    row = session.get(Feedback, old.id)
    assert row is not None
    row.created_at = yesterday
    session.commit()

    days = crud.daily_votes_by_adapter(session=session)

    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    assert days == [
        (yesterday.replace(hour=0, minute=0, second=0, microsecond=0), "v1", 1, 0),
        (today, "v1", 0, 1),
        (today, "v2", 1, 0),
    ]


def test_runs_awaiting_notice_have_a_progress_message_and_no_result_posted(session: Session) -> None:
    silent = runs.queue_training_run(session=session, reason="schedule")
    runs.finish_run(session=session, run_id=silent.id, status="skipped")
    watched = runs.queue_training_run(
        session=session, reason="admin", notify_channel_id=5, notify_message_id=6
    )
    assert [r.id for r in runs.runs_awaiting_notice(session=session)] == [watched.id]
    runs.claim_next_run(session=session)
    assert [r.id for r in runs.runs_awaiting_notice(session=session)] == [watched.id]
    runs.finish_run(session=session, run_id=watched.id, status="failed", error="boom")
    assert [r.id for r in runs.runs_awaiting_notice(session=session)] == [watched.id]  # ended unannounced
    runs.mark_notified(session=session, run_id=watched.id)
    assert runs.runs_awaiting_notice(session=session) == []
