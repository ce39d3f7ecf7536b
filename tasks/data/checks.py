"""Checks on generated data: a trace re-runs to its recorded answer, a paraphrase keeps its facts.

`verify_example` is what every generated (and harvested) row must pass: the trace re-parses,
every tool call re-runs to the recorded observation, and the final answer is the expected
one. `check_paraphrase` guards every rewording (a teacher's or the rules'): the numbers,
dates, units and currencies a question states must all survive it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from agent.react_format import format_number, normalize_answer, parse_date, parse_trace
from agent.tools import CURRENCY_ALIASES, UNIT_ALIASES, Tool, run_tool


def verify_example(example: Mapping[str, Any], tools: dict[str, Tool]) -> str | None:
    """None when the example is right, else the reason ("<kind>: <detail>").

    Re-parses the assistant text, re-runs every tool call with the real tools, and checks
    each observation, the recorded tool calls, and the final answer against the expected one.
    """
    messages = example.get("messages") or []
    if not messages or messages[-1].get("role") != "assistant":
        return "malformed: the last message is not the assistant's"
    steps = parse_trace(messages[-1].get("content", ""), tool_names=tools)
    if not steps:
        return "unparseable: empty assistant text"
    for index, step in enumerate(steps, start=1):
        if step.error is not None:
            return f"unparseable: step {index}: {step.error}"
    *tool_steps, final = steps
    if final.final_answer is None:
        return "no final answer: the trace ends without a Final Answer"
    observations = []
    for index, step in enumerate(tool_steps, start=1):
        if step.action is None:  # a Final Answer before the last step ends parse_trace
            return f"unparseable: step {index} has no action"
        actual = run_tool(tools, step.action.tool, step.action.argument)
        if actual.startswith("Error:"):
            return f"tool error: step {index}: {actual}"
        if step.observation != actual:
            return (
                f"observation mismatch: step {index} says {step.observation!r}, "
                f"{step.action.tool} returns {actual!r}"
            )
        observations.append(actual)
    recorded = [
        (call.get("tool"), call.get("argument"), call.get("observation"))
        for call in example.get("tool_calls") or []
    ]
    parsed = [(s.action.tool, s.action.argument, s.observation) for s in tool_steps if s.action]
    if recorded != parsed:
        return "tool_calls mismatch: the tool_calls field differs from the trace"
    expected = example.get("answer")
    if normalize_answer(final.final_answer) != expected:
        return f"wrong final answer: {final.final_answer!r} is not {expected!r}"
    if expected not in {normalize_answer(observation) for observation in observations}:
        return f"ungrounded answer: no observation gives {expected!r}"
    return None


# Spellings of units and currencies, longest first so "british pounds" wins over "pounds".
_QUANTITY_WORDS = sorted(
    {
        **{alias: f"unit:{unit}" for alias, unit in UNIT_ALIASES.items() if len(alias) > 2},
        **{alias: f"money:{code}" for alias, code in CURRENCY_ALIASES.items()},
        "km": "unit:km",
        "mi": "unit:mi",
        "kg": "unit:kg",
        "lb": "unit:lb",
        "oz": "unit:oz",
        "ml": "unit:ml",
        "cm": "unit:cm",
        "mm": "unit:mm",
        "ft": "unit:ft",
        "yd": "unit:yd",
        "%": "percent",
        "percent": "percent",
        "percentage": "percent",
    }.items(),
    key=lambda item: -len(item[0]),
)
_WRITTEN_DATE_RE = re.compile(
    r"\b(?:January|February|March|April|May|June|July|August|September|October|November|"
    r"December)\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}\b|\b\d{4}-\d{2}-\d{2}\b",
    re.IGNORECASE,
)
_NUMBER_IN_TEXT_RE = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")
MAX_PARAPHRASE_CHARS = 400
_REACT_MARKERS = ("Thought:", "Action:", "Action Input:", "Observation:", "Final Answer:")


def question_facts(question: str) -> set[str]:
    """The numbers, dates, units and currencies a question states (what must survive)."""
    facts: set[str] = set()
    text = question

    def take_date(match: re.Match[str]) -> str:
        day = parse_date(match.group(0))
        facts.add(f"date:{day.isoformat() if day else match.group(0)}")
        return " "

    text = _WRITTEN_DATE_RE.sub(take_date, text)
    for match in _NUMBER_IN_TEXT_RE.finditer(text):
        raw = match.group(0).rstrip(",")
        try:
            facts.add(f"number:{format_number(float(raw.replace(',', '')))}")
        except ValueError:
            facts.add(f"number:{raw}")
    # "day of the week" names no quantity: its "day" and "week" are not units.
    lowered = re.sub(r"\bday of the week\b", " ", f" {text.lower()} ")
    for word, fact in _QUANTITY_WORDS:
        pattern = re.escape(word) if not word[0].isalpha() else rf"\b{re.escape(word)}\b"
        # Presence, not count: "12 km ... km" states one fact. Matched words are blanked
        # so "pounds" inside "british pounds" is not read again as the mass unit.
        lowered, found = re.subn(pattern, " ", lowered)
        if found:
            facts.add(fact)
    return facts


def check_paraphrase(original: str, candidate: str | None) -> str | None:
    """None when `candidate` may replace `original`, else why it may not."""
    if candidate is None or not candidate.strip():
        return "empty"
    text = candidate.strip()
    if "\n" in text:
        return "multi-line"
    if len(text) > min(MAX_PARAPHRASE_CHARS, 2 * len(original) + 40):
        return "too long"
    if any(marker in text for marker in _REACT_MARKERS):
        return "contains ReAct markers"
    if question_facts(text) != question_facts(original):
        return "changed numbers, dates or units"
    return None


def same_facts(before: str, after: str) -> bool:
    return check_paraphrase(before, after) is None
