"""A LangChain chat model over our local model, speaking the ReAct text format.

LangChain's agent (`langchain.agents.create_agent`) drives tools through structured tool
calls; a 135M model writes text. This model is the bridge: it renders the conversation
(tool calls and tool results included) as the ReAct text the model was trained on,
generates the next step, and parses it back into a tool call or a final answer, with the
same `agent.react_format` functions that write the training data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import ConfigDict

from agent.react_format import (
    FINAL_THOUGHT,
    STOP_SEQUENCE,
    SYSTEM_PROMPT,
    parse_step,
    render_action,
    render_conversation,
    render_final,
    render_observation,
)

TOOL_INPUT_KEY = "input"


class LocalReActChatModel(BaseChatModel):
    """Chat model that generates ReAct steps with a local model and one of its adapters."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    runtime: Any  # an InferenceEngine (engines/engine.py): chat_prompt, generate(adapter=)
    adapter: str = "base"
    max_new_tokens: int = 96
    temperature: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "evolora-local-react"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        # The tools are described in the system prompt text; nothing to bind.
        return self

    def render_prompt(self, messages: list[BaseMessage]) -> str:
        """The chat-template prompt (with the assistant's ReAct text so far) for `messages`."""
        system = SYSTEM_PROMPT
        turns: list[tuple[str, str]] = []
        for message in messages:
            if isinstance(message, SystemMessage):
                system = str(message.content)
            elif isinstance(message, HumanMessage):
                turns.append(("user", str(message.content)))
            elif isinstance(message, AIMessage) and message.tool_calls:
                for call in message.tool_calls:
                    argument = str(call["args"].get(TOOL_INPUT_KEY, ""))
                    turns.append(("assistant", render_action(str(message.content),
                                                             call["name"], argument)))
            elif isinstance(message, ToolMessage):
                turns.append(("assistant", render_observation(str(message.content))))
            elif isinstance(message, AIMessage):
                # A finished earlier turn: the answer, written as the model learnt to end one.
                turns.append(("assistant", render_final(FINAL_THOUGHT, str(message.content))))
        chat, assistant_prefix = render_conversation(system, turns)
        return self.runtime.chat_prompt(chat, assistant_prefix=assistant_prefix)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt = self.render_prompt(messages)
        reply = self.runtime.generate([prompt], max_new_tokens=self.max_new_tokens,
                                      stop=[STOP_SEQUENCE, *(stop or [])],
                                      temperature=self.temperature, adapter=self.adapter)[0]
        step = parse_step(reply)
        metadata = {"raw": reply, "adapter": self.adapter}
        if step.action is not None and step.final_answer is None:
            message = AIMessage(
                content=step.thought,
                tool_calls=[{"name": step.action.tool,
                             "args": {TOOL_INPUT_KEY: step.action.argument},
                             "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}],
                response_metadata=metadata,
            )
        elif step.final_answer is not None:
            message = AIMessage(content=step.final_answer, response_metadata=metadata)
        else:
            # Malformed output ends the run: no tool call, the raw text as the answer, the
            # parse error kept for the trace.
            message = AIMessage(content=reply.strip(),
                                response_metadata={**metadata, "error": step.error})
        return ChatResult(generations=[ChatGeneration(message=message)])
