"""The SQL store on a real SQLite file, and `evolora keys` through Typer's runner."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.keys import keys_app
from evolora.settings import load_settings
from storage.keys import display_prefix, new_key
from storage.store import KEY_PREFIX, NotFound, Store, StoreError


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "evolora.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{db_path}")
    yield store
    store.close()


# ---------------------------------------------------------------------------- API keys


def test_new_keys_never_begin_with_a_dash() -> None:
    # The display prefix is typed on a command line (`evolora keys revoke PREFIX`), where a
    # leading "-" reads as an option; one url-safe draw in 64 begins with one.
    keys = [new_key() for _ in range(2000)]
    assert all(key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 43 for key in keys)
    assert not any(display_prefix(key).startswith("-") for key in keys)
    assert len(set(keys)) == len(keys)


def test_key_create_verify_revoke(store: Store, db_path: Path) -> None:
    plaintext, record = store.create_key("laptop", "alice")
    assert plaintext.startswith(KEY_PREFIX) and len(plaintext) > 40
    assert record.prefix == plaintext[4:12] and not record.is_admin
    assert store.verify_key(plaintext) == record

    # Only the sha256 and the display prefix are stored, never the key.
    with sqlite3.connect(db_path) as raw:
        rows = raw.execute("SELECT key_hash, prefix FROM api_keys").fetchall()
        dump = "\n".join(raw.iterdump())
    assert rows == [(hashlib.sha256(plaintext.encode()).hexdigest(), record.prefix)]
    assert plaintext not in dump and plaintext[4:] not in dump

    # Same prefix, different secret: found by prefix, refused by the hash comparison.
    assert store.verify_key(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert store.verify_key("not-a-key") is None and store.verify_key("") is None

    admin_key, _ = store.create_key("ops", "root", admin=True)
    assert store.verify_key(admin_key).is_admin  # type: ignore[union-attr]
    assert [k.name for k in store.list_keys()] == ["laptop", "ops"]

    revoked = store.revoke_key(f"evk_{record.prefix}")
    assert revoked.revoked_at is not None
    assert store.verify_key(plaintext) is None
    assert store.revoke_key(record.id).revoked_at == revoked.revoked_at  # idempotent
    assert store.verify_key(admin_key) is not None
    with pytest.raises(NotFound):
        store.revoke_key("nope")
    with pytest.raises(StoreError, match="name"):
        store.create_key(" ", "alice")


def test_verify_compares_hashes_in_constant_time(store: Store,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    plaintext, _ = store.create_key("laptop", "alice")
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def recording(a: str, b: str) -> bool:  # the real comparison, observed
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    assert store.verify_key(plaintext) is not None
    assert store.verify_key(plaintext + "x") is None
    digest = hashlib.sha256(plaintext.encode()).hexdigest()
    assert compared[0] == (digest, digest)
    assert compared[1][0] == digest and compared[1][1] != digest


# ---------------------------------------------------------------------------- sessions


def test_sessions_are_isolated_and_survive_a_new_store(store: Store, db_path: Path) -> None:
    session_id = store.open_session("alice", None)
    store.add_message("alice", session_id, "user", "What is 12 * 7?")
    store.add_message("alice", session_id, "assistant", "84")
    assert store.open_session("alice", session_id) == session_id

    for attempt in (
        lambda: store.open_session("bob", session_id),
        lambda: store.add_message("bob", session_id, "user", "hi"),
        lambda: store.session_messages("bob", session_id),
        lambda: store.session_summary("bob", session_id),
        lambda: store.set_summary("bob", session_id, "stolen", keep_last=0),
    ):
        with pytest.raises(NotFound) as other_users:
            attempt()
    # Someone else's session and a missing one read exactly alike.
    with pytest.raises(NotFound) as missing:
        store.open_session("bob", "0" * 32)
    assert str(other_users.value).replace(session_id, "X") == str(missing.value).replace(
        "0" * 32, "X")
    with pytest.raises(StoreError, match="role"):
        store.add_message("alice", session_id, "wizard", "hi")

    store.close()
    reopened = Store(f"sqlite:///{db_path}")
    messages = reopened.session_messages("alice", session_id)
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "What is 12 * 7?"), ("assistant", "84")]
    reopened.close()


def test_summary_keeps_the_last_n_messages(store: Store) -> None:
    session_id = store.open_session("alice", None)
    for index in range(6):
        store.add_message("alice", session_id, "user" if index % 2 == 0 else "assistant",
                          f"turn {index}")
    assert store.session_summary("alice", session_id) is None
    store.set_summary("alice", session_id, "Alice asked about turns 0-3.", keep_last=2)
    assert store.session_summary("alice", session_id) == "Alice asked about turns 0-3."
    assert [m["content"] for m in store.session_messages("alice", session_id)] == [
        "turn 4", "turn 5"]
    store.add_message("alice", session_id, "user", "turn 6")
    store.set_summary("alice", session_id, "Turns 0-5.", keep_last=10)  # more than there are
    assert [m["content"] for m in store.session_messages("alice", session_id)] == [
        "turn 4", "turn 5", "turn 6"]
    store.set_summary("alice", session_id, "Everything.", keep_last=0)
    assert store.session_messages("alice", session_id) == []
    with pytest.raises(StoreError):
        store.set_summary("alice", session_id, "x", keep_last=-1)


# ---------------------------------------------------------------------------- traces


def test_traces_and_feedback_own_only(store: Store) -> None:
    session_id = store.open_session("alice", None)
    steps = [{"thought": "Multiply.", "tool": "calculator", "argument": "12 * 7",
              "observation": "84"}]
    trace_id = store.record_trace(user_id="alice", session_id=session_id,
                                  question="What is 12 * 7?", steps=steps, final_answer="84",
                                  error=None, adapter_version="3")
    with pytest.raises(NotFound):  # a trace cannot be filed under another user's session
        store.record_trace(user_id="bob", session_id=session_id, question="q", steps=[],
                           final_answer=None, error="x", adapter_version="3")
    with pytest.raises(NotFound):
        store.set_feedback("bob", trace_id, 1)
    with pytest.raises(StoreError, match="rating"):
        store.set_feedback("alice", trace_id, 5)

    [trace] = store.traces_since(None)
    assert trace["steps"] == steps and trace["feedback"] is None
    watermark = trace["created_at"]
    assert store.traces_since(watermark) == []

    store.set_feedback("alice", trace_id, 1, "spot on")
    # Rated after the watermark: the next harvest sees it again, with its rating.
    [rated] = store.traces_since(watermark)
    assert (rated["id"], rated["feedback"], rated["feedback_comment"]) == (
        trace_id, 1, "spot on")
    store.set_feedback("alice", trace_id, -1)
    assert store.traces_since(None)[0]["feedback"] == -1


def test_concurrent_writers_share_one_store(store: Store) -> None:
    session_id = store.open_session("alice", None)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for index in range(10):
                store.add_message("alice", session_id, "user", f"{worker}-{index}")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.session_messages("alice", session_id)) == 40


def test_from_settings_defaults_to_sqlite_in_data_dir(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch, tmp_path)
    store = Store.from_settings(load_settings("tiny"))
    store.create_key("x", "y")
    store.close()
    assert (tmp_path / "data" / "evolora.db").is_file()
    with sqlite3.connect(tmp_path / "data" / "evolora.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---------------------------------------------------------------------------- CLI

runner = CliRunner()


def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("EVOLORA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EVOLORA_PATHS__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EVOLORA_PATHS__MLRUNS_DIR", str(tmp_path / "mlruns"))


def test_keys_cli_create_list_revoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch, tmp_path)
    app = typer.Typer()
    app.add_typer(keys_app, name="keys")

    created = runner.invoke(app, ["keys", "create", "laptop", "--user", "alice", "-c", "tiny"])
    assert created.exit_code == 0, created.output
    [key] = [word for word in created.output.split() if word.startswith(KEY_PREFIX)
             and len(word) > 20]
    assert created.output.count(key) == 1
    assert "cannot be shown again" in created.output

    listed = runner.invoke(app, ["keys", "list", "--json", "-c", "tiny"])
    assert listed.exit_code == 0, listed.output
    [record] = json.loads(listed.output)
    assert record["user_id"] == "alice" and record["revoked_at"] is None
    assert key not in listed.output and key[4:] not in listed.output
    table = runner.invoke(app, ["keys", "list", "-c", "tiny"])
    assert table.exit_code == 0 and key not in table.output and "laptop" in table.output

    store = Store.from_settings(load_settings("tiny"))
    assert store.verify_key(key) is not None
    revoked = runner.invoke(app, ["keys", "revoke", record["prefix"], "-c", "tiny"])
    assert revoked.exit_code == 0, revoked.output
    assert store.verify_key(key) is None
    store.close()

    missing = runner.invoke(app, ["keys", "revoke", "nope", "-c", "tiny"])
    assert missing.exit_code == 2

    # Alice's only key is revoked: a new one for her needs no flag. A second live key for a
    # user id in use (their data would be shared) needs --add-to-user.
    phone = runner.invoke(app, ["keys", "create", "phone", "--user", "alice", "-c", "tiny"])
    assert phone.exit_code == 0, phone.output
    clash = runner.invoke(app, ["keys", "create", "alice", "-c", "tiny"])
    assert clash.exit_code == 2
    assert "user 'alice' already has 1 live key(s) (phone)" in clash.output
    assert "--add-to-user" in clash.output
    shared = runner.invoke(app, ["keys", "create", "tablet", "--user", "alice",
                                 "--add-to-user", "-c", "tiny"])
    assert shared.exit_code == 0, shared.output
    listed = json.loads(runner.invoke(app, ["keys", "list", "--json", "-c", "tiny"]).output)
    assert sorted(k["name"] for k in listed if not k["revoked_at"]) == ["phone", "tablet"]
