"""The caller's memories as the memory page shows them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from agent.memory import recency_weight


def memory_rows(memories: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Table rows: text, kind, importance, when it was made, its recency weight (1 now,
    halving every 30 days, as retrieval weighs it), the search score."""
    rows = []
    for memory in memories:
        created = float(memory.get("created_at") or now)
        rows.append({"text": memory["text"], "kind": memory.get("kind") or "",
                     "importance": memory.get("importance"),
                     "created": datetime.fromtimestamp(created, timezone.utc),
                     "recency": recency_weight(created, now), "score": memory.get("score"),
                     "id": memory["id"]})
    return rows
