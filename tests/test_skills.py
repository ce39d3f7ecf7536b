"""The wording pools: every template verifies, train and test never share a wording, and
composed wordings pair each setup with asks that need different plans."""

from __future__ import annotations

import random
import re

import pytest

from agent.tools import default_tools
from tasks.data.examples import _example, normalize_question, verify_example
from tasks.data.skills import _COMPOSED, SKILLS, TEMPLATES, Recipe, Template

TOOLS = default_tools()


def _all_templates() -> list[tuple[str, str, str, Template]]:
    return [
        (skill, pool, level, template)
        for skill, definition in SKILLS.items()
        for (pool, level), templates in definition.templates.items()
        for template in templates
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_every_template_renders_a_verified_trace(seed: int) -> None:
    rng = random.Random(seed)
    failures = []
    for skill, pool, level, template in _all_templates():
        problem = template.recipe(rng)
        question = template.text.format(**problem.slots)
        assert "{" not in question, f"unfilled slot in {template.text!r}"
        example = _example(skill, level, pool, question, problem, "synthetic")
        reason = verify_example(example, TOOLS)
        if reason is not None:
            failures.append((template.text, reason))
        # The level says how many tool calls the plan chains.
        assert len(problem.calls) == (1 if level == "easy" else 2), template.text
    assert failures == []


def _wording(text: str) -> str:
    return normalize_question(re.sub(r"\{\w+\}", " ", text))


def test_train_and_test_pools_share_no_wording() -> None:
    for skill, pools in TEMPLATES.items():
        train = {_wording(text) for (pool, _), pairs in pools.items() if pool == "train"
                 for text, _ in pairs}
        test = {_wording(text) for (pool, _), pairs in pools.items() if pool == "test"
                for text, _ in pairs}
        assert train and test
        assert train.isdisjoint(test), f"{skill}: {sorted(train & test)}"


def test_composed_wordings_are_train_wordings_and_only_the_ask_picks_the_plan() -> None:
    mixed_groups = 0
    for skill, groups in _COMPOSED.items():
        for setups, asks in groups:
            for setup in setups:
                for ask, level, recipe in asks:
                    assert (f"{setup} {ask}", recipe) in TEMPLATES[skill][("train", level)]
            if len({recipe for _, _, recipe in asks}) > 1:
                mixed_groups += 1
                # Every setup is trained with every plan of its group.
                for setup in setups:
                    plans = {recipe for text, recipe in _train_pairs(skill)
                             if text.startswith(setup)}
                    assert plans >= {recipe for _, _, recipe in asks}
    assert mixed_groups >= 3


def _train_pairs(skill: str) -> list[tuple[str, Recipe]]:
    return [pair for (pool, _), pairs in TEMPLATES[skill].items() if pool == "train"
            for pair in pairs]
