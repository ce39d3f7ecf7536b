"""The ReAct agent with memory and sessions."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool

from serving.agent_runs import answer_question
from serving.checks import PromptTooLong, check_prompt_length
from serving.deps import (
    LoaderDep,
    MemoryDep,
    MeteredCallerDep,
    RuntimeDep,
    ServicesDep,
    StoreDep,
)
from serving.schemas import AgentRunRequest, AgentRunResponse, AgentStepOut
from storage.store import NotFound

router = APIRouter(prefix="/v1/agent", tags=["agent"])


@router.post("/runs", response_model=AgentRunResponse)
async def create_run(body: AgentRunRequest, caller: MeteredCallerDep, services: ServicesDep,
                     runtime: RuntimeDep, loader: LoaderDep, store: StoreDep,
                     memory: MemoryDep) -> AgentRunResponse:
    """Ask the agent; `session_id` continues a conversation (omit it to start one)."""
    # Whitespace around a question is no part of it (the schema demands some text).
    question = body.question.strip()
    check_prompt_length(services.settings, len(question))
    try:
        served = await run_in_threadpool(
            answer_question, runtime, loader, store, memory, user_id=caller.user_id,
            question=question, session_id=body.session_id,
            max_new_tokens=services.settings.model.max_new_tokens,
            max_prompt_tokens=services.settings.serving.max_prompt_tokens)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such session") from None
    except PromptTooLong as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    services.token_budget.charge(caller.key_id, served.tokens)
    run = served.run
    services.metrics.agent_runs.labels("answered" if run.final_answer is not None
                                       else "error").inc()
    return AgentRunResponse(
        run_id=served.run_id, session_id=served.session_id, final_answer=run.final_answer,
        steps=[AgentStepOut(thought=s.thought, tool=s.tool, argument=s.argument,
                            observation=s.observation) for s in run.steps],
        error=run.error, adapter=served.adapter)
