"""OpenAI-compatible chat completions and model list."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Generator, Iterator

import anyio
from fastapi import APIRouter, HTTPException, Response, status
from fastapi.concurrency import run_in_threadpool

from engines.transformers_runtime import BASE_ADAPTER
from serving.checks import check_chat_request, check_prompt_tokens
from serving.deps import (
    Caller,
    CallerDep,
    LoaderDep,
    MeteredCallerDep,
    RuntimeDep,
    Services,
    ServicesDep,
)
from serving.generation import Completion, complete, stream_completion
from serving.hot_loader import CHAMPION_NAMES, UnknownModel, VersionNotApproved
from serving.react_chat import (
    ADAPTER_HEADER,
    answer_react,
    answers_in_react,
    check_tool_choice,
    react_response,
    request_prompt,
)
from serving.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceMessage,
    ModelCard,
    ModelList,
    Usage,
)
from serving.streaming import ClosingStreamingResponse, usage_and_done

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}}}})
async def chat_completions(body: ChatCompletionRequest, caller: MeteredCallerDep,
                           services: ServicesDep, runtime: RuntimeDep,
                           loader: LoaderDep) -> Response:
    """A chat completion (SSE stream with `stream: true`); header x-evolora-adapter says who.

    With `tools`, or for an adapter model, the model answers in its ReAct format
    (serving/react_chat.py); `model: base` without tools is a plain completion. Limits
    (serving/checks.py) are checked before any generation; the caller's token budget is
    charged with the usage."""
    max_new = check_chat_request(services.settings, body)
    check_tool_choice(body)
    try:
        await run_in_threadpool(loader.check_servable, body.model, caller.is_admin)
    except UnknownModel as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except VersionNotApproved as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    prompt = await run_in_threadpool(request_prompt, runtime, body)
    prompt_tokens = await run_in_threadpool(runtime.count_tokens, prompt)
    check_prompt_tokens(services.settings, prompt_tokens)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if answers_in_react(body):
        try:
            reply = await run_in_threadpool(answer_react, runtime, loader, services.metrics,
                                            body, max_new, prompt)
        except UnknownModel as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        services.token_budget.charge(caller.key_id,
                                     reply.prompt_tokens + reply.completion_tokens)
        return react_response(reply, body, completion_id, created)
    if body.stream:
        return await _stream(body, caller, runtime, loader, services, prompt, prompt_tokens,
                             max_new, completion_id, created)
    try:
        result = await run_in_threadpool(
            complete, runtime, loader, services.metrics, model=body.model, prompt=prompt,
            prompt_tokens=prompt_tokens, max_new_tokens=max_new, stop=body.stop_list(),
            temperature=body.temperature, top_p=body.top_p)
    except UnknownModel as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    services.token_budget.charge(caller.key_id, result.prompt_tokens + result.completion_tokens)
    headers = {ADAPTER_HEADER: result.adapter}
    payload = ChatCompletion(
        id=completion_id, created=created, model=body.model,
        choices=[Choice(message=ChoiceMessage(content=result.text),
                        finish_reason=result.finish_reason)],  # type: ignore[arg-type]
        usage=_usage(result), evolora_adapter=result.adapter)
    return Response(payload.model_dump_json(), media_type="application/json", headers=headers)


async def _stream(body: ChatCompletionRequest, caller: Caller, runtime: RuntimeDep,
                  loader: LoaderDep, services: Services, prompt: str, prompt_tokens: int,
                  max_new: int, completion_id: str, created: int) -> ClosingStreamingResponse:
    """Server-sent events, token pieces as the model writes them (live, not replayed).

    The lease (which may download and attach a version: seconds) and the first piece are
    taken in a worker thread, never on the event loop. A failure before the first piece is
    an HTTP error, not a cut stream. However the response ends (the client may leave
    mid-stream, or before it began), `finish` closes the generation (the engine stops),
    releases the adapter and charges what was generated."""
    lease = loader.lease(body.model)
    leased: list[str] = []
    try:
        await run_in_threadpool(lambda: leased.append(lease.__enter__()))
    except UnknownModel as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except BaseException:
        # Cancelled (the client left) while the lease was being taken: the thread ran on.
        if leased:
            lease.__exit__(None, None, None)
        raise
    adapter = leased[0]
    done = Completion("", adapter, prompt_tokens, 0, 0.0, "stop")
    pieces = stream_completion(runtime, loader, services.metrics, adapter=adapter,
                               prompt=prompt, max_new_tokens=max_new, stop=body.stop_list(),
                               temperature=body.temperature, top_p=body.top_p, done=done)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def finish() -> None:
        try:
            pieces.close()  # fills `done` with what was generated until now
        finally:
            lease.__exit__(None, None, None)
            services.token_budget.charge(caller.key_id,
                                         done.prompt_tokens + done.completion_tokens)

    try:
        first = await run_in_threadpool(next, pieces, None)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(finish)
        raise
    return ClosingStreamingResponse(
        _sse_events(completion_id, created, body.model, done, _after(first, pieces),
                    include_usage),
        on_close=finish, media_type="text/event-stream", headers={ADAPTER_HEADER: adapter})


def _after(first: str | None, rest: Iterator[str]) -> Generator[str, None, None]:
    """`first` (None: the reply was empty), then the rest of the pieces."""
    if first is not None:
        yield first
    yield from rest


def _usage(result: Completion) -> Usage:
    return Usage.of(result.prompt_tokens, result.completion_tokens)


def _sse_events(completion_id: str, created: int, model: str, result: Completion,
                pieces: Iterator[str], include_usage: bool) -> Generator[str, None, None]:
    def chunk(delta: dict[str, str], finish: str | None) -> str:
        data = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": model, "evolora_adapter": result.adapter,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(data)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    for piece in pieces:
        yield chunk({"content": piece}, None)
    yield chunk({}, result.finish_reason)
    yield from usage_and_done(completion_id, created, model, result.adapter,
                              _usage(result) if include_usage else None)


@router.get("/models", response_model=ModelList)
def list_models(caller: CallerDep, loader: LoaderDep) -> ModelList:
    """The names `model` accepts from this caller: evolora, champion, base and the registered
    versions (gate-approved ones only without an admin key)."""
    names = [*CHAMPION_NAMES, BASE_ADAPTER]
    names += [f"v{v}" for v in loader.registered_versions(approved_only=not caller.is_admin)]
    return ModelList(data=[ModelCard(id=name) for name in names])
