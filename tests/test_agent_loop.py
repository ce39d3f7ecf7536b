"""The batched ReAct loop and the LangChain agent: tools really run, bad output never crashes.

The model here is scripted (smolagents' way of testing a loop deterministically): each
question maps to the replies a model would write. The tools, the parser and the loop are
the real ones. Real-model runs are in tests/test_learning.py.
"""

from __future__ import annotations

import pytest

from agent.loop import run_agent_batch
from agent.react_format import render_action, render_final
from agent.tools import default_tools


class ScriptedModel:
    """Replies from a script per question, in order; records the prompts it was given."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = {q: list(replies) for q, replies in script.items()}
        self.prompts: list[str] = []

    def chat_prompt(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        return f"<q>{messages[-1]['content']}</q>" + assistant_prefix

    def generate(self, prompts: list[str], max_new_tokens: int = 96,
                 stop: list[str] | None = None) -> list[str]:
        self.prompts.extend(prompts)
        replies = []
        for prompt in prompts:
            question = prompt[3:prompt.index("</q>")]
            replies.append(self.script[question].pop(0))
        return replies


def action(thought: str, tool: str, argument: str) -> str:
    return render_action(thought, tool, argument).rstrip("\n")


def test_two_step_run_executes_tools_and_feeds_observations_back() -> None:
    question = "What is (12 + 30) * 2?"
    model = ScriptedModel({question: [
        action("Add first.", "calculator", "12 + 30"),
        action("Now double it.", "calculator", "42 * 2"),
        render_final("Done.", "84"),
    ]})
    [run] = run_agent_batch(model, [question], default_tools())
    assert run.final_answer == "84" and run.error is None
    assert [(s.tool, s.argument, s.observation) for s in run.steps] == [
        ("calculator", "12 + 30", "42"), ("calculator", "42 * 2", "84")]
    # The second prompt carries the first real observation.
    assert "Observation: 42\n" in model.prompts[1]


def test_questions_in_one_batch_finish_independently() -> None:
    model = ScriptedModel({
        "a": [render_final("Known.", "1")],
        "b": [action("Convert.", "convert", "1 km to m"), render_final("Ok.", "1000")],
    })
    runs = run_agent_batch(model, ["a", "b"], default_tools(), batch_size=2)
    assert [r.final_answer for r in runs] == ["1", "1000"]
    assert runs[1].steps[0].observation.startswith("1000")


@pytest.mark.parametrize(("reply", "expected_error"), [
    ("I think the answer is probably 7", "malformed step"),
    ("Thought: hmm\nAction: calculator", "malformed step"),
    ("", "malformed step"),
])
def test_malformed_output_is_recorded_not_raised(reply: str, expected_error: str) -> None:
    [run] = run_agent_batch(ScriptedModel({"q": [reply]}), ["q"], default_tools())
    assert run.final_answer is None
    assert run.error is not None and run.error.startswith(expected_error)


def test_step_limit_stops_a_looping_agent() -> None:
    looping = [action("Again.", "calculator", "1 + 1")] * 10
    [run] = run_agent_batch(ScriptedModel({"q": looping}), ["q"], default_tools(), max_steps=3)
    assert len(run.steps) == 3
    assert run.error == "step limit reached without a Final Answer"


def test_unknown_tool_and_bad_argument_become_error_observations() -> None:
    model = ScriptedModel({"q": [
        action("Try.", "teleport", "home"),
        action("Try calc.", "calculator", "__import__('os')"),
        render_final("Give up.", "none"),
    ]})
    [run] = run_agent_batch(model, ["q"], default_tools())
    assert run.steps[0].observation.startswith("Error")
    assert run.steps[1].observation.startswith("Error")
    assert run.final_answer == "none"


class ScriptedRuntime(ScriptedModel):
    """The scripted model with the per-call adapter the chat model passes."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        super().__init__(script)
        self.adapters_used: list[str | None] = []

    def chat_prompt(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        user = [m for m in messages if m["role"] == "user"][-1]
        return f"<q>{user['content']}</q>" + assistant_prefix

    def generate(self, prompts: list[str], max_new_tokens: int = 96,
                 stop: list[str] | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, adapter: str | None = None) -> list[str]:
        self.adapters_used.append(adapter)
        return super().generate(prompts, max_new_tokens, stop)


def test_langchain_agent_runs_real_tools_through_create_agent() -> None:
    from agent.react_agent import build_react_agent, run_react_agent

    question = "How many meters are in 3 km, times 2?"
    runtime = ScriptedRuntime({question: [
        action("Convert.", "convert", "3 km to m"),
        action("Double.", "calculator", "3000 * 2"),
        render_final("Done.", "6000"),
    ]})
    agent = build_react_agent(runtime, adapter="champion")
    run = run_react_agent(agent, question)
    assert run.error is None and run.final_answer == "6000"
    assert [(s.tool, s.observation.split()[0]) for s in run.steps] == [
        ("convert", "3000"), ("calculator", "6000")]
    assert runtime.adapters_used == ["champion"] * 3
    # The chat model rendered the first tool result back as an Observation line.
    assert "Observation: 3000" in runtime.prompts[1]


def test_langchain_agent_reports_each_step_when_its_tool_has_answered() -> None:
    from agent.react_agent import build_react_agent, run_react_agent

    question = "How many meters are in 3 km, times 2?"
    runtime = ScriptedRuntime({question: [
        action("Convert.", "convert", "3 km to m"),
        action("Double.", "calculator", "3000 * 2"),
        render_final("Done.", "6000"),
    ]})
    seen: list[tuple[str, str, int]] = []
    reported = []

    def on_step(step: object) -> None:
        reported.append(step)
        seen.append((step.tool, step.observation.split()[0], len(runtime.prompts)))

    run = run_react_agent(build_react_agent(runtime), question, on_step=on_step)
    # Each step is reported once, with its tool's answer, before the next generation.
    assert seen == [("convert", "3000", 1), ("calculator", "6000", 2)]
    assert reported == run.steps and run.final_answer == "6000"


def test_langchain_agent_records_malformed_output_and_step_limit() -> None:
    from agent.react_agent import build_react_agent, run_react_agent

    runtime = ScriptedRuntime({"bad": ["no format at all"],
                               "loop": [action("Again.", "calculator", "1 + 1")] * 10})
    agent = build_react_agent(runtime)
    bad = run_react_agent(agent, "bad")
    assert bad.final_answer is None and bad.error.startswith("malformed step")
    looped = run_react_agent(agent, "loop", max_steps=2)
    assert looped.final_answer is None
    assert looped.error == "step limit reached without a Final Answer"
