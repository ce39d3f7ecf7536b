"""Long-term memory on a real embedded Chroma in tmp, with the real MiniLM embedder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.embeddings import EMBEDDING_DIMENSIONS, Embedder, load_embedder
from agent.memory import (
    COLLECTION_NAME,
    MAX_MEMORY_CHARS,
    RECENCY_HALF_LIFE_DAYS,
    MemoryStore,
    importance_score,
    recency_weight,
)
from evolora.settings import MemorySettings, Settings

REPO = Path(__file__).resolve().parents[1]
DAY = 86400.0


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real MiniLM, loaded once for the whole test session (~10 s of imports)."""
    return load_embedder()


@pytest.fixture
def store(tmp_path: Path, embedder: Embedder) -> MemoryStore:
    return MemoryStore(MemorySettings(max_per_user=50, top_k=3), tmp_path, embedder=embedder)


def test_embedder_gives_normalized_384_vectors(embedder: Embedder) -> None:
    vectors = embedder.embed(["my dog is called Rex", "the capital of France is Paris"])
    assert len(vectors) == 2 and all(len(v) == EMBEDDING_DIMENSIONS for v in vectors)
    for vector in vectors:
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-4
    assert load_embedder() is embedder  # cached process-wide
    assert embedder.embed([]) == []


def test_search_returns_the_relevant_memory_first(store: MemoryStore) -> None:
    store.add("alice", "My dog is a golden retriever called Rex.")
    store.add("alice", "I prefer answers in metric units.")
    store.add("alice", "I work as a nurse at the city hospital.")
    store.add("alice", "My favourite food is Thai green curry.")

    results = store.search("alice", "what is the name of my pet?")
    assert results[0][0].text == "My dog is a golden retriever called Rex."
    assert len(results) == 3  # top_k from the settings
    scores = [score for _, score in results]
    assert scores == sorted(scores, reverse=True)
    assert store.search("alice", "which units should you use?", k=1)[0][0].text.startswith(
        "I prefer answers in metric")


def test_importance_and_recency_change_the_ranking_as_documented(store: MemoryStore) -> None:
    now = 1_700_000_000.0
    store.clock = lambda: now
    # The same text twice: equal similarity, so only importance and recency can decide.
    low = store.add("bob", "The car is parked on level 3.", importance=0.1)
    high = store.add("bob", "The car is parked on level 3.", importance=0.9)
    ranked = store.search("bob", "where did I park the car?", k=2)
    assert [m.id for m, _ in ranked] == [high.id, low.id]
    # score = similarity * (0.6 + 0.25 * importance + 0.15 * recency), recency 1 here.
    (_, high_score), (_, low_score) = ranked
    assert high_score / low_score == pytest.approx((0.6 + 0.25 * 0.9 + 0.15) /
                                                    (0.6 + 0.25 * 0.1 + 0.15), rel=1e-3)

    store.clock = lambda: now - 90 * DAY
    old = store.add("bob", "My locker code is 4417.", importance=0.5)
    store.clock = lambda: now
    new = store.add("bob", "My locker code is 4417.", importance=0.5)
    ranked = store.search("bob", "what is my locker code?", k=2)
    assert [m.id for m, _ in ranked] == [new.id, old.id]
    assert recency_weight(now - RECENCY_HALF_LIFE_DAYS * DAY, now) == pytest.approx(0.5)

    # Relevance still dominates: an important but unrelated memory does not win.
    store.add("bob", "Remember: my sister Ana's birthday is on 12 May.", importance=1.0)
    assert store.search("bob", "where did I park the car?", k=1)[0][0].text.startswith(
        "The car is parked")


def test_importance_score_follows_its_heuristic() -> None:
    assert importance_score("hi!") < 0.2
    assert importance_score("Remember that my daughter's birthday is on May 3rd.") >= 0.9
    preference = importance_score("I prefer answers in metric units.")
    assert importance_score("We talked about the weather.") < preference
    assert importance_score("ok", kind="chat") == 0.0
    neutral = importance_score("The meeting moved to Thursday.")
    assert (importance_score("The meeting moved to Thursday.", feedback=-1) < neutral
            < importance_score("The meeting moved to Thursday.", feedback=1))
    assert all(0.0 <= importance_score(t) <= 1.0 for t in ("x", "Remember " * 50))


def test_cap_per_user_prunes_the_least_valuable(tmp_path: Path, embedder: Embedder) -> None:
    store = MemoryStore(MemorySettings(max_per_user=3), tmp_path, embedder=embedder)
    now = 1_700_000_000.0
    store.clock = lambda: now - 200 * DAY
    stale = store.add("carol", "Carol once mentioned a cafe near the station.", importance=0.6)
    store.clock = lambda: now
    trivia = store.add("carol", "It was sunny on Tuesday.", importance=0.1)
    keep_a = store.add("carol", "Carol is allergic to peanuts.", importance=0.9)
    store.add("dave", "Dave likes chess.", importance=0.1)  # other users are never pruned

    keep_b = store.add("carol", "Carol's flight lands at 18:40 on Friday.", importance=0.5)
    remaining = {m.id for m in store.list("carol")}
    # 0.6 * 0.5**(200/30) ~ 0.006 is worth less than 0.1 * 1: the stale memory goes first.
    assert remaining == {trivia.id, keep_a.id, keep_b.id}
    assert stale.id not in remaining

    store.add("carol", "Carol's passport number ends in 7731.", importance=0.8)
    assert trivia.id not in {m.id for m in store.list("carol")}
    assert store.count("carol") == 3 and store.count("dave") == 1 and store.count() == 4

    # A new memory is never pruned at once, even when it is the least valuable.
    newest = store.add("carol", "ok thanks", importance=0.0)
    assert newest.id in {m.id for m in store.list("carol")}
    assert store.count("carol") == 3


def test_users_are_isolated(store: MemoryStore) -> None:
    secret = store.add("alice", "My bank PIN is 9402.", metadata={"user_id": "bob"})
    store.add("bob", "Bob's favourite colour is green.")

    assert all(m.user_id == "bob" for m in store.list("bob"))
    assert secret.id not in {m.id for m in store.list("bob")}
    assert all(m.user_id == "bob" for m, _ in store.search("bob", "what is the bank PIN?"))
    assert store.delete("bob", secret.id) is False  # same answer as a missing id
    assert store.delete("bob", "no-such-id") is False
    assert store.count("alice") == 1
    # Caller metadata cannot overwrite the owner.
    assert store.list("alice")[0].metadata == {"user_id": "bob"}
    assert store.list("alice")[0].user_id == "alice"
    assert store.delete("alice", secret.id) is True
    assert store.count("alice") == 0


def test_list_is_newest_first_with_paging(store: MemoryStore) -> None:
    texts = [f"Note number {i} about the garden project." for i in range(5)]
    for index, text in enumerate(texts):
        store.clock = lambda index=index: 1_700_000_000.0 + index
        store.add("erin", text)
    page = store.list("erin", limit=2, offset=1)
    assert [m.text for m in page] == [texts[3], texts[2]]
    assert [m.text for m in store.list("erin")] == texts[::-1]
    assert store.list("nobody") == []


def test_bad_input_is_rejected_and_nothing_written(store: MemoryStore) -> None:
    for text in ("", "   ", "x" * (MAX_MEMORY_CHARS + 1)):
        with pytest.raises(ValueError, match=r"empty|more than"):
            store.add("alice", text)
    with pytest.raises(ValueError, match="text 1"):
        store.add_many("alice", ["fine", "", "also fine"])
    with pytest.raises(ValueError, match="user_id"):
        store.add("", "a fine memory")
    with pytest.raises(ValueError, match="importance"):
        store.add("alice", "a fine memory", importance=1.5)
    with pytest.raises(ValueError, match="metadata"):
        store.add("alice", "a fine memory", metadata={"n": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="query"):
        store.search("alice", " ")
    assert store.count() == 0


def test_add_many_batches_and_persists_across_restart(tmp_path: Path,
                                                      embedder: Embedder) -> None:
    settings = MemorySettings(max_per_user=100)
    store = MemoryStore(settings, tmp_path, embedder=embedder)
    topics = ["tennis", "violin", "sourdough bread", "Python programming", "mountain hiking"]
    memories = store.add_many("frank", [f"Frank is learning {t}." for t in topics],
                              kind="preference")
    assert [m.kind for m in memories] == ["preference"] * 5
    assert (tmp_path / "chroma").is_dir()

    # A restart in this process: drop Chroma's cached system so the next client reopens disk.
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()
    reopened = MemoryStore(settings, tmp_path, embedder=embedder)
    assert reopened.count("frank") == 5
    [(best, _)] = reopened.search("frank", "baking", k=1)
    assert best.text == "Frank is learning sourdough bread."

    # And a real new process: listing needs no embedder, so it loads no model.
    script = (
        "import json; from pathlib import Path; from agent.memory import MemoryStore; "
        "from evolora.settings import MemorySettings; "
        f"s = MemoryStore(MemorySettings(), Path({str(tmp_path)!r})); "
        "print(json.dumps([m.text for m in s.list('frank')] + [s.count()]))"
    )
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    listed = json.loads(done.stdout.strip().splitlines()[-1])
    assert listed[:-1] == [f"Frank is learning {t}." for t in reversed(topics)]
    assert listed[-1] == 5


def test_collection_is_cosine_and_named(store: MemoryStore) -> None:
    collection = store._client.get_collection(COLLECTION_NAME)
    assert collection.configuration_json["hnsw"]["space"] == "cosine"


@pytest.mark.server
def test_http_client_against_the_platforms_chroma_server(
        tmp_path: Path, embedder: Embedder, tiny_settings: Settings) -> None:
    """The scale-out path: the same store through the Chroma server `evolora up` runs when
    memory.chroma_url is on this machine (its command and health URL, from ops.components),
    and HttpClient."""
    import socket
    import time
    import urllib.request

    from ops.components import platform_components

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    memory = tiny_settings.memory.model_copy(update={"chroma_url": f"http://127.0.0.1:{port}"})
    settings = tiny_settings.model_copy(update={"memory": memory})
    [chroma] = [component for component in platform_components(settings, "tiny")
                if component.name == "chroma"]
    assert chroma.health_url == f"http://127.0.0.1:{port}/api/v2/heartbeat"
    server = subprocess.Popen(chroma.command, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(chroma.health_url, timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the chroma component did not start within 120 s")
                time.sleep(0.2)
        settings = MemorySettings(chroma_url=f"http://127.0.0.1:{port}")
        store = MemoryStore(settings, tmp_path, embedder=embedder)
        assert store.location == settings.chroma_url
        note = store.add("alice", "Alice's train leaves from platform 9.")
        store.add("bob", "Bob's train leaves from platform 4.")
        [(found, _)] = store.search("alice", "which platform is my train?", k=1)
        assert found.id == note.id
        assert store.delete("bob", note.id) is False and store.count("alice") == 1
        assert not (tmp_path / "chroma").exists()  # nothing embedded was opened
        assert (tmp_path / "data" / "chroma-server").is_dir()  # the server's own folder
    finally:
        server.terminate()
        server.wait(timeout=30)
