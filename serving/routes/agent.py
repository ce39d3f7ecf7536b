"""The ReAct agent with memory and sessions; `stream: true` sends its steps as they happen."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from agent.loop import AgentStep
from evolora.logs import get_logger
from serving.agent_runs import ServedRun, prepare_run, run_prepared
from serving.checks import PromptTooLong, check_prompt_length
from serving.deps import (
    Caller,
    LoaderDep,
    MemoryDep,
    MeteredCallerDep,
    RuntimeDep,
    Services,
    ServicesDep,
    StoreDep,
)
from serving.schemas import AgentRunRequest, AgentRunResponse, AgentStepOut
from storage.store import NotFound

log = get_logger(__name__)

router = APIRouter(prefix="/v1/agent", tags=["agent"])


@router.post("/runs", response_model=AgentRunResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
async def create_run(body: AgentRunRequest, caller: MeteredCallerDep, services: ServicesDep,
                     runtime: RuntimeDep, loader: LoaderDep, store: StoreDep,
                     memory: MemoryDep) -> Response:
    """Ask the agent; `session_id` continues a conversation (omit it to start one).

    With `stream: true` the answer is server-sent events: one `step` event per tool step as
    soon as its tool has answered, then one `answer` event (the whole response), `[DONE]`."""
    # Whitespace around a question is no part of it (the schema demands some text).
    question = body.question.strip()
    check_prompt_length(services.settings, len(question))
    try:
        prepared = await run_in_threadpool(
            prepare_run, runtime, store, memory, user_id=caller.user_id, question=question,
            session_id=body.session_id, max_new_tokens=services.settings.model.max_new_tokens,
            max_prompt_tokens=services.settings.serving.max_prompt_tokens)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such session") from None
    except PromptTooLong as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None

    def run(on_step: Any = None) -> ServedRun:
        served = run_prepared(runtime, loader, store, memory, prepared, on_step)
        _account(services, caller, served)
        return served

    if body.stream:
        return _stream(run)
    served = await run_in_threadpool(run)
    return Response(_response(served).model_dump_json(), media_type="application/json")


def _account(services: Services, caller: Caller, served: ServedRun) -> None:
    """Charge the run's tokens and count its outcome."""
    services.token_budget.charge(caller.key_id, served.tokens)
    services.metrics.agent_runs.labels("answered" if served.run.final_answer is not None
                                       else "error").inc()


def _step_out(step: AgentStep) -> AgentStepOut:
    return AgentStepOut(thought=step.thought, tool=step.tool, argument=step.argument,
                        observation=step.observation)


def _response(served: ServedRun) -> AgentRunResponse:
    run = served.run
    return AgentRunResponse(
        run_id=served.run_id, session_id=served.session_id, final_answer=run.final_answer,
        steps=[_step_out(s) for s in run.steps], error=run.error, adapter=served.adapter)


_END = object()


def _stream(run: Any) -> StreamingResponse:
    """The run in a thread of its own, its steps and answer sent as they come.

    A client that leaves mid-stream does not stop the run (its work is bounded by the
    step and token limits, as a non-streamed run's is): it ends, is stored and charged."""
    events: queue.Queue[Any] = queue.Queue()

    def work() -> None:
        try:
            events.put(run(lambda step: events.put(_step_out(step))))
        except Exception as exc:  # the client gets a sentence; the log has the cause
            log.error("agent.stream_failed", error_type=type(exc).__name__, error=str(exc))
            events.put(exc)
        finally:
            events.put(_END)

    threading.Thread(target=work, name="agent-run", daemon=True).start()

    async def sse() -> AsyncIterator[str]:
        while (event := await run_in_threadpool(events.get)) is not _END:
            if isinstance(event, AgentStepOut):
                data = {"type": "step", **event.model_dump()}
            elif isinstance(event, Exception):
                data = {"type": "error", "message": "internal server error"}
            else:
                data = {"type": "answer", **_response(event).model_dump()}
            yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(sse(), media_type="text/event-stream")
