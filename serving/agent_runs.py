"""One agent run for a user: memories and session history in, messages, trace, memory out.

What a run stores is one SQL transaction (`Store.record_run`: session, both messages, trace,
the session's fold, and the memory marked pending), then the memory's Chroma write, then
the pending mark goes. A crash between the commit and the Chroma write leaves a pending
row, which `reconcile_memories` (run at every start) finishes; nothing can leave messages,
trace and memory out of step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from agent.chat_model import LocalReActChatModel
from agent.loop import AgentRun, AgentStep
from agent.memory import MAX_MEMORY_CHARS, MemoryStore
from agent.react_agent import build_react_agent, run_react_agent
from agent.react_format import SYSTEM_PROMPT
from engines.engine import InferenceEngine
from evolora.logs import get_logger
from serving.checks import PromptTooLong
from serving.hot_loader import AdapterHotLoader
from storage.store import Fold, PendingMemory, Store

log = get_logger(__name__)

RECENT_MESSAGES = 6  # the last messages of the session put in the prompt verbatim
SUMMARISE_AFTER = 12  # messages in a session before older ones fold into its summary
KEEP_AFTER_SUMMARY = 6
MEMORY_CHARS = 200  # each memory's text in the prompt is cut to this
SUMMARY_CHARS = 600
RUN_MEMORY_KIND = "episode"


@dataclass
class ServedRun:
    """An agent run as the service answered it, with the tokens it cost."""

    run_id: str
    session_id: str
    run: AgentRun
    adapter: str
    tokens: int


@dataclass
class _MeteredEngine:
    """The engine, counting the tokens of every prompt and reply: what a run is charged."""

    engine: InferenceEngine
    tokens: int = 0

    def chat_prompt(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        return self.engine.chat_prompt(messages, assistant_prefix)

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def generate(self, prompts: list[str], **kwargs: Any) -> list[str]:
        replies = self.engine.generate(prompts, **kwargs)
        self.tokens += sum(self.engine.count_tokens(text) for text in [*prompts, *replies])
        return replies


@dataclass
class PreparedRun:
    """An agent run that passed its checks: what the agent will be asked, and with what."""

    user_id: str
    question: str
    session_id: str | None
    history: list[BaseMessage]
    system_prompt: str
    max_new_tokens: int
    max_steps: int


def answer_question(runtime: InferenceEngine, loader: AdapterHotLoader, store: Store,
                    memory: MemoryStore, *, user_id: str, question: str,
                    session_id: str | None, max_new_tokens: int, max_prompt_tokens: int,
                    max_steps: int = 4) -> ServedRun:
    """Run the ReAct agent for `user_id`, then store the exchange, its trace and a memory.

    Raises NotFound for a session that is not the user's, PromptTooLong when memories,
    history and question render to more than `max_prompt_tokens`. Nothing is stored before
    the run is done: a refused or failed request leaves no (empty) session behind.
    """
    prepared = prepare_run(runtime, store, memory, user_id=user_id, question=question,
                           session_id=session_id, max_new_tokens=max_new_tokens,
                           max_prompt_tokens=max_prompt_tokens, max_steps=max_steps)
    return run_prepared(runtime, loader, store, memory, prepared)


def prepare_run(runtime: InferenceEngine, store: Store, memory: MemoryStore, *, user_id: str,
                question: str, session_id: str | None, max_new_tokens: int,
                max_prompt_tokens: int, max_steps: int = 4) -> PreparedRun:
    """The run's prompt parts (memories, session history), once its checks pass: NotFound
    for a session that is not the user's, PromptTooLong for a prompt over the limit."""
    # session_summary raises NotFound for an unknown session or another user's.
    summary = store.session_summary(user_id, session_id) if session_id else None
    recent = store.session_messages(user_id, session_id)[-RECENT_MESSAGES:] if session_id else []
    history = history_messages(recent)
    memories = [m for m, _score in memory.search(user_id, question[:MAX_MEMORY_CHARS])]
    system_prompt = build_system_prompt([m.text for m in memories], summary)
    # The agent's first prompt, as its chat model renders it (the later steps add to it).
    first = LocalReActChatModel(runtime=runtime).render_prompt(
        [SystemMessage(system_prompt), *history, HumanMessage(question)])
    prompt_tokens = runtime.count_tokens(first)
    if prompt_tokens > max_prompt_tokens:
        raise PromptTooLong(prompt_tokens, max_prompt_tokens)
    return PreparedRun(user_id, question, session_id, history, system_prompt, max_new_tokens,
                       max_steps)


def run_prepared(runtime: InferenceEngine, loader: AdapterHotLoader, store: Store,
                 memory: MemoryStore, prepared: PreparedRun,
                 on_step: Callable[[AgentStep], object] | None = None) -> ServedRun:
    """Run the agent (telling `on_step` of each tool step as it happens), then store the
    exchange, its trace and a memory."""
    user_id, question = prepared.user_id, prepared.question
    metered = _MeteredEngine(runtime)
    with loader.lease(None) as adapter:
        agent = build_react_agent(metered, adapter=adapter,  # type: ignore[arg-type]
                                  system_prompt=prepared.system_prompt,
                                  max_new_tokens=prepared.max_new_tokens)
        run = run_react_agent(agent, question, history=prepared.history,
                              max_steps=prepared.max_steps, on_step=on_step)
    answer = run.final_answer if run.final_answer is not None else ""
    # What the user said is worth remembering even when the model failed to answer it.
    exchange = f"User: {question}" + (f"\nAssistant: {answer}" if answer else "")
    run_id, session_id = store.record_run(
        user_id=user_id, session_id=prepared.session_id, question=question,
        reply=answer or f"(error: {run.error})", steps=[_step_dict(s) for s in run.steps],
        final_answer=run.final_answer, error=run.error, adapter_version=adapter,
        memory=exchange[:MAX_MEMORY_CHARS], memory_kind=RUN_MEMORY_KIND, fold=SESSION_FOLD)
    pending = PendingMemory(run_id, user_id, exchange[:MAX_MEMORY_CHARS], RUN_MEMORY_KIND,
                            time.time())
    try:
        write_memory(store, memory, pending)
    except Exception as exc:  # the run is stored; its memory is added at the next start
        log.error("agent_run.memory_pending", run_id=run_id, error=str(exc))
    return ServedRun(run_id, session_id, run, adapter, metered.tokens)


def write_memory(store: Store, memory: MemoryStore, pending: PendingMemory) -> None:
    """Write a run's pending memory to Chroma, then mark it written. Tagged with its run,
    so feedback on the run moves its importance and forgetting the run removes it."""
    memory.add(pending.user_id, pending.text, kind=pending.kind,
               metadata={"run_id": pending.run_id})
    store.memory_written(pending.run_id)


def reconcile_memories(store: Store, memory: MemoryStore) -> dict[str, int]:
    """Finish the runs whose memory a crash left pending (the service calls it at start).

    A memory Chroma already has (the crash fell after its write) is only marked written;
    a missing one is added; one Chroma refuses is dropped, logged. Counts of each."""
    counts = {"added": 0, "already_written": 0, "dropped": 0}
    for pending in store.pending_memories():
        if memory.has_run(pending.user_id, pending.run_id):
            store.memory_written(pending.run_id)
            counts["already_written"] += 1
            continue
        try:
            write_memory(store, memory, pending)
        except ValueError as exc:  # a text the memory store refuses will never pass
            log.error("agent_run.memory_dropped", run_id=pending.run_id, error=str(exc))
            store.memory_written(pending.run_id)
            counts["dropped"] += 1
        else:
            counts["added"] += 1
    if any(counts.values()):
        log.info("agent_run.memories_reconciled", **counts)
    return counts


def summarise_session(previous: str | None, older: list[dict[str, Any]]) -> str:
    """The session summary with `older` messages folded in: extractive (a 135M model's
    abstractive one would cost seconds and say less), the last SUMMARY_CHARS kept."""
    folded = " ".join(f"{m['role']}: {str(m['content'])[:80]}" for m in older)
    return f"{previous or ''} {folded}".strip()[-SUMMARY_CHARS:]


# Once a session has more than SUMMARISE_AFTER live messages, all but the last
# KEEP_AFTER_SUMMARY fold into its summary (in the run's own transaction).
SESSION_FOLD = Fold(after=SUMMARISE_AFTER, keep_last=KEEP_AFTER_SUMMARY,
                    summarise=summarise_session)


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


def _step_dict(step: Any) -> dict[str, str]:
    return {"thought": step.thought, "tool": step.tool, "argument": step.argument,
            "observation": step.observation}
