"""The service's SQL store: API keys, chat sessions and messages, agent traces and feedback.

SQLAlchemy 2.0 on any URL (`serving.database_url`, e.g. PostgreSQL); by default SQLite at
`<data_dir>/evolora.db` in WAL mode, so the nightly harvest can read while the service
writes. Every method opens its own short session: one `Store` is shared by all request
threads. Every per-user read and write checks ownership; another user's session or trace is
`NotFound`, exactly like a missing one, so ids never leak across users.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

if TYPE_CHECKING:
    from evolora.settings import Settings

KEY_PREFIX = "evk_"
DISPLAY_PREFIX_CHARS = 8
ROLES = ("system", "user", "assistant", "tool")
RATINGS = (-1, 0, 1)
MAX_NAME_CHARS = 200
MAX_COMMENT_CHARS = 2000


class StoreError(ValueError):
    """A request the store refuses; the message says why."""


class NotFound(StoreError):
    """No such record for this user (missing, or another user's: deliberately the same)."""


@dataclass
class KeyRecord:
    """An API key as it may be shown: never the key itself, only its display prefix."""

    id: str
    name: str
    user_id: str
    prefix: str
    is_admin: bool
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "user_id": self.user_id,
                "prefix": self.prefix, "is_admin": self.is_admin,
                "created_at": self.created_at, "revoked_at": self.revoked_at}


# ---------------------------------------------------------------------------- tables


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_CHARS))
    user_id: Mapped[str] = mapped_column(String(MAX_NAME_CHARS), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(DISPLAY_PREFIX_CHARS), index=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class ChatSessionRow(Base):
    __tablename__ = "chat_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(MAX_NAME_CHARS), index=True)
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)


class MessageRow(Base):
    __tablename__ = "messages"

    # An integer key orders messages exactly, even two written in the same microsecond.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("chat_sessions.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Double)
    # Set when a summary replaced the message in the prompt; kept for audit, not deleted.
    summarized: Mapped[bool] = mapped_column(Boolean, default=False)


class TraceRow(Base):
    __tablename__ = "traces"
    __table_args__ = (Index("ix_traces_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(MAX_NAME_CHARS), index=True)
    session_id: Mapped[str | None] = mapped_column(
        ForeignKey("chat_sessions.id", ondelete="SET NULL"), nullable=True)
    question: Mapped[str] = mapped_column(Text)
    steps_json: Mapped[str] = mapped_column(Text)
    final_answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    adapter_version: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Double)
    feedback: Mapped[int | None] = mapped_column(Integer, nullable=True)
    feedback_comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    # When feedback arrived: a trace rated after the last harvest is harvested again.
    feedback_at: Mapped[float | None] = mapped_column(Double, nullable=True, index=True)


# ---------------------------------------------------------------------------- the store


def hash_key(plaintext: str) -> str:
    """sha256 hex of an API key.

    A fast hash is the right tool here, unlike for passwords: keys are 256-bit random tokens,
    so there is nothing to brute-force or look up in a dictionary, and a slow KDF (bcrypt,
    argon2) would only add latency to every request.
    """
    return hashlib.sha256(plaintext.encode()).hexdigest()


def display_prefix(plaintext: str) -> str:
    """The 8 characters after "evk_": enough to tell keys apart, far too few to guess one."""
    return plaintext[len(KEY_PREFIX):len(KEY_PREFIX) + DISPLAY_PREFIX_CHARS]


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
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(id=uuid.uuid4().hex, name=name.strip(), user_id=user_id.strip(),
                        key_hash=hash_key(plaintext), prefix=display_prefix(plaintext),
                        is_admin=admin, created_at=time.time(), revoked_at=None)
        with self._transaction() as session:
            session.add(row)
        return plaintext, _key_record(row)

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
        return _key_record(match)

    def list_keys(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
        return [_key_record(row) for row in rows]

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
            return _key_record(row)

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
        return [{"role": r.role, "content": r.content, "created_at": r.created_at} for r in rows]

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
        try:
            steps_json = json.dumps(steps, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"steps must be JSON-serialisable dicts ({exc})") from None
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


# ---------------------------------------------------------------------------- helpers


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (harvest, CLI) never block the service's writes, nor it theirs.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
    cursor.close()


def _check_text(field: str, value: Any, limit: int) -> None:
    if not isinstance(value, str) or not value.strip():
        raise StoreError(f"{field} must be a non-empty string (got {value!r})")
    if len(value) > limit:
        raise StoreError(f"{field} is longer than {limit} characters")


def _key_record(row: ApiKeyRow) -> KeyRecord:
    return KeyRecord(id=row.id, name=row.name, user_id=row.user_id, prefix=row.prefix,
                     is_admin=bool(row.is_admin), created_at=row.created_at,
                     revoked_at=row.revoked_at)


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
