"""Feedback on an agent run: the harvest step reads it to pick training examples."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool

from serving.deps import CallerDep, StoreDep
from serving.schemas import FeedbackRequest, FeedbackResponse
from storage.store import NotFound

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])


@router.post("", response_model=FeedbackResponse)
async def give_feedback(body: FeedbackRequest, caller: CallerDep,
                        store: StoreDep) -> FeedbackResponse:
    """Rate one of the caller's runs: -1, 0 or 1; 404 for a run that is not theirs."""
    try:
        await run_in_threadpool(store.set_feedback, caller.user_id, body.run_id, body.rating,
                                body.comment)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such run") from None
    return FeedbackResponse(run_id=body.run_id, rating=body.rating)
