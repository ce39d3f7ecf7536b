"""The service's SQL store: API keys, chat sessions and messages, agent traces and feedback.

SQLAlchemy 2.0 on any URL (`serving.database_url`, e.g. PostgreSQL); by default SQLite at
`<data_dir>/evolora.db` in WAL mode, so the nightly harvest can read while the service
writes. Every method opens its own short session: one `Store` is shared by all request
threads. Every per-user read and write checks ownership; another user's session or trace is
`NotFound`, exactly like a missing one, so ids never leak across users.

An agent run is one transaction (`record_run`): session, messages, trace and the memory it
leaves, which is *pending* until Chroma has it (`memory_written`; the service re-adds what
is still pending at start). `forget_run` and `forget_user` remove a run, or a user's whole
history, everywhere SQL holds its text.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, delete, event, func, or_, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from storage.keys import KEY_PREFIX, KeyRecord, display_prefix, hash_key, key_record, new_key
from storage.tables import (
    MAX_NAME_CHARS,
    ApiKeyRow,
    Base,
    ChatSessionRow,
    MessageRow,
    PendingMemoryRow,
    TraceRow,
    add_missing_columns,
)

if TYPE_CHECKING:
    from evolora.settings import Settings

ROLES = ("system", "user", "assistant", "tool")
RATINGS = (-1, 0, 1)
MAX_COMMENT_CHARS = 2000
# (the summary so far or None, the messages folding into it, oldest first) -> the summary
Summarise = Callable[[str | None, list[dict[str, Any]]], str]


class StoreError(ValueError):
    """A request the store refuses; the message says why."""


class NotFound(StoreError):
    """No such record for this user (missing, or another user's: deliberately the same)."""


@dataclass
class PendingMemory:
    """A run's memory committed in SQL, not yet confirmed written to Chroma."""

    run_id: str
    user_id: str
    text: str
    kind: str
    created_at: float


@dataclass
class Fold:
    """When a session's older messages fold into its summary: beyond `after` live messages,
    all but the last `keep_last`, summarised by `summarise`."""

    after: int
    keep_last: int
    summarise: Summarise


# ---------------------------------------------------------------------------- the store


class Store:
    """API keys, chat sessions, messages and traces in one SQL database, thread-safe."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        kwargs: dict[str, Any] = {}
        self.is_sqlite = url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            # Request threads share the engine's pool; SQLite's own check would refuse that.
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if url.database in (None, "", ":memory:"):
                kwargs["poolclass"] = StaticPool  # one connection, or each sees an empty DB
            else:
                Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        add_missing_columns(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store at `serving.database_url`, default SQLite at `<data_dir>/evolora.db`."""
        url = settings.serving.database_url
        if not url:
            url = f"sqlite:///{(Path(settings.paths.data_dir) / 'evolora.db').resolve()}"
        return cls(url)

    def close(self) -> None:
        """Release the connection pool (the store can be reopened with a new Store)."""
        self.engine.dispose()

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    # ------------------------------------------------------------------------ API keys

    def create_key(self, name: str, user_id: str, *, admin: bool = False
                   ) -> tuple[str, KeyRecord]:
        """A new key: (plaintext, record). The plaintext is returned now and never again."""
        _check_text("name", name, MAX_NAME_CHARS)
        _check_text("user_id", user_id, MAX_NAME_CHARS)
        plaintext = new_key()
        row = ApiKeyRow(id=uuid.uuid4().hex, name=name.strip(), user_id=user_id.strip(),
                        key_hash=hash_key(plaintext), prefix=display_prefix(plaintext),
                        is_admin=admin, created_at=time.time(), revoked_at=None)
        with self._transaction() as session:
            session.add(row)
        return plaintext, key_record(row)

    def verify_key(self, plaintext: str) -> KeyRecord | None:
        """The key's record when `plaintext` is a live key, else None (unknown or revoked).

        Candidates are found by the public display prefix; the secret part is only ever
        compared as a hash, with hmac.compare_digest, so response time does not reveal how
        many leading characters of a guess were right.
        """
        if not isinstance(plaintext, str) or not plaintext.startswith(KEY_PREFIX):
            return None
        digest = hash_key(plaintext)
        with self._sessions() as session:
            rows = session.scalars(
                select(ApiKeyRow).where(ApiKeyRow.prefix == display_prefix(plaintext))).all()
        match = None
        for row in rows:  # every candidate is compared: no early exit on the first match
            if hmac.compare_digest(row.key_hash, digest):
                match = row
        if match is None or match.revoked_at is not None:
            return None
        return key_record(match)

    def list_keys(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
        return [key_record(row) for row in rows]

    def revoke_key(self, key_id_or_prefix: str) -> KeyRecord:
        """Revoke a key by its id or display prefix ("evk_" optional); idempotent."""
        ref = key_id_or_prefix.strip()
        prefix = ref.removeprefix(KEY_PREFIX)
        with self._transaction() as session:
            rows = session.scalars(select(ApiKeyRow).where(
                or_(ApiKeyRow.id == ref, ApiKeyRow.prefix == prefix))).all()
            if not rows:
                raise NotFound(f"no API key with id or prefix {ref!r}; `evolora keys list` "
                               "shows them")
            if len(rows) > 1:
                ids = ", ".join(row.id for row in rows)
                raise StoreError(f"prefix {ref!r} matches {len(rows)} keys ({ids}); "
                                 "revoke by id instead")
            row = rows[0]
            if row.revoked_at is None:
                row.revoked_at = time.time()
            return key_record(row)

    # ------------------------------------------------------------------------ sessions

    def open_session(self, user_id: str, session_id: str | None) -> str:
        """`session_id` when it is this user's; a new session's id when None.

        An unknown id and another user's id are both NotFound, with the same message, so a
        caller cannot probe which session ids exist.
        """
        _check_text("user_id", user_id, MAX_NAME_CHARS)
        now = time.time()
        with self._transaction() as session:
            if session_id is not None:
                self._owned_session(session, user_id, session_id)
                return session_id
            new_id = uuid.uuid4().hex
            session.add(ChatSessionRow(id=new_id, user_id=user_id, created_at=now,
                                       updated_at=now, summary=None))
            return new_id

    def add_message(self, user_id: str, session_id: str, role: str, content: str) -> None:
        """Append one message to this user's session."""
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
        if not isinstance(content, str):
            raise StoreError(f"content must be a string (got {type(content).__name__})")
        now = time.time()
        with self._transaction() as session:
            chat = self._owned_session(session, user_id, session_id)
            chat.updated_at = now
            session.add(MessageRow(session_id=session_id, role=role, content=content,
                                   created_at=now, summarized=False))

    def session_messages(self, user_id: str, session_id: str) -> list[dict[str, Any]]:
        """The session's messages not yet replaced by its summary, oldest first."""
        with self._sessions() as session:
            self._owned_session(session, user_id, session_id)
            rows = session.scalars(
                select(MessageRow)
                .where(MessageRow.session_id == session_id, MessageRow.summarized.is_(False))
                .order_by(MessageRow.id)).all()
        return [_message_dict(row) for row in rows]

    def set_summary(self, user_id: str, session_id: str, summary: str, *, keep_last: int
                    ) -> None:
        """Store the summary of older turns; all but the last `keep_last` live messages are
        flagged as summarized (kept in the table, no longer returned by session_messages)."""
        if keep_last < 0:
            raise StoreError(f"keep_last must be >= 0 (got {keep_last})")
        if not isinstance(summary, str):
            raise StoreError("summary must be a string")
        with self._transaction() as session:
            chat = self._owned_session(session, user_id, session_id)
            live = session.scalars(
                select(MessageRow.id)
                .where(MessageRow.session_id == session_id, MessageRow.summarized.is_(False))
                .order_by(MessageRow.id)).all()
            older = live[:max(0, len(live) - keep_last)]
            if older:
                session.execute(update(MessageRow).where(MessageRow.id.in_(older))
                                .values(summarized=True))
            chat.summary = summary
            chat.updated_at = time.time()

    def session_summary(self, user_id: str, session_id: str) -> str | None:
        """The session's summary of its older turns, or None when it has none yet."""
        with self._sessions() as session:
            return self._owned_session(session, user_id, session_id).summary

    @staticmethod
    def _owned_session(session: Session, user_id: str, session_id: str) -> ChatSessionRow:
        chat = session.get(ChatSessionRow, session_id) if isinstance(session_id, str) else None
        if chat is None or chat.user_id != user_id:
            raise NotFound(f"no session {session_id!r} for this user; omit the session id "
                           "to start a new one")
        return chat

    # ------------------------------------------------------------------------ traces

    def record_trace(self, *, user_id: str, session_id: str | None, question: str,
                     steps: list[dict[str, Any]], final_answer: str | None, error: str | None,
                     adapter_version: str) -> str:
        """Store what the agent did for one question; returns the trace id."""
        _check_text("user_id", user_id, MAX_NAME_CHARS)
        steps_json = _steps_json(steps)
        trace_id = uuid.uuid4().hex
        with self._transaction() as session:
            if session_id is not None:
                self._owned_session(session, user_id, session_id)
            session.add(TraceRow(id=trace_id, user_id=user_id, session_id=session_id,
                                 question=question, steps_json=steps_json,
                                 final_answer=final_answer, error=error,
                                 adapter_version=adapter_version, created_at=time.time()))
        return trace_id

    def set_feedback(self, user_id: str, trace_id: str, rating: int,
                     comment: str | None = None) -> None:
        """Rate one of this user's traces: -1 bad, 0 neutral, 1 good (a new rating replaces
        the old one)."""
        if isinstance(rating, bool) or rating not in RATINGS:
            raise StoreError(f"rating must be -1, 0 or 1 (got {rating!r})")
        if comment is not None and len(comment) > MAX_COMMENT_CHARS:
            raise StoreError(f"comment is longer than {MAX_COMMENT_CHARS} characters")
        with self._transaction() as session:
            trace = session.get(TraceRow, trace_id) if isinstance(trace_id, str) else None
            if trace is None or trace.user_id != user_id:
                raise NotFound(f"no trace {trace_id!r} for this user")
            trace.feedback = rating
            trace.feedback_comment = comment
            trace.feedback_at = time.time()

    def traces_since(self, since: float | None) -> list[dict[str, Any]]:
        """Traces recorded or rated after `since` (all with None), oldest first, steps parsed.

        A trace rated after the last harvest comes back even when it is older: its feedback
        is new information (the harvest dedupes what it has already seen).
        """
        query = select(TraceRow).order_by(TraceRow.created_at, TraceRow.id)
        if since is not None:
            query = query.where(or_(TraceRow.created_at > since, TraceRow.feedback_at > since))
        with self._sessions() as session:
            rows = session.scalars(query).all()
        return [_trace_dict(row) for row in rows]

    # ------------------------------------------------------------------------ agent runs

    def record_run(self, *, user_id: str, session_id: str | None, question: str, reply: str,
                   steps: list[dict[str, Any]], final_answer: str | None, error: str | None,
                   adapter_version: str, memory: str | None, memory_kind: str = "episode",
                   fold: Fold | None = None) -> tuple[str, str]:
        """Store one agent run in ONE transaction; returns (run id, session id).

        The session (a new one when `session_id` is None), the question and `reply` as
        messages, the trace, the `memory` to write to Chroma (pending until
        `memory_written`) and the session's `fold` commit together or not at all: a crash
        or a refusal (NotFound for a session that is not the user's) leaves nothing."""
        _check_text("user_id", user_id, MAX_NAME_CHARS)
        steps_json = _steps_json(steps)
        run_id = uuid.uuid4().hex
        now = time.time()
        with self._transaction() as session:
            if session_id is None:
                session_id = uuid.uuid4().hex
                chat = ChatSessionRow(id=session_id, user_id=user_id, created_at=now,
                                      updated_at=now, summary=None)
                session.add(chat)
                session.flush()  # the messages' foreign key needs the session row
            else:
                chat = self._owned_session(session, user_id, session_id)
                chat.updated_at = now
            session.add(TraceRow(id=run_id, user_id=user_id, session_id=session_id,
                                 question=question, steps_json=steps_json,
                                 final_answer=final_answer, error=error,
                                 adapter_version=adapter_version, created_at=now))
            session.flush()  # the pending memory's foreign key needs the trace
            for role, content in (("user", question), ("assistant", reply)):
                session.add(MessageRow(session_id=session_id, role=role, content=content,
                                       created_at=now, summarized=False, run_id=run_id))
            if memory:
                session.add(PendingMemoryRow(run_id=run_id, user_id=user_id, text=memory,
                                             kind=memory_kind, created_at=now))
            session.flush()
            if fold is not None:
                live = session.scalars(select(MessageRow).where(
                    MessageRow.session_id == session_id, MessageRow.summarized.is_(False))
                    .order_by(MessageRow.id)).all()
                if len(live) > fold.after:
                    older = live[:len(live) - fold.keep_last]
                    chat.summary = fold.summarise(chat.summary,
                                                  [_message_dict(m) for m in older])
                    for message in older:
                        message.summarized = True
        return run_id, session_id

    def pending_memories(self) -> list[PendingMemory]:
        """Memories committed with their run but not confirmed in Chroma, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(select(PendingMemoryRow)
                                   .order_by(PendingMemoryRow.created_at)).all()
        return [PendingMemory(r.run_id, r.user_id, r.text, r.kind, r.created_at) for r in rows]

    def memory_written(self, run_id: str) -> None:
        """Chroma has the run's memory: it is pending no more."""
        with self._transaction() as session:
            session.execute(delete(PendingMemoryRow).where(PendingMemoryRow.run_id == run_id))

    # ------------------------------------------------------------------------ forgetting

    def forget_run(self, user_id: str, run_id: str, resummarise: Summarise | None = None
                   ) -> bool:
        """Delete one of this user's runs wherever SQL holds its text, in one transaction:
        its trace (feedback included), its messages, its pending memory; the summary of a
        session that folded them is rebuilt from the messages left (`resummarise`, else
        dropped). False, changing nothing, when the user has no such run."""
        with self._transaction() as session:
            trace = session.get(TraceRow, run_id) if isinstance(run_id, str) else None
            if trace is None or trace.user_id != user_id:
                return False
            linked = select(MessageRow).where(MessageRow.run_id == run_id)
            doomed = list(session.scalars(linked).all())
            if not doomed and trace.session_id is not None:
                doomed = self._unlinked_run_messages(session, trace)
            sessions = {m.session_id for m in doomed} | ({trace.session_id} - {None})
            for message in doomed:
                session.delete(message)
            session.execute(delete(PendingMemoryRow).where(PendingMemoryRow.run_id == run_id))
            session.delete(trace)
            session.flush()
            for chat_id in sessions:
                chat = session.get(ChatSessionRow, chat_id)
                if chat is None or chat.summary is None:
                    continue
                folded = [_message_dict(m) for m in session.scalars(select(MessageRow).where(
                    MessageRow.session_id == chat_id, MessageRow.summarized.is_(True))
                    .order_by(MessageRow.id)).all()]
                chat.summary = (resummarise(None, folded) or None) \
                    if resummarise is not None and folded else None
        return True

    @staticmethod
    def _unlinked_run_messages(session: Session, trace: TraceRow) -> list[MessageRow]:
        """A run stored before messages carried their run id: its question in its session,
        each with the assistant message that follows it."""
        rows = session.scalars(select(MessageRow).where(
            MessageRow.session_id == trace.session_id, MessageRow.run_id.is_(None))
            .order_by(MessageRow.id)).all()
        found = []
        for index, row in enumerate(rows):
            if row.role == "user" and row.content == trace.question:
                found.append(row)
                if index + 1 < len(rows) and rows[index + 1].role == "assistant":
                    found.append(rows[index + 1])
        return found

    def forget_user(self, user_id: str) -> dict[str, int]:
        """Delete everything SQL holds of this user's history in one transaction: sessions,
        messages, runs (traces, feedback) and pending memories; API keys stay. Counts."""
        _check_text("user_id", user_id, MAX_NAME_CHARS)
        with self._transaction() as session:
            chats = select(ChatSessionRow.id).where(ChatSessionRow.user_id == user_id)
            counts = self._user_counts(session, user_id)
            session.execute(delete(PendingMemoryRow).where(PendingMemoryRow.user_id == user_id))
            session.execute(delete(TraceRow).where(TraceRow.user_id == user_id))
            session.execute(delete(MessageRow).where(MessageRow.session_id.in_(chats)))
            session.execute(delete(ChatSessionRow).where(ChatSessionRow.user_id == user_id))
        return counts

    def user_counts(self, user_id: str) -> dict[str, int]:
        """How many sessions, messages and runs SQL holds for this user."""
        with self._sessions() as session:
            return self._user_counts(session, user_id)

    @staticmethod
    def _user_counts(session: Session, user_id: str) -> dict[str, int]:
        chats = select(ChatSessionRow.id).where(ChatSessionRow.user_id == user_id)

        def count(query: Any) -> int:
            return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)

        return {"sessions": count(chats),
                "messages": count(select(MessageRow.id).where(MessageRow.session_id.in_(chats))),
                "runs": count(select(TraceRow.id).where(TraceRow.user_id == user_id))}


# ---------------------------------------------------------------------------- helpers


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (harvest, CLI) never block the service's writes, nor it theirs.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
    cursor.close()


def _steps_json(steps: list[dict[str, Any]]) -> str:
    try:
        return json.dumps(steps, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"steps must be JSON-serialisable dicts ({exc})") from None


def _message_dict(row: MessageRow) -> dict[str, Any]:
    return {"role": row.role, "content": row.content, "created_at": row.created_at}


def _check_text(field: str, value: Any, limit: int) -> None:
    if not isinstance(value, str) or not value.strip():
        raise StoreError(f"{field} must be a non-empty string (got {value!r})")
    if len(value) > limit:
        raise StoreError(f"{field} is longer than {limit} characters")


def _trace_dict(row: TraceRow) -> dict[str, Any]:
    try:
        steps = json.loads(row.steps_json)
    except ValueError:
        steps = None  # the harvest drops it as malformed rather than crash on one bad row
    return {"id": row.id, "user_id": row.user_id, "session_id": row.session_id,
            "question": row.question, "steps": steps, "final_answer": row.final_answer,
            "error": row.error, "adapter_version": row.adapter_version,
            "created_at": row.created_at, "feedback": row.feedback,
            "feedback_comment": row.feedback_comment, "feedback_at": row.feedback_at}
