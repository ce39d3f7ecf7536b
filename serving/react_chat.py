"""Chat completions the model answers in its ReAct format: a step for the caller's tools, or
the agent with the built-in tools.

With `tools` in the request, the model writes one step; a call on one of those tools goes
back to the caller (`finish_reason: "tool_calls"`), who runs it and sends the result. Without
`tools`, an adapter model (champion, evolora, v<N>) answers by running the ReAct agent on
its own tools (calculator, convert, date, currency) for real, and the reply is the final
answer, with the steps in `evolora_steps`. `model: base` without tools stays a plain
chat-template completion (serving/generation.py).

A streamed reply is sent as chunks once the step (or the run) is done: the ReAct text must
be complete before it can be read as a tool call or an answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Response, status
from fastapi.responses import StreamingResponse

from agent.loop import run_agent_batch
from agent.react_format import STOP_SEQUENCE, SYSTEM_PROMPT
from agent.tools import default_tools
from engines.engine import AdapterView, InferenceEngine
from engines.transformers_runtime import BASE_ADAPTER
from serving.generation import chat_prompt
from serving.hot_loader import AdapterHotLoader
from serving.metrics import ServingMetrics
from serving.schemas import (
    AgentStepOut,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceMessage,
    ToolCall,
    Usage,
)
from serving.streaming import usage_and_done
from serving.tool_calls import FORCED_ANSWER, read_step, render_react_chat, tools_react_system

# Tool calls one chat request may make through the agent: each is a generation, and a
# request must not run without bound.
AGENT_MAX_STEPS = 4
ADAPTER_HEADER = "x-evolora-adapter"


@dataclass
class ReactReply:
    """A finished ReAct answer: content and/or tool calls, token counts, the adapter."""

    adapter: str
    content: str | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tool_calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None
    steps: list[AgentStepOut] | None = None


def answers_in_react(body: ChatCompletionRequest) -> bool:
    """Whether the request is answered in the ReAct format (tools sent, or an adapter model);
    otherwise (`model: base`, or `evolora_raw: true`) it is a plain completion."""
    if body.tools:
        return True
    return not body.evolora_raw and (body.model or "").strip() != BASE_ADAPTER


def check_tool_choice(body: ChatCompletionRequest) -> None:
    """400 for a `tool_choice` we cannot honour: the model may always answer instead."""
    choice = body.tool_choice
    if choice is None or choice in ("auto", "none"):
        return
    asked = repr(choice) if isinstance(choice, str) else "a named function"
    raise HTTPException(status.HTTP_400_BAD_REQUEST,
                        f"tool_choice {asked} cannot be honoured: the model decides itself "
                        "whether to call a tool; send tool_choice 'auto' (or omit it), or "
                        "'none' to get an answer without tool calls")


def request_prompt(engine: InferenceEngine, body: ChatCompletionRequest) -> str:
    """The prompt the request's first generation continues: the ReAct step on its tools,
    the agent's first step, or the plain chat template; what the token limit is checked on."""
    if not answers_in_react(body):
        return chat_prompt(engine, body.messages)
    if body.tools:
        chat, prefix = render_react_chat(body.messages, tools_react_system(body.tools))
        return engine.chat_prompt(chat, assistant_prefix=prefix + _forced(body))
    chat, prefix = render_react_chat(body.messages, SYSTEM_PROMPT)
    return engine.chat_prompt(chat, assistant_prefix=prefix)


def _forced(body: ChatCompletionRequest) -> str:
    return FORCED_ANSWER if body.tool_choice == "none" else ""


def answer_react(engine: InferenceEngine, loader: AdapterHotLoader, metrics: ServingMetrics,
                 body: ChatCompletionRequest, max_new_tokens: int, prompt: str) -> ReactReply:
    """The ReAct answer to `body` from its `request_prompt`: one step on its tools, or the
    agent on the built-in ones."""
    if body.tools:
        return answer_with_tools(engine, loader, metrics, body, max_new_tokens, prompt)
    return answer_with_agent(engine, loader, metrics, body, max_new_tokens, prompt)


def answer_with_tools(engine: InferenceEngine, loader: AdapterHotLoader,
                      metrics: ServingMetrics, body: ChatCompletionRequest,
                      max_new_tokens: int, prompt: str) -> ReactReply:
    """One step on the request's tools: a tool call for the caller to run, or an answer."""
    tools = body.tools or []
    forced = _forced(body)
    with loader.lease(body.model) as adapter:
        started = time.perf_counter()
        text = engine.generate([prompt], max_new_tokens=max_new_tokens, stop=[STOP_SEQUENCE],
                               temperature=body.temperature, top_p=body.top_p,
                               adapter=adapter)[0]
        seconds = time.perf_counter() - started
    completion_tokens = engine.count_tokens(text)
    metrics.record_generation(adapter, completion_tokens, seconds)
    step = read_step(text, tools, forced)
    return ReactReply(adapter, step.content, step.finish_reason, engine.count_tokens(prompt),
                      completion_tokens, step.tool_calls, step.error)


@dataclass
class _SamplingView:
    """The engine on one adapter with the request's sampling, counting tokens: what the
    agent loop generates with."""

    view: AdapterView
    temperature: float
    top_p: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_reply: str = ""

    def chat_prompt(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        return self.view.chat_prompt(messages, assistant_prefix)

    def generate(self, prompts: list[str], max_new_tokens: int = 96,
                 stop: list[str] | None = None) -> list[str]:
        replies = self.view.generate(prompts, max_new_tokens=max_new_tokens, stop=stop,
                                     temperature=self.temperature, top_p=self.top_p)
        count = self.view.engine.count_tokens
        self.prompt_tokens += sum(count(prompt) for prompt in prompts)
        self.completion_tokens += sum(count(reply) for reply in replies)
        self.last_reply = replies[-1] if replies else ""
        return replies


def answer_with_agent(engine: InferenceEngine, loader: AdapterHotLoader,
                      metrics: ServingMetrics, body: ChatCompletionRequest,
                      max_new_tokens: int, prompt: str) -> ReactReply:
    """The agent's final answer, after running the built-in tools it asked for."""
    question = next((m.text() for m in reversed(body.messages) if m.role == "user"), "")
    with loader.lease(body.model) as adapter:
        view = _SamplingView(AdapterView(engine, adapter), body.temperature, body.top_p)
        started = time.perf_counter()
        run = run_agent_batch(view, [question], default_tools(), max_steps=AGENT_MAX_STEPS,
                              max_new_tokens=max_new_tokens, prompts=[prompt])[0]
        seconds = time.perf_counter() - started
    metrics.record_generation(adapter, view.completion_tokens, seconds)
    steps = [AgentStepOut(thought=s.thought, tool=s.tool, argument=s.argument,
                          observation=s.observation) for s in run.steps]
    if run.final_answer is not None:
        content, finish = run.final_answer, "stop"
    else:  # the model's own last words, so the caller sees what went wrong
        content = view.last_reply.strip()
        cut_off = engine.count_tokens(view.last_reply) >= max_new_tokens
        finish = "length" if cut_off else "stop"
    return ReactReply(adapter, content, finish, view.prompt_tokens, view.completion_tokens,
                      error=run.error, steps=steps)


def react_response(reply: ReactReply, body: ChatCompletionRequest, completion_id: str,
                   created: int) -> Response:
    """The reply as a chat completion, or as server-sent chunks with `stream: true`."""
    headers = {ADAPTER_HEADER: reply.adapter}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_chunks(reply, body.model, completion_id, created,
                                         include_usage),
                                 media_type="text/event-stream", headers=headers)
    payload = ChatCompletion(
        id=completion_id, created=created, model=body.model,
        choices=[Choice(message=ChoiceMessage(content=reply.content,
                                              tool_calls=reply.tool_calls or None),
                        finish_reason=reply.finish_reason)],  # type: ignore[arg-type]
        usage=_usage(reply), evolora_adapter=reply.adapter, evolora_steps=reply.steps,
        evolora_error=reply.error)
    return Response(payload.model_dump_json(), media_type="application/json", headers=headers)


def _usage(reply: ReactReply) -> Usage:
    return Usage.of(reply.prompt_tokens, reply.completion_tokens)


def _chunks(reply: ReactReply, model: str, completion_id: str, created: int,
            include_usage: bool) -> Iterator[str]:
    """OpenAI's chunk sequence: role, content, one `delta.tool_calls` entry per call (with
    its `index`), the finish (with our extension fields), usage if asked, [DONE]."""

    def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
        data = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": model, "evolora_adapter": reply.adapter,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(data)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    if reply.content:
        yield chunk({"content": reply.content}, None)
    for index, call in enumerate(reply.tool_calls):
        yield chunk({"tool_calls": [{"index": index, **call.model_dump()}]}, None)
    steps = None if reply.steps is None else [step.model_dump() for step in reply.steps]
    yield chunk({}, reply.finish_reason, evolora_steps=steps, evolora_error=reply.error)
    yield from usage_and_done(completion_id, created, model, reply.adapter,
                              _usage(reply) if include_usage else None)
