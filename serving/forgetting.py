"""Forgetting: one memory with the run it came from, or a user's whole history.

A memory an agent run left carries the run's id; forgetting it also forgets the run
wherever its text is: the trace (and its feedback), so no later harvest trains on it; the
session's two messages; the session summary, rebuilt from what is left. SQL goes first (one
transaction), Chroma second, so a failure between them leaves the memory findable and the
call can simply be repeated.

What was harvested into a training set before, and the adapters trained on it, are not
rewritten: forgetting acts on what the service stores, from now on.
"""

from __future__ import annotations

from agent.memory import MemoryStore
from serving.agent_runs import summarise_session
from serving.schemas import UserData
from storage.store import Store


def forget_memory(store: Store, memory: MemoryStore, user_id: str, memory_id: str) -> bool:
    """Forget one of the user's memories and the run that left it; False when the user has
    no memory by that id (another user's included: nothing changes)."""
    found = memory.get(user_id, memory_id)
    if found is None:
        return False
    run_id = found.metadata.get("run_id")
    if run_id:
        store.forget_run(user_id, run_id, resummarise=summarise_session)
    memory.delete(user_id, memory_id)
    if run_id:
        memory.delete_run(user_id, run_id)  # a copy re-added by a start-up reconcile
    return True


def forget_user(store: Store, memory: MemoryStore, user_id: str) -> UserData:
    """Forget everything of the user's history: sessions, messages, runs, memories.

    Their API keys stay valid (revoke them with `evolora keys revoke`); a request of theirs
    still in flight may store its run after this."""
    counts = store.forget_user(user_id)
    return UserData(memories=memory.delete_user(user_id), **counts)


def user_data(store: Store, memory: MemoryStore, user_id: str) -> UserData:
    """How much of the user's history is stored."""
    return UserData(memories=memory.count(user_id), **store.user_counts(user_id))
