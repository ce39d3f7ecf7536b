"""What an agent run stores, and forgetting it: one SQL transaction, Chroma after it and
reconciled at start (a crash simulated at each point between them), a memory's deletion
reaching messages, traces, the session summary and the harvest, and "forget me". Real
SQLite, real Chroma, the real MiniLM embedder, the real service on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from support.serving import serving_settings

from agent.embeddings import load_embedder
from agent.memory import MemoryStore
from agent.tools import default_tools, run_tool
from evolora.settings import Settings
from serving.agent_runs import SESSION_FOLD, summarise_session, write_memory
from serving.app import create_app
from serving.local_server import running_server
from storage.store import NotFound, PendingMemory, Store
from tasks.harvest.traces import harvest_traces

TOOLS = default_tools()


def run(store: Store, user: str, question: str, session_id: str | None = None,
        tool_argument: str | None = None) -> tuple[str, str, PendingMemory]:
    """One agent run stored as answer_question stores it, up to its SQL commit: (run id,
    session id, the memory now pending). `tool_argument`: a verified calculator step."""
    steps, answer = [], "noted"
    if tool_argument is not None:
        observation = run_tool(TOOLS, "calculator", tool_argument)
        steps = [{"thought": "I should use the calculator.", "tool": "calculator",
                  "argument": tool_argument, "observation": observation}]
        answer = observation
    memory_text = f"User: {question}\nAssistant: {answer}"
    run_id, session_id = store.record_run(
        user_id=user, session_id=session_id, question=question, reply=answer, steps=steps,
        final_answer=answer, error=None, adapter_version="base", memory=memory_text,
        fold=SESSION_FOLD)
    return run_id, session_id, PendingMemory(run_id, user, memory_text, "episode", time.time())


def test_an_agent_run_commits_whole_or_not_at_all(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'evolora.db'}")
    run_id, session_id, _ = run(store, "ann", "What is 6 * 7?")
    assert [m["content"] for m in store.session_messages("ann", session_id)] == \
        ["What is 6 * 7?", "noted"]
    assert [t["id"] for t in store.traces_since(None)] == [run_id]
    assert [p.run_id for p in store.pending_memories()] == [run_id]
    # Refused inside the transaction (another user's session): nothing of it is stored.
    with pytest.raises(NotFound):
        run(store, "bob", "Steal this session.", session_id=session_id)
    assert store.user_counts("bob") == {"sessions": 0, "messages": 0, "runs": 0}
    assert len(store.traces_since(None)) == 1 and len(store.pending_memories()) == 1
    # The fold is part of the run's transaction: 7 runs are 14 messages, over 12.
    for index in range(6):
        run(store, "ann", f"Question {index}?", session_id=session_id)
    live = store.session_messages("ann", session_id)
    assert len(live) == 6 and live[0]["content"] == "Question 3?"
    summary = store.session_summary("ann", session_id)
    assert summary is not None and summary.startswith("user: What is 6 * 7? assistant: noted")
    store.close()


def test_an_older_database_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = create_engine(f"sqlite:///{path}")
    with old.begin() as connection:  # the messages table as an earlier version made it
        connection.execute(text("CREATE TABLE chat_sessions (id VARCHAR(32) PRIMARY KEY, "
                                "user_id VARCHAR(200), created_at FLOAT, updated_at FLOAT, "
                                "summary TEXT)"))
        connection.execute(text("CREATE TABLE messages (id INTEGER PRIMARY KEY, session_id "
                                "VARCHAR(32), role VARCHAR(16), content TEXT, created_at "
                                "FLOAT, summarized BOOLEAN)"))
        connection.execute(text("INSERT INTO chat_sessions VALUES ('s1', 'ann', 1, 1, NULL)"))
        connection.execute(text("INSERT INTO messages VALUES (1, 's1', 'user', 'hi', 1, 0)"))
    old.dispose()
    store = Store(f"sqlite:///{path}")
    assert store.session_messages("ann", "s1")[0]["content"] == "hi"
    run_id, _, _ = run(store, "ann", "And now?", session_id="s1")
    assert len(store.session_messages("ann", "s1")) == 3
    assert store.forget_run("ann", run_id)
    assert [m["content"] for m in store.session_messages("ann", "s1")] == ["hi"]
    store.close()


@dataclass
class Service:
    url: str
    app: FastAPI
    settings: Settings
    store: Store
    crashed: dict[str, str]  # crash point -> run id

    @property
    def memory(self) -> MemoryStore:
        return self.app.state.services.memory

    def key(self, user_id: str, admin: bool = False) -> str:
        plaintext, _record = self.store.create_key(f"key-{user_id}", user_id, admin=admin)
        return plaintext

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"},
                            timeout=60)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
            ) -> Iterator[Service]:
    """A service started on a data dir where earlier runs of "cora" stopped at each point
    between the SQL commit and the end of the Chroma write."""
    settings = serving_settings(tmp_path_factory.mktemp("runs"), tiny_model_dir,
                                auth_enabled=True, poll_interval_s=3600)
    store = Store.from_settings(settings)
    memory = MemoryStore(settings.memory, settings.paths.data_dir, embedder=load_embedder())
    # Killed after the commit, before Chroma: the memory is only pending.
    before_chroma, _, _ = run(store, "cora", "I live in Oslo.")
    # Killed after the Chroma write, before the pending mark went.
    after_chroma, _, pending = run(store, "cora", "My cat is called Miso.")
    memory.add(pending.user_id, pending.text, kind=pending.kind,
               metadata={"run_id": pending.run_id})
    # Not killed: the whole path.
    whole, _, pending = run(store, "cora", "I prefer tea.")
    write_memory(store, memory, pending)
    assert len(store.pending_memories()) == 2 and memory.count("cora") == 2
    app = create_app(settings)
    with running_server(app) as url:
        yield Service(url, app, settings, store, {"before_chroma": before_chroma,
                                                  "after_chroma": after_chroma,
                                                  "whole": whole})


def memories(http: httpx.Client) -> list[dict[str, Any]]:
    return list(http.get("/v1/memories").json()["data"])


@pytest.mark.server
def test_a_crash_between_the_commit_and_chroma_is_reconciled_at_start(
        service: Service) -> None:
    assert service.store.pending_memories() == []
    with service.client(service.key("cora")) as http:
        found = memories(http)
        # One memory per run: the missing one re-added, the written one not duplicated.
        assert sorted(m["metadata"]["run_id"] for m in found) == sorted(service.crashed.values())
        assert any("Oslo" in m["text"] for m in found)
        # The re-added memory is a whole one: its run's feedback moves it.
        liked = http.post("/v1/feedback", json={"run_id": service.crashed["before_chroma"],
                                                "rating": 1})
        assert liked.status_code == 200
        oslo = next(m for m in memories(http) if "Oslo" in m["text"])
        assert oslo["importance"] > next(m for m in found if "Oslo" in m["text"])["importance"]


@pytest.mark.server
def test_deleting_a_memory_forgets_its_run_everywhere(service: Service) -> None:
    store = service.store
    first, session_id, pending = run(store, "dora", "What is 12 * 7?", tool_argument="12 * 7")
    write_memory(store, service.memory, pending)
    for index in range(6):  # the session folds: the first run's messages go into the summary
        write_memory(store, service.memory,
                     run(store, "dora", f"Note {index}.", session_id=session_id)[2])
    assert "What is 12 * 7?" in (store.session_summary("dora", session_id) or "")
    assert first in harvest_traces(store, since=None, max_rows=100, tools=TOOLS)[1]["trace_ids"]
    with service.client(service.key("dora")) as http:
        # A run through the service itself, in a session of its own.
        served = http.post("/v1/agent/runs", json={"question": "My locker code is 4711."})
        assert served.status_code == 200, served.text
        served_session = served.json()["session_id"]
        by_run = {m["metadata"]["run_id"]: m["id"] for m in memories(http)}
        assert http.delete(f"/v1/memories/{by_run[first]}").status_code == 204
        assert http.delete(f"/v1/memories/{by_run[served.json()['run_id']]}").status_code == 204
        assert http.delete(f"/v1/memories/{by_run[first]}").status_code == 404
        left = memories(http)
    assert len(left) == 6 and not any("12 * 7" in m["text"] or "4711" in m["text"]
                                      for m in left)
    traces = {t["id"]: t for t in store.traces_since(None) if t["user_id"] == "dora"}
    assert first not in traces and served.json()["run_id"] not in traces and len(traces) == 6
    assert store.session_messages("dora", served_session) == []
    # The summary is rebuilt from what is left; the harvest no longer sees the run.
    summary = store.session_summary("dora", session_id) or ""
    assert "12 * 7" not in summary and summary == summarise_session(None, [
        {"role": role, "content": content} for index in range(3)
        for role, content in (("user", f"Note {index}."), ("assistant", "noted"))])
    assert first not in harvest_traces(store, since=None, max_rows=100,
                                       tools=TOOLS)[1]["trace_ids"]
    # Another user cannot delete a memory (same 404 as a missing one).
    other = left[0]["id"]
    with service.client(service.key("eve")) as eve:
        assert eve.delete(f"/v1/memories/{other}").status_code == 404
    assert len(service.memory.list("dora")) == 6


@pytest.mark.server
def test_forget_me_removes_a_users_whole_history(service: Service) -> None:
    store = service.store
    for user in ("finn", "gus"):
        session_id = None
        for index in range(3):
            _run, session_id, pending = run(store, user, f"{user} says {index}.",
                                            session_id=session_id)
            write_memory(store, service.memory, pending)
    run(store, "finn", "A run whose memory is still pending.")
    finn, gus, admin = service.key("finn"), service.key("gus"), service.key("root", admin=True)
    with service.client(finn) as http:
        stored = http.get("/v1/users/me").json()
        assert stored == {"user_id": "finn", "stored": {"memories": 3, "sessions": 2,
                                                        "messages": 8, "runs": 4}}
        forgotten = http.delete("/v1/users/me")
        assert forgotten.status_code == 200
        assert forgotten.json()["deleted"] == stored["stored"]
        assert http.get("/v1/users/me").json()["stored"] == {
            "memories": 0, "sessions": 0, "messages": 0, "runs": 0}
        assert memories(http) == []
        assert http.get("/healthz").status_code == 200  # the key still works
    assert not any(p.user_id == "finn" for p in store.pending_memories())
    assert not any(t["user_id"] == "finn" for t in store.traces_since(None))
    # Gus is untouched; only an admin may forget him for him.
    with service.client(gus) as http:
        assert http.delete("/admin/users/finn").status_code == 403
        assert http.get("/v1/users/me").json()["stored"]["runs"] == 3
    with service.client(admin) as http:
        assert http.get("/admin/users/gus").json()["stored"]["memories"] == 3
        deleted = http.delete("/admin/users/gus").json()["deleted"]
        assert deleted == {"memories": 3, "sessions": 1, "messages": 6, "runs": 3}
    assert service.memory.count("gus") == 0
