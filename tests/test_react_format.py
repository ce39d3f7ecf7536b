"""The ReAct text format: rendering, parsing (never raising), answer normalization."""

from __future__ import annotations

import pytest

from agent.react_format import (
    STOP_SEQUENCE,
    SYSTEM_PROMPT,
    ToolCall,
    build_messages,
    normalize_answer,
    parse_step,
    parse_trace,
    render_action,
    render_final,
    render_observation,
    render_trace,
)
from agent.tools import default_tools


def test_render_pieces_have_the_documented_shape() -> None:
    assert render_action("I need 12 * 7.", "calculator", "12 * 7") == (
        "Thought: I need 12 * 7.\nAction: calculator\nAction Input: 12 * 7\n"
    )
    assert render_observation("84") == "Observation: 84\n"
    assert render_observation("two\nlines") == "Observation: two lines\n"
    assert render_final("Done.", "84") == "Thought: Done.\nFinal Answer: 84"


def test_round_trip_render_trace_parse_trace() -> None:
    calls = [ToolCall("convert", "12 km to mi"), ToolCall("calculator", "7.46 * 3")]
    steps = [("Convert first.", calls[0], "7.46 mi"), ("Multiply.", calls[1], "22.38")]
    text = render_trace(steps, "I have the answer.", "22.38")

    parsed = parse_trace(text)

    assert [step.action for step in parsed[:-1]] == calls
    assert [step.observation for step in parsed[:-1]] == ["7.46 mi", "22.38"]
    thoughts = [step.thought for step in parsed]
    assert thoughts == ["Convert first.", "Multiply.", "I have the answer."]
    assert parsed[-1].final_answer == "22.38"
    assert all(step.error is None for step in parsed)


def test_parse_step_reads_an_action_and_ignores_text_after_the_stop() -> None:
    text = "Thought: add\nAction: calculator\nAction Input: 2 + 2\nObservation: 5\nFinal Answer: 5"
    step = parse_step(text)
    assert step.action == ToolCall("calculator", "2 + 2")
    assert step.final_answer is None and step.error is None
    # What generation returns when it stops at the stop sequence.
    cut = text.split(STOP_SEQUENCE)[0]
    assert parse_step(cut).action == ToolCall("calculator", "2 + 2")


def test_final_answer_wins_only_without_an_action_before_it() -> None:
    assert parse_step("Thought: known\nFinal Answer: 42\n\nUser: more?").final_answer == "42"
    step = parse_step("Action: calculator\nAction Input: 1 + 1\nFinal Answer: 3")
    assert step.action == ToolCall("calculator", "1 + 1") and step.final_answer is None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no Action or Final Answer"),
        ("I think the answer is 4", "no Action or Final Answer"),
        ("Thought: hmm\nAction: calculator\n", "Action without Action Input"),
        ("Action:\nAction Input: 1 + 1", "empty Action"),
        ("Action: calculator\nAction Input:   ", "empty Action Input"),
        ("Final Answer:   ", "empty Final Answer"),
        ("Action: search\nAction Input: cats", "unknown tool 'search'"),
        ("\x00\x01Action Input: Action: ::::", "no Action or Final Answer"),
    ],
)
def test_malformed_steps_return_an_error_instead_of_raising(text: str, error: str) -> None:
    step = parse_step(text, tool_names=default_tools())
    assert step.error is not None and error in step.error
    assert step.action is None and step.final_answer is None


def test_parse_trace_stops_at_a_broken_step() -> None:
    text = "Thought: x\nAction: calculator\nAction Input: 1+1\nObservation: 2\nThought: y\n"
    steps = parse_trace(text)
    assert steps[0].action == ToolCall("calculator", "1+1") and steps[0].observation == "2"
    assert steps[-1].error == "no Action or Final Answer"


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("84.0", "84"),
        ("3.50", "3.5"),
        (" 1,234.567 ", "1234.57"),
        ("$1,200.", "1200"),
        ("7.46 mi", "7.46"),
        ("18.4 EUR", "18.4"),
        ("25%", "25"),
        ("-0.001", "0"),
        ("2.675", "2.68"),  # half-up on the decimal value, not the binary float
        ("Thursday.", "thursday"),
        ("March 5, 2024", "2024-03-05"),
        ("2024-03-05", "2024-03-05"),
        ("Paris", "paris"),
    ],
)
def test_normalize_answer(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


def test_system_prompt_is_short_and_names_every_tool() -> None:
    assert len(SYSTEM_PROMPT) < 260  # ~62 SmolLM2 tokens; it dominates training cost
    for name in default_tools():
        assert name in SYSTEM_PROMPT
    assert build_messages("q?") == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "q?"},
    ]


def test_normalize_answer_never_raises_on_a_models_wildest_numbers() -> None:
    from agent.react_format import normalize_answer

    huge = "1" * 40
    assert normalize_answer(huge) == huge
    assert normalize_answer("84.0") == "84"
    for wild in ("1e999", "-1e999", "NaN", "9" * 400 + ".5"):
        assert isinstance(normalize_answer(wild), str)
