"""What a recipe returns: the drawn slot values and the planned tool calls that solve them."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from agent.react_format import format_number


@dataclass(frozen=True)
class PlannedCall:
    """One tool call of a plan, with the observation the generator expects from it."""

    thought: str
    tool: str
    argument: str
    observation: str


@dataclass(frozen=True)
class Problem:
    """A drawn problem: the values for the template's slots and the plan that solves it."""

    slots: dict[str, str]
    calls: tuple[PlannedCall, ...]

    @property
    def answer(self) -> str:
        """The final answer as the trace states it: the last observation."""
        return self.calls[-1].observation


Recipe = Callable[[random.Random], Problem]


def as_text(value: float | int) -> str:
    """A number as the tools print it."""
    return format_number(value)


def as_number(text: str) -> float | int:
    """A printed observation read back exactly as the calculator's parser would."""
    return float(text) if "." in text else int(text)


def calculator_call(thought: str, expression: str, value: float | int) -> PlannedCall:
    return PlannedCall(thought, "calculator", expression, as_text(value))
