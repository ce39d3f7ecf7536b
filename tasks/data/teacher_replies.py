"""Cleaning a teacher's replies: thinking removed, garbage rewordings refused.

These are the generators' safety net: a small or chatty model answers with several lines,
echoes the instructions, answers the question instead of rewording it, or changes a
number. `clean_paraphrase` returns a usable rewording or None, never a doubtful one.
"""

from __future__ import annotations

import re
from collections import Counter

# R1-style distills think aloud first; an unclosed block means the reply was cut mid-thought.
_THINK_BLOCK = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)


def strip_thinking(text: str) -> str:
    """The reply without <think>...</think> blocks, trimmed."""
    return _THINK_BLOCK.sub("", text).strip()


_LEADS = re.compile(
    r"^\s*(sure[,!.]?\s*)?(here is|here's)?\s*(the\s+)?(reworded|rephrased|paraphrased)?"
    r"\s*(question|version)?\s*:\s*",
    re.I,
)
_ECHO_WORDS = (
    "reword",
    "rephrase",
    "paraphrase",
    "reply with",
    "keep every number",
    "as an ai",
    "question:",
)
# Dates and times stay one token ("2024-01-03", "10:30"), so reordering their parts shows.
_NUMBER = re.compile(r"\d+(?:[.,:/-]\d+)*")


def _numbers(text: str) -> Counter[str]:
    return Counter(_NUMBER.findall(text))


def clean_paraphrase(question: str, reply: str) -> str | None:
    """The reply as a usable rewording of `question`, or None when it is garbage.

    Garbage: empty, several lines, much longer than the question, echoing the instructions,
    identical to the question, not a question any more, or with other numbers than the
    question's (a lost number changes the checked answer; a new one is usually the model
    answering instead of rewording).
    """
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        return None
    text = _LEADS.sub("", lines[0]).strip().strip('"').strip("'").strip()
    if not text or len(text) > 2 * len(question) + 40:
        return None
    lowered = text.lower()
    if any(word in lowered for word in _ECHO_WORDS):
        return None
    if _normalise(text) == _normalise(question):
        return None
    if _numbers(text) != _numbers(question):
        return None
    if question.rstrip().endswith("?") and not text.endswith("?"):
        return None
    return text


def _normalise(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()
