"""The SQL tables of the store (storage/store.py), and the columns added to older databases.

`create_all` makes missing tables but never changes an existing one: a database written by
an earlier version lacks the columns added since. `add_missing_columns` adds them (all are
nullable, so old rows stay valid) with their indexes, at every open.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MAX_NAME_CHARS = 200
DISPLAY_PREFIX_CHARS = 8


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
    # The agent run (trace) that wrote it: forgetting the run removes its messages.
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)


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


class PendingMemoryRow(Base):
    """A memory an agent run committed in SQL but may not have written to Chroma yet: the
    service removes the row once Chroma has it, and re-adds what is left at start."""

    __tablename__ = "pending_memories"

    run_id: Mapped[str] = mapped_column(ForeignKey("traces.id", ondelete="CASCADE"),
                                        primary_key=True)
    user_id: Mapped[str] = mapped_column(String(MAX_NAME_CHARS), index=True)
    text: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[float] = mapped_column(Double)


def add_missing_columns(engine: Engine) -> list[str]:
    """Add the columns our tables have and the database's lack; returns `table.column`s."""
    inspector = inspect(engine)
    added = []
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            if not inspector.has_table(table.name):
                continue
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                if not column.nullable:
                    raise RuntimeError(f"cannot add the non-null column {table.name}."
                                       f"{column.name} to an existing database")
                kind = column.type.compile(dialect=engine.dialect)
                connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN '
                                        f'{column.name} {kind}'))
                for index in table.indexes:
                    if column.name in index.columns:
                        index.create(connection, checkfirst=True)
                added.append(f"{table.name}.{column.name}")
    return added
