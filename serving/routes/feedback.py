"""Feedback on an agent run: the harvest step reads it to pick training examples, and it
moves the importance of the memory the run left."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool

from serving.deps import CallerDep, MemoryDep, StoreDep
from serving.schemas import FeedbackRequest, FeedbackResponse
from storage.store import NotFound

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])


@router.post("", response_model=FeedbackResponse)
async def give_feedback(body: FeedbackRequest, caller: CallerDep, store: StoreDep,
                        memory: MemoryDep) -> FeedbackResponse:
    """Rate one of the caller's runs: -1, 0 or 1; 404 for a run that is not theirs. The
    rating also moves the importance of the memory the run left."""
    try:
        await run_in_threadpool(store.set_feedback, caller.user_id, body.run_id, body.rating,
                                body.comment)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such run") from None
    await run_in_threadpool(memory.apply_feedback, caller.user_id, body.run_id, body.rating)
    return FeedbackResponse(run_id=body.run_id, rating=body.rating)
