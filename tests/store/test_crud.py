"""Messages, generations, votes, corrections and training runs, on real SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, func, select

from store import crud, runs
from store.models import Feedback, Generation, Message

GUILD, CHANNEL, ASKER, BOT = 10**17 + 1, 10**17 + 2, 10**17 + 3, 10**17 + 4  # real snowflakes exceed 2**31


def ask(session: Session, discord_id: int = 900, user_id: int = ASKER) -> Generation:
    message = crud.record_message(
        session=session,
        discord_id=discord_id,
        guild_id=GUILD,
        channel_id=CHANNEL,
        author_id=user_id,
        author_name="ada",
        role="user",
        content="What is the capital of France?",
    )
    return crud.record_generation(
        session=session,
        prompt=[{"role": "user", "content": message.content}],
        completion="Paris.",
        request_message_id=message.id,
        user_id=user_id,
        guild_id=GUILD,
        channel_id=CHANNEL,
        sampling={"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "seed": 1},
        prompt_tokens=12,
        completion_tokens=3,
        latency_ms=41.5,
    )


def count(session: Session, model: type[Message] | type[Feedback]) -> int:
    return session.exec(select(func.count()).select_from(model)).one()


def test_a_discord_message_is_recorded_once(session: Session) -> None:
    first = crud.record_message(session=session, discord_id=2**62, role="user", content="hi", author_id=ASKER)
    again = crud.record_message(session=session, discord_id=2**62, role="user", content="hi (edited)")

    assert again.id == first.id
    assert again.content == "hi"
    assert count(session, Message) == 1
    assert first.created_at.tzinfo is not None and first.created_at.utcoffset() == timedelta(0)


def test_messages_without_a_discord_id_are_all_kept(session: Session) -> None:
    for _ in range(2):
        crud.record_message(session=session, role="user", content="from the CLI", author_name="cli")
    assert count(session, Message) == 2


def test_a_message_needs_a_known_role(session: Session) -> None:
    with pytest.raises(ValueError, match="role"):
        crud.record_message(session=session, role="system", content="x")  # type: ignore[arg-type]


def test_a_generation_keeps_its_prompt_and_settings(session: Session) -> None:
    generation = ask(session)
    session.expire_all()
    stored = session.get(Generation, generation.id)

    assert stored is not None
    assert stored.prompt == [{"role": "user", "content": "What is the capital of France?"}]
    assert stored.sampling["seed"] == 1
    assert stored.adapter_version is None
    assert stored.scope == "global"
    assert stored.created_at.tzinfo == UTC


def test_every_part_of_a_split_answer_finds_its_generation(session: Session) -> None:
    generation = ask(session)
    assert generation.id is not None
    crud.attach_discord_messages(
        session=session,
        generation_id=generation.id,
        discord_ids=[5001, 5002],
        contents=["Par", "is."],
        author_id=BOT,
        author_name="gradschool",
    )
    # Attaching again (a retried send) adds nothing twice.
    updated = crud.attach_discord_messages(
        session=session, generation_id=generation.id, discord_ids=[5002, 5003], contents=["is.", "!"]
    )

    assert updated.discord_message_ids == [5001, 5002, 5003]
    for discord_id in (5001, 5002, 5003):
        found = crud.generation_for_discord_message(session=session, discord_id=discord_id)
        assert found is not None and found.id == generation.id
    assert crud.generation_for_discord_message(session=session, discord_id=900) is None  # the question
    assert crud.generation_for_discord_message(session=session, discord_id=404) is None
    bot_messages = session.exec(select(Message).where(Message.generation_id == generation.id)).all()
    assert sorted(m.discord_id or 0 for m in bot_messages) == [5001, 5002, 5003]
    assert {m.role for m in bot_messages} == {"assistant"}
    assert {m.channel_id for m in bot_messages} == {CHANNEL}


def test_a_regeneration_points_at_the_answer_it_replaces(session: Session) -> None:
    first = ask(session)
    second = crud.record_generation(
        session=session, prompt=first.prompt, completion="It is Paris.", regenerates=first.id, user_id=ASKER
    )
    assert second.regenerates == first.id


def live_votes(session: Session, generation_id: int | None) -> list[tuple[int, int]]:
    rows = session.exec(
        select(Feedback).where(Feedback.generation_id == generation_id, Feedback.removed_at == None)  # noqa: E711
    ).all()
    return sorted((row.rater_id, row.value) for row in rows)


def test_one_live_vote_per_rater(session: Session) -> None:
    generation_id = ask(session).id
    assert generation_id is not None
    vote = crud.record_feedback(session=session, generation_id=generation_id, rater_id=1, value=1)
    voted_at = vote.updated_at  # the session hands back one object per row: keep the value, not the row
    same = crud.record_feedback(session=session, generation_id=generation_id, rater_id=1, value=1)
    assert same.id == vote.id and same.updated_at == voted_at  # voting the same again is a no-op
    crud.record_feedback(session=session, generation_id=generation_id, rater_id=2, value=-1)
    assert live_votes(session, generation_id) == [(1, 1), (2, -1)]

    changed = crud.record_feedback(session=session, generation_id=generation_id, rater_id=1, value=-1)
    assert changed.id == vote.id and changed.updated_at > voted_at
    assert live_votes(session, generation_id) == [(1, -1), (2, -1)]
    assert count(session, Feedback) == 2


def test_retract_and_revive_a_vote(session: Session) -> None:
    generation_id = ask(session).id
    assert generation_id is not None
    crud.record_feedback(session=session, generation_id=generation_id, rater_id=1, value=1)

    retracted = crud.retract_feedback(session=session, generation_id=generation_id, rater_id=1)
    assert retracted is not None and retracted.removed_at is not None
    assert live_votes(session, generation_id) == []
    assert crud.retract_feedback(session=session, generation_id=generation_id, rater_id=1) is None

    revived = crud.record_feedback(session=session, generation_id=generation_id, rater_id=1, value=1)
    assert revived.id == retracted.id and revived.removed_at is None
    assert live_votes(session, generation_id) == [(1, 1)]


def test_removing_a_stale_reaction_keeps_the_new_vote(session: Session) -> None:
    generation_id = ask(session).id
    assert generation_id is not None
    crud.record_feedback(session=session, generation_id=generation_id, rater_id=1, value=1)
    crud.record_feedback(session=session, generation_id=generation_id, rater_id=1, value=-1)  # 👍 → 👎

    # Discord then reports the 👍 reaction removed: the 👎 must stay.
    assert crud.retract_feedback(session=session, generation_id=generation_id, rater_id=1, value=1) is None
    assert live_votes(session, generation_id) == [(1, -1)]
    assert (
        crud.retract_feedback(session=session, generation_id=generation_id, rater_id=1, value=-1) is not None
    )
    assert live_votes(session, generation_id) == []


@pytest.mark.parametrize("value", [0, 2, -2])
def test_a_vote_is_plus_or_minus_one(session: Session, value: int) -> None:
    generation_id = ask(session).id
    assert generation_id is not None
    with pytest.raises(ValueError, match="vote"):
        crud.record_feedback(session=session, generation_id=generation_id, rater_id=1, value=value)
    # The database refuses it too, should anything bypass the function.
    session.add(Feedback(generation_id=generation_id, rater_id=1, value=value))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()


def test_a_vote_on_an_unknown_generation_fails_loudly(session: Session) -> None:
    with pytest.raises(IntegrityError):
        crud.record_feedback(session=session, generation_id=12345, rater_id=1, value=1)
    assert count(session, Feedback) == 0  # and the session is usable afterwards


def test_count_votes_since(session: Session) -> None:
    generation_id = ask(session).id
    assert generation_id is not None
    early = crud.record_feedback(session=session, generation_id=generation_id, rater_id=1, value=1)
    crud.record_feedback(session=session, generation_id=generation_id, rater_id=2, value=1)
    crud.record_feedback(session=session, generation_id=generation_id, rater_id=3, value=-1)
    crud.retract_feedback(session=session, generation_id=generation_id, rater_id=3)

    assert crud.count_votes_since(session=session, since=None) == 2
    assert crud.count_votes_since(session=session, since=early.updated_at) == 1
    assert crud.count_votes_since(session=session, since=None, scope="guild:1") == 0


def test_a_correction_is_recorded_once_per_interaction(session: Session) -> None:
    generation_id = ask(session).id
    assert generation_id is not None
    first = crud.record_correction(
        session=session,
        generation_id=generation_id,
        author_id=7,
        content="Paris, on the Seine.",
        discord_interaction_id=2**60,
    )
    again = crud.record_correction(
        session=session,
        generation_id=generation_id,
        author_id=7,
        content="Paris, on the Seine.",
        discord_interaction_id=2**60,
    )
    assert again.id == first.id
    assert crud.store_counts(session=session)["corrections"] == 1


def test_store_counts(session: Session) -> None:
    generation_id = ask(session).id
    assert generation_id is not None
    crud.record_feedback(session=session, generation_id=generation_id, rater_id=1, value=1)
    crud.record_feedback(session=session, generation_id=generation_id, rater_id=2, value=1)
    crud.retract_feedback(session=session, generation_id=generation_id, rater_id=2)
    runs.queue_training_run(session=session, reason="admin")

    assert crud.store_counts(session=session) == {
        "messages": 1,
        "generations": 1,
        "votes": 1,
        "corrections": 0,
        "runs": 1,
        "adapters": 0,
    }


def test_a_training_run_goes_from_queued_to_finished(session: Session) -> None:
    run = runs.queue_training_run(
        session=session, reason="admin", requested_by=ASKER, notify_channel_id=CHANNEL, notify_message_id=77
    )
    # Asking again while one waits returns the waiting run.
    assert runs.queue_training_run(session=session, reason="threshold").id == run.id
    assert run.status == "queued" and run.notify_message_id == 77

    claimed = runs.claim_next_run(session=session)
    assert claimed is not None and claimed.id == run.id and claimed.status == "running"
    assert claimed.started_at is not None and claimed.heartbeat_at is not None
    claimed_at = claimed.heartbeat_at
    assert runs.claim_next_run(session=session) is None

    assert run.id is not None
    progressed = runs.update_run_progress(session=session, run_id=run.id, step=3, total_steps=10, loss=1.25)
    assert (progressed.step, progressed.total_steps, progressed.loss) == (3, 10, 1.25)
    assert progressed.heartbeat_at is not None and progressed.heartbeat_at > claimed_at

    done = runs.finish_run(session=session, run_id=run.id, status="succeeded", adapter_version="v1")
    assert done.status == "succeeded" and done.adapter_version == "v1" and done.finished_at is not None
    with pytest.raises(ValueError, match="already finished"):
        runs.finish_run(session=session, run_id=run.id, status="failed")
    with pytest.raises(ValueError, match="not running"):
        runs.update_run_progress(session=session, run_id=run.id, step=4, total_steps=10, loss=1.0)

    latest = runs.latest_run(session=session)
    assert latest is not None and latest.id == run.id
    assert runs.latest_run(session=session, status="failed") is None
    assert runs.queue_training_run(session=session, reason="schedule").id != run.id


def test_runs_are_claimed_oldest_first_per_scope(session: Session) -> None:
    first = runs.queue_training_run(session=session, reason="schedule")
    other_scope = runs.queue_training_run(session=session, reason="admin", scope="guild:1")
    claimed = runs.claim_next_run(session=session)
    assert claimed is not None and claimed.id == first.id
    assert runs.claim_next_run(session=session) is None
    in_guild = runs.claim_next_run(session=session, scope="guild:1")
    assert in_guild is not None and in_guild.id == other_scope.id


def test_run_arguments_are_checked(session: Session) -> None:
    with pytest.raises(ValueError, match="reason"):
        runs.queue_training_run(session=session, reason="whim")  # type: ignore[arg-type]
    run_id = runs.queue_training_run(session=session, reason="admin").id
    assert run_id is not None
    with pytest.raises(ValueError, match="finishes as"):
        runs.finish_run(session=session, run_id=run_id, status="running")
    with pytest.raises(LookupError):
        runs.update_run_progress(session=session, run_id=run_id + 100, step=1, total_steps=2, loss=None)


def test_a_silent_trainer_fails_its_run(session: Session) -> None:
    runs.queue_training_run(session=session, reason="admin")
    run = runs.claim_next_run(session=session)
    assert run is not None

    assert runs.fail_stale_runs(session=session, stale_after=timedelta(minutes=5)) == []
    stale = runs.fail_stale_runs(session=session, stale_after=timedelta(0))
    assert [r.id for r in stale] == [run.id]
    assert stale[0].status == "failed" and "no heartbeat" in (stale[0].error or "")
