"""Long-term memory per user in Chroma: add, search (relevance x importance x recency), prune.

One collection, `evolora-memories` (cosine space), holds every user's memories; each record's
metadata carries its `user_id`, and every read, search and delete filters on it, so one user
can never see or remove another's memories. Embeddings always come from our own embedder
(`agent.embeddings`): Chroma's default embedding function would download a model.

Embedded (`PersistentClient` at `memory.chroma_path`, default `<data_dir>/chroma`) for one
process; a Chroma server (`HttpClient`, `memory.chroma_url`) when several replicas share it.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agent.embeddings import Embedder, load_embedder
from evolora.settings import MemorySettings

COLLECTION_NAME = "evolora-memories"
MAX_MEMORY_CHARS = 2000
MAX_METADATA_ENTRIES = 16
# Recency halves every 30 days: last month's preference still counts, last year's barely.
RECENCY_HALF_LIFE_DAYS = 30.0
# Search score weights (see `MemoryStore.search`): relevance stays the dominant factor.
RELEVANCE_FLOOR = 0.6
IMPORTANCE_WEIGHT = 0.25
RECENCY_WEIGHT = 0.15
# Nearest neighbours fetched per result wanted, before re-ranking by importance and recency.
CANDIDATES_PER_RESULT = 5
MIN_CANDIDATES = 20
# Chroma caps one add() call (its max batch size is ~5,000 on SQLite); stay well below.
WRITE_BATCH = 1000
_USER_PREFIX = "meta."  # caller metadata lives under a prefix, so it cannot spoof user_id
_SECONDS_PER_DAY = 86400.0


@dataclass
class Memory:
    """One remembered thing about a user."""

    id: str
    user_id: str
    text: str
    importance: float
    created_at: float
    kind: str
    metadata: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- importance

_EXPLICIT_RE = re.compile(
    r"\b(remember|don'?t forget|do not forget|keep in mind|note that|for future reference|"
    r"from now on)\b", re.IGNORECASE)
_PREFERENCE_RE = re.compile(
    r"\b(i (?:really )?(?:prefer|like|love|hate|dislike|want|need|enjoy|avoid)|"
    r"i (?:don'?t|do not) (?:like|want|eat|drink)|my fav(?:ou)?rite|always|never|"
    r"please (?:use|call|answer|reply))\b", re.IGNORECASE)
_PERSONAL_FACT_RE = re.compile(
    r"\b(my name|i am|i'm|i live|i work|my (?:wife|husband|partner|son|daughter|kid|dog|cat|"
    r"boss|team|company|birthday|address|email|phone|job)|birthday|allergic|deadline|"
    r"anniversary)\b", re.IGNORECASE)
_NUMBER_RE = re.compile(r"\d")
_CAPITALISED_RE = re.compile(r"^[\"'(]?[A-Z][a-z]{2,}")
_CHIT_CHAT_RE = re.compile(
    r"^\s*(hi|hello|hey|thanks|thank you|thx|ok|okay|cool|nice|great|lol|haha|bye|"
    r"good (?:morning|night|evening)|how are you|what'?s up|yes|no|sure)\b[\s!.?]*",
    re.IGNORECASE)
_KIND_BASE = {"instruction": 0.6, "preference": 0.55, "fact": 0.45, "summary": 0.4,
              "episode": 0.3, "chat": 0.2}


def importance_score(text: str, *, kind: str = "fact", feedback: int | None = None) -> float:
    """How much a memory is worth keeping, from 0 (noise) to 1 (must keep).

    Heuristic, cheap and explainable (no model call):
    - start from the kind: instruction 0.6, preference 0.55, fact 0.45, summary 0.4,
      episode 0.3, chat 0.2 (unknown kinds 0.4);
    - +0.3 for an explicit request ("remember", "don't forget", "from now on", ...);
    - +0.2 for a stated preference ("I prefer", "I don't like", "my favourite", "always");
    - +0.15 for a personal fact ("my name", "I live", "my daughter", "birthday", "allergic");
    - +0.1 when it carries a number (dates, amounts), +0.05 when it names something
      (a capitalised word inside the sentence);
    - -0.3 for chit-chat (a greeting, thanks or "ok" with little else), -0.1 for a question
      (it asks for a fact rather than stating one), -0.1 for fewer than four words;
    - user feedback on the turn it came from: +0.15 when positive, -0.25 when negative.
    The sum is clipped to [0, 1] and rounded to 3 decimals.
    """
    words = text.split()
    score = _KIND_BASE.get(kind, 0.4)
    if _EXPLICIT_RE.search(text):
        score += 0.3
    if _PREFERENCE_RE.search(text):
        score += 0.2
    if _PERSONAL_FACT_RE.search(text):
        score += 0.15
    if _NUMBER_RE.search(text):
        score += 0.1
    if _names_something(words):
        score += 0.05
    chit_chat = _CHIT_CHAT_RE.match(text)
    if chit_chat and len(text) - chit_chat.end() < 15:
        score -= 0.3
    if text.rstrip().endswith("?"):
        score -= 0.1
    if len(words) < 4:
        score -= 0.1
    if feedback is not None and feedback > 0:
        score += 0.15
    elif feedback is not None and feedback < 0:
        score -= 0.25
    return round(min(1.0, max(0.0, score)), 3)


def _names_something(words: list[str]) -> bool:
    """A capitalised word that does not start a sentence: likely a name, place or product."""
    return any(
        _CAPITALISED_RE.match(word) and not words[index - 1].endswith((".", "!", "?", ":"))
        for index, word in enumerate(words) if index > 0
    )


def recency_weight(created_at: float, now: float) -> float:
    """1 for a memory made now, halving every RECENCY_HALF_LIFE_DAYS days (never above 1)."""
    age_days = max(0.0, now - created_at) / _SECONDS_PER_DAY
    return math.pow(0.5, age_days / RECENCY_HALF_LIFE_DAYS)


# ---------------------------------------------------------------------------- the store


class MemoryStore:
    """Every user's long-term memories in one Chroma collection, each user walled off."""

    def __init__(self, settings: MemorySettings, data_dir: Path,
                 embedder: Embedder | None = None) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        self.settings = settings
        self._embedder = embedder
        # Injectable clock: ranking and pruning depend on age, and tests set the time.
        self.clock: Callable[[], float] = time.time
        # Pruning reads then deletes; two adds for one user must not both prune the same set.
        self._write_lock = threading.Lock()
        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        if settings.chroma_url:
            url = urlparse(settings.chroma_url)
            if not url.hostname:
                raise ValueError(f"memory.chroma_url {settings.chroma_url!r} has no host; "
                                 "use a URL like http://127.0.0.1:8001")
            https = url.scheme == "https"
            self._client = chromadb.HttpClient(host=url.hostname,
                                               port=url.port or (443 if https else 8000),
                                               ssl=https, settings=chroma_settings)
            self.location = settings.chroma_url
        else:
            path = Path(settings.chroma_path or Path(data_dir) / "chroma")
            path.mkdir(parents=True, exist_ok=True)
            self._client = chromadb.PersistentClient(path=str(path), settings=chroma_settings)
            self.location = str(path)
        # embedding_function=None: Chroma's default one downloads a model; we always pass ours.
        self._collection = self._client.get_or_create_collection(
            COLLECTION_NAME, configuration={"hnsw": {"space": "cosine"}},
            embedding_function=None)

    @property
    def embedder(self) -> Embedder:
        """The embedder, loaded on first need: listing and deleting never load a model."""
        if self._embedder is None:
            self._embedder = load_embedder()
        return self._embedder

    # ------------------------------------------------------------------------ writes

    def add(self, user_id: str, text: str, *, kind: str = "fact",
            importance: float | None = None, metadata: dict[str, str] | None = None) -> Memory:
        """Remember `text` for `user_id`; then prune the user's least valuable memories
        beyond `max_per_user` (never the one just added, unless nothing else is left)."""
        return self.add_many(user_id, [text], kind=kind, importance=importance,
                             metadata=metadata)[0]

    def add_many(self, user_id: str, texts: list[str], *, kind: str = "fact",
                 importance: float | None = None,
                 metadata: dict[str, str] | None = None) -> list[Memory]:
        """Remember many texts at once (one batched embedding pass), then prune once.

        Every text is validated before anything is embedded or written: one bad text
        rejects the whole call with a ValueError naming each bad index.
        """
        _check_user(user_id)
        _check_kind(kind)
        if importance is not None and not 0.0 <= importance <= 1.0:
            raise ValueError(f"importance must be between 0 and 1 (got {importance})")
        extra = _check_metadata(metadata)
        problems = [f"text {i}: {problem}" for i, text in enumerate(texts)
                    if (problem := _text_problem(text))]
        if problems:
            raise ValueError("nothing was stored: " + "; ".join(problems[:10])
                             + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else ""))
        if not texts:
            return []
        cleaned = [text.strip() for text in texts]
        vectors = self.embedder.embed(cleaned)
        now = self.clock()
        memories = [
            Memory(id=uuid.uuid4().hex, user_id=user_id, text=text,
                   importance=importance if importance is not None
                   else importance_score(text, kind=kind),
                   # Strictly increasing within a batch, so "newest first" keeps its order.
                   created_at=now + index * 1e-6, kind=kind, metadata=dict(extra))
            for index, text in enumerate(cleaned)
        ]
        with self._write_lock:
            for start in range(0, len(memories), WRITE_BATCH):
                chunk = memories[start:start + WRITE_BATCH]
                self._collection.add(
                    ids=[m.id for m in chunk],
                    embeddings=vectors[start:start + WRITE_BATCH],
                    documents=[m.text for m in chunk],
                    metadatas=[_to_chroma_metadata(m) for m in chunk],
                )
            self._prune(user_id, protect={m.id for m in memories})
        return memories

    def apply_feedback(self, user_id: str, run_id: str, rating: int) -> list[Memory]:
        """Re-score the user's memories made by agent run `run_id` with its rating (-1, 0,
        1): `importance_score(..., feedback=rating)`, so a liked turn is kept longer and
        ranks higher. Returns the memories changed (none for another user's run)."""
        found = self._collection.get(
            where={"$and": [{"user_id": user_id}, {_USER_PREFIX + "run_id": run_id}]},
            include=["documents", "metadatas"])
        changed = []
        for memory_id, text, meta in zip(found["ids"], found["documents"] or [],
                                         found["metadatas"] or [], strict=True):
            memory = _from_chroma(memory_id, text, meta)
            memory.importance = importance_score(text, kind=memory.kind, feedback=rating)
            changed.append(memory)
        if changed:
            with self._write_lock:
                self._collection.update(ids=[m.id for m in changed],
                                        metadatas=[_to_chroma_metadata(m) for m in changed])
        return changed

    def delete(self, user_id: str, memory_id: str) -> bool:
        """True when this user's memory was deleted; False when it is missing or another
        user's (the caller cannot tell which, so ids of others' memories reveal nothing)."""
        found = self._collection.get(ids=[memory_id], include=["metadatas"])
        if not found["ids"] or (found["metadatas"] or [{}])[0].get("user_id") != user_id:
            return False
        # The where filter again: a record re-owned between get and delete stays untouched.
        self._collection.delete(ids=[memory_id], where={"user_id": user_id})
        return True

    def delete_run(self, user_id: str, run_id: str) -> int:
        """Delete this user's memories made by agent run `run_id`; how many there were."""
        where = {"$and": [{"user_id": user_id}, {_USER_PREFIX + "run_id": run_id}]}
        with self._write_lock:
            ids = self._collection.get(where=where, include=[])["ids"]
            if ids:
                self._collection.delete(ids=ids, where={"user_id": user_id})
        return len(ids)

    def delete_user(self, user_id: str) -> int:
        """Delete every memory of this user; how many there were."""
        _check_user(user_id)
        with self._write_lock:
            ids = self._collection.get(where={"user_id": user_id}, include=[])["ids"]
            for start in range(0, len(ids), WRITE_BATCH):
                self._collection.delete(ids=ids[start:start + WRITE_BATCH],
                                        where={"user_id": user_id})
        return len(ids)

    def _prune(self, user_id: str, protect: set[str]) -> None:
        """Delete the user's lowest importance x recency memories beyond max_per_user."""
        limit = self.settings.max_per_user
        rows = self._collection.get(where={"user_id": user_id}, include=["metadatas"])
        excess = len(rows["ids"]) - limit
        if excess <= 0:
            return
        now = self.clock()
        ranked = sorted(
            zip(rows["ids"], rows["metadatas"] or [], strict=True),
            # Protected (just added) last; then least valuable first, oldest first on ties.
            key=lambda row: (row[0] in protect,
                             float(row[1]["importance"])
                             * recency_weight(float(row[1]["created_at"]), now),
                             float(row[1]["created_at"])),
        )
        doomed = [memory_id for memory_id, _ in ranked[:excess]]
        for start in range(0, len(doomed), WRITE_BATCH):
            self._collection.delete(ids=doomed[start:start + WRITE_BATCH])

    # ------------------------------------------------------------------------ reads

    def search(self, user_id: str, query: str, k: int | None = None
               ) -> list[tuple[Memory, float]]:
        """This user's `k` (default `top_k`) best memories for `query`, best first, with scores.

        score = similarity * (RELEVANCE_FLOOR + IMPORTANCE_WEIGHT * importance
                              + RECENCY_WEIGHT * recency)
              = similarity * (0.6 + 0.25 * importance + 0.15 * 0.5 ** (age_days / 30))
        where similarity = 1 - cosine distance. Relevance dominates: importance and recency
        can lift a memory by at most 40% of its own similarity, so an important but unrelated
        memory never beats a clearly relevant one. Candidates are the nearest
        max(20, 5k) neighbours, re-ranked by this score.
        """
        _check_user(user_id)
        problem = _text_problem(query)
        if problem:
            raise ValueError(f"query: {problem}")
        k = self.settings.top_k if k is None else k
        if k <= 0:
            raise ValueError(f"k must be positive (got {k})")
        vector = self.embedder.embed([query.strip()])[0]
        found = self._collection.query(
            query_embeddings=[vector],
            n_results=max(MIN_CANDIDATES, CANDIDATES_PER_RESULT * k),
            where={"user_id": user_id},
            include=["documents", "metadatas", "distances"],
        )
        now = self.clock()
        scored = []
        for memory_id, text, meta, distance in zip(
            found["ids"][0], (found["documents"] or [[]])[0], (found["metadatas"] or [[]])[0],
            (found["distances"] or [[]])[0], strict=True,
        ):
            memory = _from_chroma(memory_id, text or "", meta)
            if memory.user_id != user_id:  # the where filter already ensures it; belt and braces
                continue
            similarity = 1.0 - float(distance)
            weight = (RELEVANCE_FLOOR + IMPORTANCE_WEIGHT * memory.importance
                      + RECENCY_WEIGHT * recency_weight(memory.created_at, now))
            scored.append((memory, round(similarity * weight, 6)))
        scored.sort(key=lambda pair: pair[1], reverse=True)
        return scored[:k]

    def list(self, user_id: str, *, limit: int = 50, offset: int = 0) -> list[Memory]:
        """This user's memories, newest first, `limit` of them from `offset`."""
        _check_user(user_id)
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must be >= 0 (got {limit}, {offset})")
        # Chroma cannot sort: read ids and metadata (small), sort, then fetch one page's texts.
        rows = self._collection.get(where={"user_id": user_id}, include=["metadatas"])
        order = sorted(zip(rows["ids"], rows["metadatas"] or [], strict=True),
                       key=lambda row: float(row[1]["created_at"]), reverse=True)
        page = [memory_id for memory_id, _ in order[offset:offset + limit]]
        if not page:
            return []
        found = self._collection.get(ids=page, include=["documents", "metadatas"])
        by_id = {
            memory_id: _from_chroma(memory_id, text or "", meta)
            for memory_id, text, meta in zip(found["ids"], found["documents"] or [],
                                             found["metadatas"] or [], strict=True)
        }
        return [by_id[memory_id] for memory_id in page
                if memory_id in by_id and by_id[memory_id].user_id == user_id]

    def get(self, user_id: str, memory_id: str) -> Memory | None:
        """This user's memory by id; None when missing or another user's."""
        found = self._collection.get(ids=[memory_id], include=["documents", "metadatas"])
        if not found["ids"]:
            return None
        memory = _from_chroma(found["ids"][0], (found["documents"] or [""])[0] or "",
                              (found["metadatas"] or [{}])[0])
        return memory if memory.user_id == user_id else None

    def has_run(self, user_id: str, run_id: str) -> bool:
        """Whether this user has a memory made by agent run `run_id`."""
        where = {"$and": [{"user_id": user_id}, {_USER_PREFIX + "run_id": run_id}]}
        return bool(self._collection.get(where=where, include=[], limit=1)["ids"])

    def count(self, user_id: str | None = None) -> int:
        """How many memories this user has (every user's, with no user)."""
        if user_id is None:
            return self._collection.count()
        return len(self._collection.get(where={"user_id": user_id}, include=[])["ids"])


# ---------------------------------------------------------------------------- helpers


def _text_problem(text: Any) -> str | None:
    if not isinstance(text, str):
        return f"must be a string (got {type(text).__name__})"
    if not text.strip():
        return "is empty; a memory needs some text"
    if len(text.strip()) > MAX_MEMORY_CHARS:
        return (f"is {len(text.strip())} characters, more than {MAX_MEMORY_CHARS}; "
                "store a summary or split it")
    return None


def _check_user(user_id: Any) -> None:
    if not isinstance(user_id, str) or not user_id.strip():
        raise ValueError(f"user_id must be a non-empty string (got {user_id!r})")


def _check_kind(kind: Any) -> None:
    if not isinstance(kind, str) or not kind.strip() or len(kind) > 40:
        raise ValueError(f"kind must be a short non-empty string like 'fact' (got {kind!r})")


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    if not metadata:
        return {}
    problems = [f"{key!r}: keys and values must be strings" for key, value in metadata.items()
                if not isinstance(key, str) or not key or not isinstance(value, str)]
    if len(metadata) > MAX_METADATA_ENTRIES:
        problems.append(f"{len(metadata)} entries, more than {MAX_METADATA_ENTRIES}")
    if problems:
        raise ValueError("bad memory metadata (nothing was stored): " + "; ".join(problems))
    return dict(metadata)


def _to_chroma_metadata(memory: Memory) -> dict[str, Any]:
    meta: dict[str, Any] = {"user_id": memory.user_id, "kind": memory.kind,
                            "importance": float(memory.importance),
                            "created_at": float(memory.created_at)}
    meta.update({_USER_PREFIX + key: value for key, value in memory.metadata.items()})
    return meta


def _from_chroma(memory_id: str, text: str, meta: Any) -> Memory:
    meta = dict(meta or {})
    return Memory(
        id=memory_id,
        user_id=str(meta.get("user_id", "")),
        text=text,
        importance=float(meta.get("importance", 0.0)),
        created_at=float(meta.get("created_at", 0.0)),
        kind=str(meta.get("kind", "fact")),
        metadata={key[len(_USER_PREFIX):]: str(value) for key, value in meta.items()
                  if key.startswith(_USER_PREFIX)},
    )
