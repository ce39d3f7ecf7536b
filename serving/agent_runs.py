"""One agent run for a user: memories and session history in, messages, trace, memory out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from agent.loop import AgentRun
from agent.memory import MAX_MEMORY_CHARS, MemoryStore
from agent.react_agent import build_react_agent, run_react_agent
from agent.react_format import SYSTEM_PROMPT
from engines.transformers_runtime import ModelRuntime
from evolora.logs import get_logger
from serving.hot_loader import AdapterHotLoader
from storage.store import Store

log = get_logger(__name__)

RECENT_MESSAGES = 6  # the last messages of the session put in the prompt verbatim
SUMMARISE_AFTER = 12  # messages in a session before older ones fold into its summary
KEEP_AFTER_SUMMARY = 6
MEMORY_CHARS = 200  # each memory's text in the prompt is cut to this
SUMMARY_CHARS = 600


@dataclass
class ServedRun:
    """An agent run as the service answered it."""

    run_id: str
    session_id: str
    run: AgentRun
    adapter: str


def answer_question(runtime: ModelRuntime, loader: AdapterHotLoader, store: Store,
                    memory: MemoryStore, *, user_id: str, question: str,
                    session_id: str | None, max_new_tokens: int, max_steps: int = 4
                    ) -> ServedRun:
    """Run the ReAct agent for `user_id`, then store the exchange, its trace and a memory."""
    session_id = store.open_session(user_id, session_id)
    memories = [m for m, _score in memory.search(user_id, question[:MAX_MEMORY_CHARS])]
    summary = store.session_summary(user_id, session_id)
    history = history_messages(store.session_messages(user_id, session_id)[-RECENT_MESSAGES:])
    system_prompt = build_system_prompt([m.text for m in memories], summary)
    with loader.lease(None) as adapter:
        agent = build_react_agent(runtime, adapter=adapter, system_prompt=system_prompt,
                                  max_new_tokens=max_new_tokens)
        run = run_react_agent(agent, question, history=history, max_steps=max_steps)
    answer = run.final_answer if run.final_answer is not None else ""
    store.add_message(user_id, session_id, "user", question)
    store.add_message(user_id, session_id, "assistant", answer or f"(error: {run.error})")
    run_id = store.record_trace(user_id=user_id, session_id=session_id, question=question,
                                steps=[_step_dict(s) for s in run.steps],
                                final_answer=run.final_answer, error=run.error,
                                adapter_version=adapter)
    # What the user said is worth remembering even when the model failed to answer it.
    exchange = f"User: {question}" + (f"\nAssistant: {answer}" if answer else "")
    memory.add(user_id, exchange[:MAX_MEMORY_CHARS], kind="episode")
    _fold_old_messages(store, user_id, session_id)
    return ServedRun(run_id, session_id, run, adapter)


def build_system_prompt(memories: list[str], summary: str | None) -> str:
    """The agent's system prompt with what it remembers of the user and of this session."""
    parts = [SYSTEM_PROMPT]
    if memories:
        lines = "\n".join(f"- {text[:MEMORY_CHARS]}" for text in memories)
        parts.append(f"What you remember about this user:\n{lines}")
    if summary:
        parts.append(f"Earlier in this conversation: {summary[-SUMMARY_CHARS:]}")
    return "\n\n".join(parts)


def history_messages(messages: list[dict[str, Any]]) -> list[BaseMessage]:
    """Stored session messages as LangChain messages (a user turn, then the answer)."""
    history: list[BaseMessage] = []
    for message in messages:
        if message["role"] == "user":
            history.append(HumanMessage(str(message["content"])))
        elif message["role"] == "assistant" and history:
            history.append(AIMessage(str(message["content"])))
    return history


def _fold_old_messages(store: Store, user_id: str, session_id: str) -> None:
    """Fold the session's older messages into its summary once it grows long."""
    messages = store.session_messages(user_id, session_id)
    if len(messages) <= SUMMARISE_AFTER:
        return
    older = messages[:-KEEP_AFTER_SUMMARY]
    previous = store.session_summary(user_id, session_id) or ""
    # An extractive summary: a 135M model's abstractive one would cost seconds and say less.
    folded = " ".join(f"{m['role']}: {str(m['content'])[:80]}" for m in older)
    summary = f"{previous} {folded}".strip()[-SUMMARY_CHARS:]
    store.set_summary(user_id, session_id, summary, keep_last=KEEP_AFTER_SUMMARY)


def _step_dict(step: Any) -> dict[str, str]:
    return {"thought": step.thought, "tool": step.tool, "argument": step.argument,
            "observation": step.observation}
