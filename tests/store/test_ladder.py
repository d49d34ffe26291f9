"""Which rung answered and how it was voted, on real databases; the advice /ladder gives from it."""

from __future__ import annotations

from sqlmodel import Session

from store import crud
from store.ladder import RungRate, ladder_advice, rate_line, rung_of, rung_rates
from store.models import Generation
from store.scopes import guild_scope

HALL, OTHER = guild_scope(10**17 + 1), guild_scope(10**17 + 2)
ANA, BOB, CY = 1, 2, 3


def answer(
    session: Session,
    *,
    scope: str = HALL,
    adapter: str | None = None,
    instructions: str | None = None,
    passages: list[int] | None = None,
    error: str | None = None,
    votes: dict[int, int] | None = None,
) -> Generation:
    """One answer of the bot, and each rater's vote on it."""
    generation = crud.record_generation(
        session=session,
        prompt=[{"role": "user", "content": "when is study night?"}],
        completion="Thursdays.",
        scope=scope,
        adapter_version=adapter,
        instructions_version=instructions,
        passage_ids=passages,
        error=error,
    )
    assert generation.id is not None
    for rater, value in (votes or {}).items():
        crud.record_feedback(session=session, generation_id=generation.id, rater_id=rater, value=value)
    return generation


def test_the_highest_rung_in_play_is_the_rung_that_answered() -> None:
    prompt: list[dict[str, str]] = []
    assert rung_of(Generation(prompt=prompt, completion="")) == "base"
    assert rung_of(Generation(prompt=prompt, completion="", instructions_version="s1")) == "instructions"
    assert rung_of(Generation(prompt=prompt, completion="", passage_ids=[4])) == "knowledge"
    with_all = Generation(
        prompt=prompt, completion="", instructions_version="s1", passage_ids=[4], adapter_version="v2"
    )
    assert rung_of(with_all) == "finetune"


def test_rates_per_rung_and_version_count_live_votes_of_this_scope_only(session: Session) -> None:
    retracted = answer(session, votes={ANA: 1})
    crud.retract_feedback(session=session, generation_id=retracted.id, rater_id=ANA)  # type: ignore[arg-type]
    answer(session, votes={ANA: 1, BOB: -1})
    answer(session)  # no votes at all
    answer(session, instructions="s1", votes={ANA: 1, BOB: 1, CY: -1})
    answer(session, instructions="s2", votes={ANA: -1})
    answer(session, instructions="s2", passages=[7, 8], votes={ANA: 1, BOB: 1})
    answer(session, passages=[7], votes={CY: 1})  # the book without instructions
    answer(session, adapter="v1", votes={ANA: -1, BOB: -1})
    answer(session, adapter="v2", instructions="s2", passages=[7], votes={ANA: 1})
    answer(session, adapter="v2", votes={BOB: 1, CY: 1})
    # not counted: a failed answer, and another server's
    answer(session, error="engine went down", votes={ANA: -1, BOB: -1, CY: -1})
    answer(session, scope=OTHER, votes={ANA: -1, BOB: -1})
    answer(session, scope=OTHER, adapter="v2", votes={ANA: -1})

    rates = rung_rates(session=session, scope=HALL)

    assert [(r.rung, r.version, r.answers, r.up_votes, r.down_votes) for r in rates] == [
        ("base", None, 3, 1, 1),
        ("instructions", "s2", 1, 0, 1),  # the newest version first
        ("instructions", "s1", 1, 2, 1),
        ("knowledge", None, 1, 1, 0),
        ("knowledge", "s2", 1, 2, 0),
        ("finetune", "v2", 2, 3, 0),
        ("finetune", "v1", 1, 0, 2),
    ]
    assert [r.up_rate for r in rates] == [0.5, 0.0, 2 / 3, 1.0, 1.0, 1.0, 0.0]
    assert [rate_line(r) for r in rates[::3]] == [
        "base model, no instructions: 50% 👍 of 2 votes (3 answers)",
        "open book, no instructions: 100% 👍 of 1 vote (1 answer)",
        "adapter v1: 0% 👍 of 2 votes (1 answer)",
    ]
    assert rung_rates(session=session, scope=guild_scope(10**17 + 3)) == []


def test_only_the_latest_answers_count(session: Session) -> None:
    answer(session, votes={ANA: -1})
    answer(session, instructions="s1", votes={ANA: 1})
    answer(session, instructions="s1")

    rates = rung_rates(session=session, scope=HALL, limit=2)

    assert [(r.rung, r.answers, r.up_votes, r.down_votes) for r in rates] == [("instructions", 2, 1, 0)]
    assert rates[0].up_rate == 1.0


def rate(rung: str, version: str | None, up: int, down: int, answers: int | None = None) -> RungRate:
    return RungRate(rung, version, answers if answers is not None else up + down, up, down)  # type: ignore[arg-type]


def test_advice_names_each_rungs_rate_and_says_to_stay_where_the_adapter_wins() -> None:
    rates = [
        rate("instructions", "s2", 3, 5),
        rate("instructions", "s1", 1, 1),  # the rung's versions together: 4 of 10
        rate("knowledge", "s2", 11, 9),
        rate("finetune", "v3", 32, 8),
        rate("finetune", "v2", 1, 9),  # an older adapter: not the one answering now
    ]

    assert ladder_advice(rates) == (
        "Instructions alone got 40% 👍 (10 votes); with the open book 55% (20 votes); adapter v3 80% "
        "(40 votes). Adapter v3 beats the rungs below (80% against 55% for the open book); stay on this rung "
        "and keep voting."
    )


def test_advice_says_when_the_book_has_not_helped() -> None:
    advice = ladder_advice([rate("instructions", "s1", 12, 8), rate("knowledge", "s1", 10, 10)])

    assert advice.startswith("Instructions alone got 60% 👍 (20 votes); with the open book 50% (20 votes).")
    assert "Adding knowledge has not helped yet (50% against 60% for instructions alone)" in advice


def test_advice_claims_nothing_on_too_few_votes() -> None:
    top_short = ladder_advice([rate("instructions", "s1", 12, 8), rate("knowledge", "s1", 5, 0)])
    below_short = ladder_advice([rate("base", None, 2, 1), rate("instructions", "s1", 9, 3)])
    unvoted = ladder_advice([rate("base", None, 0, 0, answers=4)])

    assert "Too few votes on the open book (5, under 10)" in top_short and "helped" not in top_short
    assert below_short.endswith(
        "No rung below instructions alone has 10 votes to compare it with, so there is no telling whether it "
        "helps; stay on this rung for now."
    )
    assert unvoted.startswith("The base model alone: no votes yet (4 answers). Climb the first rung")
    assert ladder_advice([]) == "No answers yet, so there is nothing to compare."


def test_advice_says_when_the_instructions_help_and_what_to_climb_next() -> None:
    advice = ladder_advice([rate("base", None, 3, 7), rate("instructions", "s1", 7, 3)])

    assert advice == (
        "The base model alone got 30% 👍 (10 votes); instructions alone 70% (10 votes). The instructions "
        "help (70% against 30% for the base model alone); climb to the open book: /knowledge add or "
        "/knowledge pins."
    )
