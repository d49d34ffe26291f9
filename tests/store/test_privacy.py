"""Opting out and being forgotten."""

from __future__ import annotations

import json

from sqlmodel import Session, select

from store import communities, crud
from store.datasets import KINDS, build_datasets
from store.models import Correction, Feedback, Generation, Message, UserPrefs
from store.scopes import GLOBAL, guild_scope
from store.settings import TrainSettings

ADA, BOB, BOT = 101, 202, 999


def conversation(session: Session, user_id: int, discord_id: int, scope: str = GLOBAL) -> int:
    """`user_id` asks, the bot answers in one Discord message (in `scope`); returns the generation id."""
    question = crud.record_message(
        session=session,
        discord_id=discord_id,
        author_id=user_id,
        role="user",
        content=f"question of {user_id}",
    )
    generation = crud.record_generation(
        session=session,
        prompt=[{"role": "user", "content": question.content}],
        completion=f"answer for {user_id}",
        request_message_id=question.id,
        user_id=user_id,
        scope=scope,
    )
    assert generation.id is not None
    crud.attach_discord_messages(
        session=session, generation_id=generation.id, discord_ids=[discord_id + 1], contents=["answer"]
    )
    return generation.id


def test_opting_out_and_back_in(session: Session) -> None:
    assert not crud.is_excluded(session=session, user_id=ADA)

    prefs = crud.set_opt_out(session=session, user_id=ADA, opted_out=True)
    assert prefs.opted_out and prefs.opted_out_at is not None
    assert crud.set_opt_out(session=session, user_id=ADA, opted_out=True).opted_out_at == prefs.opted_out_at
    assert crud.is_excluded(session=session, user_id=ADA)
    assert crud.excluded_user_ids(session=session) == {ADA}

    prefs = crud.set_opt_out(session=session, user_id=ADA, opted_out=False)
    assert not prefs.opted_out and prefs.opted_out_at is None
    assert not crud.is_excluded(session=session, user_id=ADA)
    assert crud.excluded_user_ids(session=session) == set()


def test_forgetting_deletes_a_persons_data_and_nobody_elses(session: Session) -> None:
    ada_asked = conversation(session, ADA, 1000)
    bob_asked = conversation(session, BOB, 2000)
    # Ada votes on and corrects Bob's answer; Bob votes on and corrects Ada's, and asks for another one.
    crud.record_feedback(session=session, generation_id=bob_asked, rater_id=ADA, value=1)
    crud.record_feedback(session=session, generation_id=ada_asked, rater_id=BOB, value=-1)
    crud.record_feedback(session=session, generation_id=bob_asked, rater_id=BOB, value=1)
    crud.record_correction(session=session, generation_id=bob_asked, author_id=ADA, content="better")
    crud.record_correction(session=session, generation_id=ada_asked, author_id=BOB, content="also better")
    regenerated = crud.record_generation(
        session=session,
        prompt=[{"role": "user", "content": "x"}],
        completion="y",
        user_id=BOB,
        regenerates=ada_asked,
    )

    deleted = crud.forget_user(session=session, user_id=ADA)

    assert deleted == {"messages": 2, "generations": 1, "votes": 2, "corrections": 2, "passages": 0}
    assert session.exec(select(Message).where(Message.author_id == ADA)).all() == []
    assert session.get(Generation, ada_asked) is None
    assert crud.generation_for_discord_message(session=session, discord_id=1001) is None
    assert crud.generation_for_discord_message(session=session, discord_id=2001) is not None
    assert [(v.rater_id, v.generation_id) for v in session.exec(select(Feedback)).all()] == [(BOB, bob_asked)]
    assert session.exec(select(Correction)).all() == []
    kept = session.get(Generation, regenerated.id)
    assert kept is not None and kept.regenerates is None
    assert {m.discord_id for m in session.exec(select(Message)).all()} == {2000, 2001}

    prefs = session.get(UserPrefs, ADA)
    assert prefs is not None and prefs.forgotten_at is not None
    assert crud.is_excluded(session=session, user_id=ADA)  # forgetting also opts out of future training
    assert not crud.is_excluded(session=session, user_id=BOB)


def test_forgetting_someone_unknown_just_records_it(session: Session) -> None:
    assert crud.forget_user(session=session, user_id=ADA) == {
        "messages": 0,
        "generations": 0,
        "votes": 0,
        "corrections": 0,
        "passages": 0,
    }
    assert crud.is_excluded(session=session, user_id=ADA)


def test_forgetting_reaches_every_scope_and_every_dataset(session: Session) -> None:
    first, second = guild_scope(10**17 + 1), guild_scope(10**17 + 2)
    communities.set_share_data(session=session, scope=first, share=True, by=BOB)  # also in the global pool
    everything = TrainSettings(holdout_fraction=0.0, max_rater_share=1.0)  # type: ignore[call-arg]
    for scope, discord_id in ((first, 1000), (second, 3000)):
        ada_asked = conversation(session, ADA, discord_id, scope)
        bob_asked = conversation(session, BOB, 2 * discord_id, scope)
        crud.record_feedback(session=session, generation_id=ada_asked, rater_id=BOB, value=1)
        crud.record_feedback(session=session, generation_id=bob_asked, rater_id=ADA, value=1)
        crud.record_feedback(session=session, generation_id=bob_asked, rater_id=BOB, value=1)

    def datasets() -> dict[str, str]:
        built = {
            scope: build_datasets(session=session, settings=everything, scope=scope)
            for scope in (first, second, GLOBAL)
        }
        return {scope: json.dumps([d.train[k] + d.holdout[k] for k in KINDS]) for scope, d in built.items()}

    before = datasets()
    assert all(f"question of {ADA}" in text and f"question of {BOB}" in text for text in before.values())

    crud.forget_user(session=session, user_id=ADA)

    assert session.exec(select(Generation).where(Generation.user_id == ADA)).all() == []
    assert session.exec(select(Feedback).where(Feedback.rater_id == ADA)).all() == []
    assert {g.scope for g in session.exec(select(Generation))} == {first, second}  # Bob's stay, in both
    after = datasets()
    assert not any(str(ADA) in text for text in after.values())  # neither Ada's question nor her answer
    assert all(f"question of {BOB}" in text for text in after.values())  # liked by Bob alone now
