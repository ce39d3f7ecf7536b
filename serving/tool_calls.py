"""OpenAI chat requests as the ReAct text the model was trained on, and its steps as replies.

The model only knows one format (`agent.react_format`): a system prompt that lists tools,
then Thought / Action / Action Input / Observation lines up to a Final Answer. So a request
is rendered into it, whatever tools it brings:

- the request's `tools` are listed in the system prompt as the built-in ones are;
- an earlier assistant `tool_calls` entry becomes Thought / Action / Action Input, and the
  `role: tool` message answering it the Observation;
- an earlier plain assistant answer becomes the Final Answer step that ends a turn.

One generated step is read back with `parse_step`: an Action on an offered tool becomes a
`tool_calls` entry, a Final Answer the content, anything else the raw text, marked as such.
Our tools take one text argument; in OpenAI's JSON arguments it sits under the schema's one
property, or under `input`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from agent.react_format import (
    FINAL_THOUGHT,
    parse_step,
    render_action,
    render_conversation,
    render_final,
    render_observation,
    tools_system_prompt,
)
from serving.schemas import ChatCompletionRequest, ChatMessage, FunctionCall, ToolCall, ToolSpec

INPUT_KEY = "input"
# Written after the conversation when the caller sends `tool_choice: "none"`: the opening of
# the closing step every training trace ends with, so the model can only write the answer.
FORCED_ANSWER = render_final(FINAL_THOUGHT, "").rstrip()


@dataclass
class StepReply:
    """What one generated step answers: content and/or tool calls, or raw text and an error."""

    content: str | None
    finish_reason: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None


def argument_key(tool: ToolSpec) -> str:
    """The name the tool's one text argument goes under: its schema's only property, else
    `input`."""
    properties = (tool.function.parameters or {}).get("properties")
    if isinstance(properties, dict) and len(properties) == 1:
        return str(next(iter(properties)))
    return INPUT_KEY


def call_arguments(tool: ToolSpec, argument: str) -> str:
    """OpenAI's `arguments` (a JSON object as text) for the model's text argument."""
    return json.dumps({argument_key(tool): argument})


def argument_text(arguments: str | dict[str, Any]) -> str:
    """The one text argument of a call's `arguments`: a single-key object's value; anything
    else (several keys, not JSON) as its text."""
    value: Any = arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except ValueError:
            return arguments
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    return value if isinstance(value, str) else json.dumps(value)


def system_prompt(react_system: str, messages: list[ChatMessage]) -> str:
    """The ReAct system prompt, then the caller's own system (and developer) messages: the
    model needs the tool list and the format first, as in training."""
    own = [m.text().strip() for m in messages if m.role in ("system", "developer")]
    return "\n\n".join([react_system, *[text for text in own if text]])


def react_turns(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    """The conversation as ("user" | "assistant", text) turns of ReAct text, for
    `render_conversation`.

    A tool call is written when its result arrives (matched by `tool_call_id`, else the next
    one waiting), so calls made side by side still read Action, Observation, Action, ...
    """
    turns: list[tuple[str, str]] = []
    waiting: list[tuple[str, str]] = []  # (call id, its Action text) without a result yet

    def flush_waiting() -> None:
        turns.extend(("assistant", action) for _, action in waiting)
        waiting.clear()

    for message in messages:
        if message.role == "tool":
            index = next((i for i, (call_id, _) in enumerate(waiting)
                          if call_id == message.tool_call_id), 0)
            action = waiting.pop(index)[1] if waiting else ""
            turns.append(("assistant", action + render_observation(message.text())))
            continue
        flush_waiting()
        if message.role == "user":
            turns.append(("user", message.text()))
        elif message.role == "assistant" and message.tool_calls:
            waiting.extend((call.id, render_action(message.text(), call.function.name,
                                                   argument_text(call.function.arguments)))
                           for call in message.tool_calls)
        elif message.role == "assistant":
            turns.append(("assistant", render_final(FINAL_THOUGHT, message.text())))
    flush_waiting()
    return turns


def render_react_chat(messages: list[ChatMessage], react_system: str
                      ) -> tuple[list[dict[str, str]], str]:
    """The chat messages and the open assistant text (the prompt's assistant prefix) of a
    request's conversation, under `react_system` (a ReAct system prompt)."""
    return render_conversation(system_prompt(react_system, messages), react_turns(messages))


def tools_react_system(tools: list[ToolSpec]) -> str:
    """The ReAct system prompt listing the request's tools."""
    return tools_system_prompt([(t.function.name, t.function.description) for t in tools])


def read_step(text: str, tools: list[ToolSpec], forced: str = "") -> StepReply:
    """The reply for one generated step (`forced`: the text the prompt ended on)."""
    by_name = {tool.function.name.lower(): tool for tool in tools}
    step = parse_step(forced + text, set(by_name))
    if step.final_answer is not None:
        return StepReply(step.final_answer, "stop")
    if step.action is not None:
        tool = by_name[step.action.tool]
        call = ToolCall(id=f"call_{uuid.uuid4().hex[:24]}",
                        function=FunctionCall(name=tool.function.name,
                                              arguments=call_arguments(tool,
                                                                       step.action.argument)))
        return StepReply(step.thought or None, "tool_calls", [call])
    # Never a tool call the caller did not offer: the text goes back as it was written.
    return StepReply(text.strip(), "stop", error=f"malformed step: {step.error}")


def request_chars(body: ChatCompletionRequest) -> int:
    """The characters a request puts into the prompt: messages, call arguments, tools."""
    chars = 0
    for message in body.messages:
        chars += len(message.text())
        for call in message.tool_calls or []:
            chars += len(call.function.name) + len(argument_text(call.function.arguments))
    for tool in body.tools or []:
        chars += len(tool.function.name) + len(tool.function.description)
    return chars
