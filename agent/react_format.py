"""The one definition of the ReAct text format: what training data says and what the agent parses.

An assistant turn is a sequence of steps, then a final answer:

    Thought: I need 12 * 7.
    Action: calculator
    Action Input: 12 * 7
    Observation: 84
    Thought: I have the answer.
    Final Answer: 84

The model generates up to `STOP_SEQUENCE`; the runtime runs the tool and appends
`render_observation(...)`. Training text is `render_trace(...)`, so the model learns exactly
what `parse_step` reads.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

from evolora.prompts import load_prompts

# Kept short on purpose (agent/prompts.yaml): the system prompt is most of each training
# example's tokens, and prompt length dominates CPU training cost.
_PROMPTS = load_prompts(Path(__file__).with_name("prompts.yaml"), ["system", "tools_system"])
SYSTEM_PROMPT = _PROMPTS["system"]
TOOLS_SYSTEM_PROMPT = _PROMPTS["tools_system"]

STOP_SEQUENCE = "\nObservation:"
# The thought before every Final Answer of a generated (and a harvested) training trace.
FINAL_THOUGHT = "I have the answer."

# Markers at the start of a line; "Action Input" must be tried before "Action".
_MARKER_RE = re.compile(
    r"^[ \t]*(Thought|Action Input|Action|Final Answer|Observation)[ \t]*:[ \t]*",
    re.MULTILINE | re.IGNORECASE,
)
_OBSERVATION_LINE_RE = re.compile(r"^[ \t]*Observation[ \t]*:[ \t]*(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class ToolCall:
    """One tool invocation: the tool's name and its raw text argument."""

    tool: str
    argument: str


@dataclass
class ParsedStep:
    """One parsed model step. `error` set means the step can be neither run nor answered."""

    thought: str
    action: ToolCall | None
    final_answer: str | None
    error: str | None
    # Filled by parse_trace only (the runtime's parse_step never sees observations).
    observation: str | None = None


def render_action(thought: str, tool: str, argument: str) -> str:
    """The text of one tool-using step, up to (not including) its observation."""
    return f"Thought: {_one_line(thought)}\nAction: {tool}\nAction Input: {_one_line(argument)}\n"


def render_observation(observation: str) -> str:
    """The observation line the runtime appends after a tool ran (newlines flattened)."""
    return f"Observation: {_one_line(observation)}\n"


def render_final(thought: str, answer: str) -> str:
    """The closing step: a thought and the final answer."""
    return f"Thought: {_one_line(thought)}\nFinal Answer: {answer.strip()}"


def render_trace(
    steps: list[tuple[str, ToolCall, str]], final_thought: str, final_answer: str
) -> str:
    """The full assistant text: every (thought, call, observation) step, then the answer."""
    parts = [
        render_action(thought, call.tool, call.argument) + render_observation(observation)
        for thought, call, observation in steps
    ]
    parts.append(render_final(final_thought, final_answer))
    return "".join(parts)


def parse_step(text: str, tool_names: Collection[str] | None = None) -> ParsedStep:
    """Parse what the model generated since the last observation; never raises.

    Anything from an `Observation:` line on is ignored (the model may run past the stop
    sequence). A Final Answer counts only when no Action comes before it. With `tool_names`,
    an Action naming another tool is an error.
    """
    try:
        return _parse_step(text, tool_names)
    except Exception as exc:  # the runtime must never crash on model output
        return ParsedStep("", None, None, f"unparseable step: {exc}")


def _parse_step(text: str, tool_names: Collection[str] | None) -> ParsedStep:
    sections: list[tuple[str, str]] = []
    matches = list(_MARKER_RE.finditer(text))
    for index, match in enumerate(matches):
        name = match.group(1).lower()
        if name == "observation":
            break
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        sections.append((name, text[match.end() : end]))

    thought = next((body.strip() for name, body in sections if name == "thought"), "")
    names = [name for name, _ in sections]
    action_at = names.index("action") if "action" in names else None
    final_at = names.index("final answer") if "final answer" in names else None

    if final_at is not None and (action_at is None or final_at < action_at):
        # A paragraph break ends the answer: models tend to babble on after it.
        answer = sections[final_at][1].strip().split("\n\n")[0].strip()
        if not answer:
            return ParsedStep(thought, None, None, "empty Final Answer")
        return ParsedStep(thought, None, answer, None)

    if action_at is None:
        return ParsedStep(thought, None, None, "no Action or Final Answer")
    tool = _strip_quotes(sections[action_at][1].strip().split("\n")[0]).strip().lower()
    if not tool:
        return ParsedStep(thought, None, None, "empty Action (expected a tool name)")
    if tool_names is not None and tool not in tool_names:
        known = ", ".join(sorted(tool_names))
        return ParsedStep(thought, None, None, f"unknown tool {tool!r} (known: {known})")
    argument_body = next(
        (body for name, body in sections[action_at + 1 :] if name == "action input"), None
    )
    if argument_body is None:
        return ParsedStep(thought, None, None, "Action without Action Input")
    lines = argument_body.strip().split("\n")
    argument = _strip_quotes(lines[0].strip()) if lines else ""
    if not argument:
        return ParsedStep(thought, None, None, "empty Action Input")
    return ParsedStep(thought, ToolCall(tool, argument), None, None)


def parse_trace(text: str, tool_names: Collection[str] | None = None) -> list[ParsedStep]:
    """Parse a whole assistant text (observations included) into steps, up to the answer."""
    steps: list[ParsedStep] = []
    position = 0
    while position <= len(text):
        match = _OBSERVATION_LINE_RE.search(text, position)
        segment = text[position : match.start()] if match else text[position:]
        if not segment.strip() and match is None:
            break
        step = parse_step(segment, tool_names)
        if match is not None:
            step.observation = match.group(1).strip()
        steps.append(step)
        if step.final_answer is not None or match is None:
            break
        position = match.end() + 1
    return steps


def tools_system_prompt(tools: list[tuple[str, str]]) -> str:
    """The system prompt for other tools, (name, what it takes) pairs, listed as SYSTEM_PROMPT
    lists the built-in ones: "name (description)", or the bare name without a description."""
    listed = []
    for name, description in tools:
        description = _one_line(description).rstrip(".")
        listed.append(f"{name} ({description})" if description else name)
    return TOOLS_SYSTEM_PROMPT.format(tools=", ".join(listed))


def render_conversation(system: str, turns: list[tuple[str, str]]
                        ) -> tuple[list[dict[str, str]], str]:
    """The chat messages of a ReAct conversation and the open assistant text it ends on.

    `turns` are ("user", text) and ("assistant", ReAct text) pieces in order: the assistant
    pieces of one turn (actions, observations, a final answer) are joined into one message.
    When the conversation ends inside an assistant turn (a tool result just came in), that
    text is returned apart: the prompt's assistant prefix, which the model continues.
    """
    chat = [{"role": "system", "content": system}]
    assistant_text = ""
    for role, text in turns:
        if role == "assistant":
            assistant_text += text
            continue
        if assistant_text:
            chat.append({"role": "assistant", "content": assistant_text})
            assistant_text = ""
        chat.append({"role": role, "content": text})
    return chat, assistant_text


def build_messages(question: str) -> list[dict[str, str]]:
    """The chat messages that start an episode: the system prompt and the user's question."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question},
    ]


# ---------------------------------------------------------------------------- answers

_TWO_PLACES = Decimal("0.01")
_NUMBER_RE = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?$")
# "<currency symbol>? <number> <unit words or %>?": the units are dropped for matching.
_QUANTITY_RE = re.compile(
    r"^(?P<sign>-)?\s*(?:[$€£¥]\s*)?(?P<number>[+-]?[\d,]*\.?\d+)"
    r"\s*(?P<unit>%|°?[a-z][a-z ./°]{0,24})?$"
)
_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%B %d, %Y", "%B %d %Y", "%d %B %Y", "%b %d, %Y")


def format_number(value: float | int | Decimal) -> str:
    """A number as tools and answers print it: 2 decimals at most, no trailing zeros."""
    if isinstance(value, bool):
        raise TypeError("booleans are not numbers here")
    if isinstance(value, int):
        return str(value)
    decimal = value if isinstance(value, Decimal) else Decimal(repr(float(value)))
    if not decimal.is_finite():
        return str(decimal).lower()
    try:
        rounded = decimal.quantize(_TWO_PLACES, rounding=ROUND_HALF_UP)
    except InvalidOperation:  # too many digits to keep two decimals (a model's 40-digit guess)
        return format(decimal, "f")
    text = format(rounded, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def parse_number(text: str) -> Decimal | None:
    """A number written with optional thousands separators, or None."""
    text = text.strip()
    if not text or not _NUMBER_RE.match(text) or not any(ch.isdigit() for ch in text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def parse_date(text: str) -> date | None:
    """A date in ISO or a common written form ("March 5, 2024"), or None."""
    cleaned = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", text.strip().rstrip("."))
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(cleaned, fmt).date()
        except ValueError:
            continue
    return None


def normalize_answer(answer: str) -> str:
    """The canonical form used for exact match.

    Lowercase, trimmed, no trailing period; numbers rounded to 2 decimals without trailing
    zeros or thousands separators, with a currency symbol or trailing unit words dropped
    ("$1,234.50" -> "1234.5", "7.46 mi" -> "7.46", "84.0" -> "84"); dates as YYYY-MM-DD.
    """
    text = " ".join(str(answer).strip().split()).strip("\"'`")
    text = text.rstrip(".").strip()
    as_date = parse_date(text)
    if as_date is not None:
        return as_date.isoformat()
    lowered = text.lower()
    match = _QUANTITY_RE.match(lowered)
    if match:
        number = parse_number(match.group("number"))
        if number is not None:
            if match.group("sign"):
                number = -number
            return format_number(number)
    return lowered


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _strip_quotes(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        return text[1:-1].strip()
    return text
