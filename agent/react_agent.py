"""The LangChain ReAct agent: `create_agent` over our local chat model and our tools.

The batched loop in `agent.loop` is what evaluation uses (it runs many problems at once);
this agent is what the service answers with (one conversation at a time, LangChain
middleware and memory around it). Both share the text format, the parser and the tools.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import StructuredTool
from langgraph.errors import GraphRecursionError

from agent.chat_model import TOOL_INPUT_KEY, LocalReActChatModel
from agent.loop import AgentRun, AgentStep
from agent.react_format import SYSTEM_PROMPT
from agent.tools import Tool, default_tools, run_tool
from engines.engine import InferenceEngine


def langchain_tools(tools: dict[str, Tool]) -> list[StructuredTool]:
    """Our tools as LangChain tools taking one string argument named `input`."""

    def make(tool: Tool) -> StructuredTool:
        def call(input: str) -> str:
            return run_tool(tools, tool.name, input)

        return StructuredTool.from_function(call, name=tool.name, description=tool.description)

    return [make(tool) for tool in tools.values()]


def build_react_agent(runtime: InferenceEngine, *, adapter: str = "base",
                      tools: dict[str, Tool] | None = None, system_prompt: str = SYSTEM_PROMPT,
                      max_new_tokens: int = 96) -> Any:
    """A LangGraph agent whose model is the local model with `adapter` active."""
    model = LocalReActChatModel(runtime=runtime, adapter=adapter,
                                max_new_tokens=max_new_tokens)
    return create_agent(model, langchain_tools(tools or default_tools()),
                        system_prompt=system_prompt)


def run_react_agent(agent: Any, question: str, *, history: list[BaseMessage] | None = None,
                    max_steps: int = 4,
                    on_step: Callable[[AgentStep], object] | None = None) -> AgentRun:
    """Ask one question; the run records each tool step, the answer or the failure.

    `on_step` is told of each tool step as soon as its tool has answered (the service
    streams them), before the model writes the next one."""
    messages = [*(history or []), HumanMessage(question)]
    run = AgentRun(question)
    produced: list[BaseMessage] = []
    try:
        # Each tool call is two graph steps (model, tools); the final answer one more.
        # The graph's state after each of its steps: the steps are known as they happen.
        for state in agent.stream({"messages": messages}, stream_mode="values",
                                  config={"recursion_limit": 2 * max_steps + 2}):
            produced = state["messages"][len(messages):]
            for step in _tool_steps(produced)[len(run.steps):]:
                run.steps.append(step)
                if on_step is not None:
                    on_step(step)
    except GraphRecursionError:
        run.error = "step limit reached without a Final Answer"
        return run
    last = produced[-1] if produced else None
    if isinstance(last, AIMessage) and not last.tool_calls:
        error = last.response_metadata.get("error")
        if error:
            run.error = f"malformed step: {error}"
        else:
            run.final_answer = str(last.content)
        run.transcript = "".join(str(m.response_metadata.get("raw", ""))
                                 for m in produced if isinstance(m, AIMessage))
    return run


def _tool_steps(produced: list[BaseMessage]) -> list[AgentStep]:
    """The tool steps whose tools have answered, in order."""
    results = {m.tool_call_id: str(m.content) for m in produced if isinstance(m, ToolMessage)}
    return [AgentStep(str(message.content), call["name"],
                      str(call["args"].get(TOOL_INPUT_KEY, "")), results[call["id"]])
            for message in produced if isinstance(message, AIMessage) and message.tool_calls
            for call in message.tool_calls if call["id"] in results]
