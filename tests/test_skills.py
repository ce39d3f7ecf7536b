"""The wording pools: every template verifies, train and test never share a wording, composed
wordings pair each setup with asks that need different plans, and a malformed catalogue file
is refused with its file and entry named."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest
import yaml

from agent.tools import default_tools
from tasks.data.catalogue_files import CATALOGUE_DIR, CatalogueError, load_vocabulary
from tasks.data.checks import verify_example
from tasks.data.dedup import normalize_question
from tasks.data.generate import example_row
from tasks.data.recipes import RECIPES, Recipe
from tasks.data.skills import SKILLS, Template, load_catalogue

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
        example = example_row(skill, level, pool, question, problem, "synthetic")
        reason = verify_example(example, TOOLS)
        if reason is not None:
            failures.append((template.text, reason))
        # The level says how many tool calls the plan chains.
        assert len(problem.calls) == (1 if level == "easy" else 2), template.text
    assert failures == []


def _wording(text: str) -> str:
    return normalize_question(re.sub(r"\{\w+\}", " ", text))


def test_train_and_test_pools_share_no_wording() -> None:
    for name, skill in SKILLS.items():
        train = {_wording(t.text) for (pool, _), templates in skill.templates.items()
                 if pool == "train" for t in templates}
        test = {_wording(t.text) for (pool, _), templates in skill.templates.items()
                if pool == "test" for t in templates}
        assert train and test
        assert train.isdisjoint(test), f"{name}: {sorted(train & test)}"


def test_composed_wordings_are_train_wordings_and_only_the_ask_picks_the_plan() -> None:
    mixed_groups = 0
    for name, skill in SKILLS.items():
        for group in skill.composed:
            for setup in group.setups:
                for ask in group.asks:
                    assert Template(f"{setup} {ask.text}", ask.recipe) in skill.templates[
                        ("train", ask.level)
                    ]
            if len({ask.recipe for ask in group.asks}) > 1:
                mixed_groups += 1
                # Every setup is trained with every plan of its group.
                for setup in group.setups:
                    plans = {recipe for text, recipe in _train_pairs(name)
                             if text.startswith(setup)}
                    assert plans >= {ask.recipe for ask in group.asks}
    assert mixed_groups >= 3


def _train_pairs(skill: str) -> list[tuple[str, Recipe]]:
    return [(t.text, t.recipe) for (pool, _), templates in SKILLS[skill].templates.items()
            if pool == "train" for t in templates]


# -- the catalogue files -------------------------------------------------------------------------


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    """A copy of the real catalogue to edit."""
    return Path(shutil.copytree(CATALOGUE_DIR, tmp_path / "catalogue"))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_the_catalogue_is_read_in_file_order_and_extends_by_a_line(catalogue: Path) -> None:
    assert list(SKILLS) == list(yaml.safe_load((CATALOGUE_DIR / "skills.yaml").read_text())
                                ["skills"])
    first = yaml.safe_load((CATALOGUE_DIR / "arithmetic.yaml").read_text())["easy"]["train"][0]
    assert SKILLS["arithmetic"].templates[("train", "easy")][0].text == first["add"]

    _edit(catalogue / "arithmetic.yaml", "  test:\n",
          '    - add: "Put {a} and {b} together."\n  test:\n')
    pool = load_catalogue(catalogue)["arithmetic"].templates[("train", "easy")]
    assert pool[-1] == Template("Put {a} and {b} together.", RECIPES["add"])
    assert pool[:-1] == SKILLS["arithmetic"].templates[("train", "easy")]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('- add: "What is {a} plus {b}?"', '- add: "What is {a} plus {c}?"',
         r"arithmetic\.yaml: easy\.train\[0\]: unknown placeholder \{c\} in 'What is \{a\} plus "
         r"\{c\}\?'; recipe add fills \{a\} \{b\}"),
        ('- add: "What is {a} plus {b}?"', '- plus: "What is {a} plus {b}?"',
         r"arithmetic\.yaml: easy\.train\[0\]: unknown recipe 'plus'; known: add, sub"),
        ('- add: "What is {a} plus {b}?"', '- add: "What is {a plus {b}?"',
         r"arithmetic\.yaml: easy\.train\[0\]: malformed placeholder"),
        ('- add: "What is {a} plus {b}?"', '- add: "What is {a:>5} plus {b}?"',
         r"easy\.train\[0\]: placeholder \{a\} in .* takes no format"),
        ('- add: "What is {a} plus {b}?"', '- sum_then_multiply: "What is {a} plus {b}?"',
         r"easy\.train\[0\]: recipe sum_then_multiply plans 2 tool call\(s\); easy templates "
         r"need 1"),
        ('- add: "What is {a} plus {b}?"', "- What is {a} plus {b}?",
         r"easy\.train\[0\]: must be one `<recipe>: \"<question>\"` pair"),
    ],
)
def test_a_malformed_template_names_its_file_and_entry(
    catalogue: Path, old: str, new: str, message: str
) -> None:
    _edit(catalogue / "arithmetic.yaml", old, new)
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(catalogue)


def test_a_composed_ask_is_checked_after_each_setup(catalogue: Path) -> None:
    _edit(catalogue / "dates.yaml", '- "Go {n} days past {d}."', '- "Go {n} days past {d} at {x}."')
    with pytest.raises(CatalogueError, match=r"dates\.yaml: composed\[0\]\.asks\.easy\[0\]: "
                       r"unknown placeholder \{x\} in 'Go \{n\} days past \{d\} at \{x\}\. What "
                       r"is the date\?'; recipe after fills \{d\} \{n\}"):
        load_catalogue(catalogue)


def test_skills_and_their_files_must_match(catalogue: Path) -> None:
    (catalogue / "memory.yaml").write_text((catalogue / "currency.yaml").read_text())
    with pytest.raises(CatalogueError, match=r"memory\.yaml: is not listed under skills in "
                       r"skills\.yaml"):
        load_catalogue(catalogue)
    (catalogue / "memory.yaml").unlink()

    (catalogue / "currency.yaml").unlink()
    with pytest.raises(CatalogueError, match=r"currency\.yaml: cannot be read"):
        load_catalogue(catalogue)


def test_an_empty_pool_or_a_wrong_level_is_refused(catalogue: Path) -> None:
    text = (catalogue / "currency.yaml").read_text()
    start = text.index("hard:\n  train:\n") + len("hard:\n  train:\n")
    end = text.index("  test:\n", start)
    (catalogue / "currency.yaml").write_text(text[:start] + "    []\n" + text[end:])
    with pytest.raises(CatalogueError, match=r"currency\.yaml: hard\.train: must list one "
                       "template at least"):
        load_catalogue(catalogue)

    _edit(catalogue / "skills.yaml", "  hard: two chained tool calls", "  medium: two calls")
    with pytest.raises(CatalogueError, match=r"skills\.yaml: levels: must list easy, hard"):
        load_catalogue(catalogue)


def test_the_words_are_checked_against_the_tools(catalogue: Path) -> None:
    _edit(catalogue / "units.yaml", "    length: [cm, m,", "    length: [cm, kg,")
    with pytest.raises(CatalogueError, match=r"units\.yaml: words\.dimensions\.length: mixes "
                       "units the convert tool cannot convert"):
        load_vocabulary(catalogue)
    _edit(catalogue / "units.yaml", "    length: [cm, kg,", "    length: [cm, furlong,")
    with pytest.raises(CatalogueError, match=r"units\.yaml: words\.dimensions\.length: units "
                       r"\['furlong'\] have no words"):
        load_vocabulary(catalogue)
    _edit(catalogue / "units.yaml", "    length: [cm, furlong,", "    length: [cm, m,")
    _edit(catalogue / "currency.yaml", "    JPY: yen\n", "")
    with pytest.raises(CatalogueError, match=r"currency\.yaml: words\.currencies: the currency "
                       r"tool's codes \['JPY'\] have no words"):
        load_vocabulary(catalogue)
