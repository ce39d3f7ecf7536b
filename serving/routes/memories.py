"""The caller's long-term memories: list, search, delete (with the run that left it)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool

from agent.memory import MAX_MEMORY_CHARS
from serving.checks import check_prompt_length
from serving.deps import CallerDep, MemoryDep, ServicesDep, StoreDep, json_safe
from serving.forgetting import forget_memory
from serving.schemas import MemoryList, MemoryOut

router = APIRouter(prefix="/v1/memories", tags=["memories"])


def memory_out(memory: Any, score: float | None = None) -> MemoryOut:
    return MemoryOut(id=str(memory.id), text=memory.text, kind=memory.kind,
                     importance=memory.importance, created_at=json_safe(memory.created_at),
                     metadata=dict(memory.metadata or {}), score=score)


@router.get("", response_model=MemoryList)
async def list_memories(caller: CallerDep, memory: MemoryDep,
                        limit: Annotated[int, Query(ge=1, le=500)] = 50,
                        offset: Annotated[int, Query(ge=0)] = 0) -> MemoryList:
    """The caller's memories, newest first."""
    found = await run_in_threadpool(memory.list, caller.user_id, limit=limit, offset=offset)
    return MemoryList(data=[memory_out(m) for m in found])


@router.get("/search", response_model=MemoryList)
async def search_memories(caller: CallerDep, memory: MemoryDep, services: ServicesDep,
                          q: Annotated[str, Query(min_length=1)],
                          k: Annotated[int | None, Query(ge=1, le=100)] = None) -> MemoryList:
    """The caller's memories nearest in meaning to `q`, best first, with their scores."""
    # Whitespace is no part of a query: cut first, or a padded one would search for blanks.
    query = q.strip()
    if not query:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "q must contain some text")
    check_prompt_length(services.settings, len(query))
    # Memories are at most MAX_MEMORY_CHARS long; a longer query matches no better.
    found = await run_in_threadpool(memory.search, caller.user_id, query[:MAX_MEMORY_CHARS], k)
    return MemoryList(data=[memory_out(m, float(score)) for m, score in found])


@router.delete("/{memory_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_memory(memory_id: str, caller: CallerDep, memory: MemoryDep,
                        store: StoreDep) -> Response:
    """Forget one memory, and the agent run that left it: its trace (never harvested for
    training now), its two messages, and its part of the session summary; 404 if the
    caller has no memory by that id."""
    if not await run_in_threadpool(forget_memory, store, memory, caller.user_id, memory_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such memory")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
