"""The ReAct loop, batched: many questions advance one step at a time, side by side.

Each round generates, for every unfinished question, the model's next Thought/Action (or
Final Answer), stops at the Observation marker, runs the tool for real and appends the
observation. A run ends at a Final Answer, at malformed output, or after `max_steps`
tool calls; all three are recorded, none raises.

A tool step is kept in the transcript as `render_action` writes it (the parsed thought,
tool and argument), exactly as the service's LangChain agent renders the same step
(`agent.chat_model`): for one adapter and question the evaluated agent and the served one
see the same prompts, so they take the same steps.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from agent.react_format import (
    STOP_SEQUENCE,
    build_messages,
    parse_step,
    render_action,
    render_observation,
)
from agent.tools import Tool, run_tool


class TextGenerator(Protocol):
    """What the loop needs of a model: `ModelRuntime` (engines/) is the real one."""

    def chat_prompt(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        ...

    def generate(self, prompts: list[str], max_new_tokens: int = 96,
                 stop: list[str] | None = None) -> list[str]:
        ...


@dataclass
class AgentStep:
    """One tool call the agent made and what the tool answered."""

    thought: str
    tool: str
    argument: str
    observation: str


@dataclass
class AgentRun:
    """What the agent did for one question."""

    question: str
    steps: list[AgentStep] = field(default_factory=list)
    final_answer: str | None = None
    error: str | None = None
    transcript: str = ""

    @property
    def finished(self) -> bool:
        return self.final_answer is not None or self.error is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_agent_batch(
    runtime: TextGenerator,
    questions: list[str],
    tools: dict[str, Tool],
    *,
    max_steps: int = 4,
    max_new_tokens: int = 96,
    batch_size: int = 16,
    on_finished: Callable[[int], object] | None = None,
    prompts: list[str] | None = None,
    temperature: float = 0.0,
) -> list[AgentRun]:
    """Run the ReAct agent on every question; returns one AgentRun per question, in order.

    `on_finished(n)` is told after each generation call how many more runs have finished.
    `prompts` replaces each question's opening prompt (the system prompt and the question
    alone), for a question asked inside a longer conversation. `temperature` > 0 samples
    (the champion's self-attempts); 0 is greedy, as evaluation and the service decode.
    """
    runs = [AgentRun(question) for question in questions]
    if prompts is None:
        prompts = [runtime.chat_prompt(build_messages(q)) for q in questions]
    elif len(prompts) != len(questions):
        raise ValueError(f"{len(prompts)} prompts for {len(questions)} questions; give one "
                         "prompt per question")
    # Only a sampling run passes a temperature: greedy generators need not take one.
    sampling = {"temperature": temperature} if temperature > 0 else {}
    workers = int(getattr(runtime, "concurrent_requests", 1) or 1)
    if workers > 1:
        _run_each_on_its_own(runtime, runs, prompts, tools, workers=workers,
                             max_steps=max_steps, max_new_tokens=max_new_tokens,
                             on_finished=on_finished, sampling=sampling)
        return runs
    for round_index in range(max_steps + 1):
        pending = [i for i, run in enumerate(runs) if not run.finished]
        if not pending:
            break
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            replies = runtime.generate([prompts[i] + runs[i].transcript for i in chunk],
                                       max_new_tokens=max_new_tokens, stop=[STOP_SEQUENCE],
                                       **sampling)
            for i, reply in zip(chunk, replies, strict=True):
                _advance(runs[i], reply, tools, last_round=round_index == max_steps)
            if on_finished is not None:
                on_finished(sum(runs[i].finished for i in chunk))
    return runs


def _run_each_on_its_own(runtime: TextGenerator, runs: list[AgentRun], prompts: list[str],
                         tools: dict[str, Tool], *, workers: int, max_steps: int,
                         max_new_tokens: int, on_finished: Callable[[int], object] | None,
                         sampling: dict[str, float]) -> None:
    """Each run advances on its own as soon as its reply is back, `workers` at a time.

    For an engine that decodes concurrent requests together (llama.cpp's parallel slots):
    in rounds, every slot waits for a round's slowest reply (a 64-token ramble beside a
    15-token final answer) before any run takes its next step. The prompts, and so the
    steps, are the ones the rounds would give.
    """
    def drive(index: int) -> None:
        run = runs[index]
        for round_index in range(max_steps + 1):
            [reply] = runtime.generate([prompts[index] + run.transcript],
                                       max_new_tokens=max_new_tokens, stop=[STOP_SEQUENCE],
                                       **sampling)
            _advance(run, reply, tools, last_round=round_index == max_steps)
            if run.finished:
                break
        if on_finished is not None:
            on_finished(1)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agent-run") as pool:
        list(pool.map(drive, range(len(runs))))


def _advance(run: AgentRun, reply: str, tools: dict[str, Tool], last_round: bool) -> None:
    step = parse_step(reply)
    if step.final_answer is not None and step.action is None:
        run.transcript += reply
        run.final_answer = step.final_answer.strip()
        return
    if step.action is None:
        run.transcript += reply
        run.error = f"malformed step: {step.error or 'no Action or Final Answer'}"
        return
    if last_round:
        run.transcript += reply
        run.error = "step limit reached without a Final Answer"
        return
    observation = run_tool(tools, step.action.tool, step.action.argument)
    run.steps.append(AgentStep(step.thought, step.action.tool, step.action.argument,
                               observation))
    # The step as the LangChain agent renders it (one code path), then the real observation.
    run.transcript += render_action(step.thought, step.action.tool, step.action.argument)
    run.transcript += render_observation(observation)
