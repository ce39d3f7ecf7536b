"""The skill catalogue: skills, their question templates and the recipe each template uses.

A skill has, per level ("easy": one tool call, "hard": two chained calls), a TRAIN pool and
a disjoint TEST pool of question wordings, so the frozen test set asks in words the model
never trained on. The wordings are data (`tasks/data/catalogue/*.yaml`, read here and checked
before any is used); each names the recipe (`tasks.data.recipes`) that draws its numbers and
plans its tool calls. Templates keep the files' order: a seeded draw picks them by position.
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from tasks.data.catalogue_files import (
    CATALOGUE_DIR,
    catalogue_error,
    read_catalogue_file,
    string_map,
)
from tasks.data.recipes import RECIPES, Recipe

Level = Literal["easy", "hard"]
Pool = Literal["train", "test"]
LEVELS: tuple[Level, ...] = ("easy", "hard")
POOLS: tuple[Pool, ...] = ("train", "test")
# How many tool calls a level's plans chain.
CALLS_PER_LEVEL: dict[str, int] = {"easy": 1, "hard": 2}
_SKILL_FILE_KEYS = ("easy", "hard", "composed", "words")


@dataclass(frozen=True)
class Template:
    text: str
    recipe: Recipe


@dataclass(frozen=True)
class ComposedAsk:
    text: str
    level: Level
    recipe: Recipe


@dataclass(frozen=True)
class ComposedGroup:
    """Setups crossed with asks: every "<setup> <ask>" is a train template of the ask's level."""

    setups: tuple[str, ...]
    asks: tuple[ComposedAsk, ...]


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    # (pool, level) -> templates in file order, hand-written first, then the composed ones.
    templates: dict[tuple[Pool, Level], tuple[Template, ...]]
    composed: tuple[ComposedGroup, ...] = ()


def load_catalogue(directory: Path = CATALOGUE_DIR) -> dict[str, Skill]:
    """Every skill of `directory/skills.yaml`, in its order, each from `<name>.yaml`.

    Raises CatalogueError naming the file and the entry for anything malformed: an unknown
    recipe or placeholder, a level or pool left empty, a skill without a file.
    """
    index_path = directory / "skills.yaml"
    index = read_catalogue_file(index_path)
    unknown = sorted(set(index) - {"levels", "skills"})
    if unknown:
        raise catalogue_error(index_path, unknown[0], "unknown key; expected levels, skills")
    levels = string_map(index_path, "levels", index.get("levels"))
    if tuple(levels) != LEVELS:
        raise catalogue_error(
            index_path,
            "levels",
            f"must list {', '.join(LEVELS)} in that order (generation and scores use these two)",
        )
    descriptions = string_map(index_path, "skills", index.get("skills"))
    listed = {f"{name}.yaml" for name in descriptions} | {"skills.yaml"}
    strays = sorted(path.name for path in directory.glob("*.yaml") if path.name not in listed)
    if strays:
        raise catalogue_error(
            directory / strays[0],
            "",
            f"is not listed under skills in {index_path.name}; add it there or remove the file",
        )
    return {
        name: _load_skill(directory / f"{name}.yaml", name, description)
        for name, description in descriptions.items()
    }


def _load_skill(path: Path, name: str, description: str) -> Skill:
    data = read_catalogue_file(path)
    unknown = sorted(set(data) - set(_SKILL_FILE_KEYS))
    if unknown:
        raise catalogue_error(
            path, unknown[0], f"unknown key; expected one of {', '.join(_SKILL_FILE_KEYS)}"
        )
    pools: dict[tuple[Pool, Level], list[Template]] = {}
    for level in LEVELS:
        level_data = data.get(level)
        if not isinstance(level_data, Mapping) or set(level_data) != set(POOLS):
            raise catalogue_error(path, level, "must have exactly the pools train and test")
        for pool in POOLS:
            key = f"{level}.{pool}"
            entries = level_data[pool]
            if not isinstance(entries, list) or not entries:
                raise catalogue_error(path, key, "must list one template at least")
            pools[(pool, level)] = [
                _template(path, f"{key}[{index}]", entry, level)
                for index, entry in enumerate(entries)
            ]
    groups = _composed_groups(path, data.get("composed", []))
    # Composed wordings join the train pools after the hand-written ones, setup by setup.
    for group in groups:
        for setup in group.setups:
            for ask in group.asks:
                pools[("train", ask.level)].append(Template(f"{setup} {ask.text}", ask.recipe))
    templates = {(pool, level): tuple(pools[(pool, level)]) for level in LEVELS for pool in POOLS}
    return Skill(name, description, templates, groups)


def _template(path: Path, key: str, entry: Any, level: Level, setup: str = "") -> Template:
    """One `- <recipe>: "<text>"` entry, checked against its recipe (after `setup`, if any)."""
    if not isinstance(entry, Mapping) or len(entry) != 1:
        raise catalogue_error(path, key, 'must be one `<recipe>: "<question>"` pair')
    ((recipe_name, text),) = entry.items()
    if recipe_name not in RECIPES:
        raise catalogue_error(
            path, key, f"unknown recipe {recipe_name!r}; known: {', '.join(RECIPES)}"
        )
    if not isinstance(text, str) or not text.strip():
        raise catalogue_error(path, key, "the question must be non-empty text")
    _check_plan(path, key, recipe_name, level)
    _check_placeholders(path, key, f"{setup} {text}" if setup else text, recipe_name)
    return Template(text, RECIPES[recipe_name])


def _composed_groups(path: Path, raw: Any) -> tuple[ComposedGroup, ...]:
    if not isinstance(raw, list):
        raise catalogue_error(path, "composed", "must be a list of groups (setups and asks)")
    groups = []
    for number, group in enumerate(raw):
        key = f"composed[{number}]"
        if not isinstance(group, Mapping) or set(group) != {"setups", "asks"}:
            raise catalogue_error(path, key, "must have exactly setups and asks")
        setups = group["setups"]
        if (
            not isinstance(setups, list)
            or not setups
            or not all(isinstance(setup, str) and setup.strip() for setup in setups)
        ):
            raise catalogue_error(path, f"{key}.setups", "must list non-empty texts")
        asks_by_level = group["asks"]
        if not isinstance(asks_by_level, Mapping) or not asks_by_level:
            raise catalogue_error(path, f"{key}.asks", "must map a level to its asks")
        asks = []
        for level, entries in asks_by_level.items():
            if level not in LEVELS:
                raise catalogue_error(
                    path, f"{key}.asks.{level}", f"unknown level; expected {', '.join(LEVELS)}"
                )
            if not isinstance(entries, list) or not entries:
                raise catalogue_error(path, f"{key}.asks.{level}", "must list one ask at least")
            for index, entry in enumerate(entries):
                ask_key = f"{key}.asks.{level}[{index}]"
                # Checked after each setup: the question is the two together.
                for setup in setups:
                    ask = _template(path, ask_key, entry, level, setup)
                asks.append(ComposedAsk(ask.text, level, ask.recipe))
        groups.append(ComposedGroup(tuple(setups), tuple(asks)))
    return tuple(groups)


@cache
def _probe(recipe_name: str) -> tuple[frozenset[str], int]:
    """The placeholders a recipe fills and how many calls it plans (the same for every draw)."""
    problem = RECIPES[recipe_name](random.Random(0))
    return frozenset(problem.slots), len(problem.calls)


def _check_plan(path: Path, key: str, recipe_name: str, level: Level) -> None:
    calls = _probe(recipe_name)[1]
    if calls != CALLS_PER_LEVEL[level]:
        raise catalogue_error(
            path,
            key,
            f"recipe {recipe_name} plans {calls} tool call(s); "
            f"{level} templates need {CALLS_PER_LEVEL[level]}",
        )


def _check_placeholders(path: Path, key: str, text: str, recipe_name: str) -> None:
    filled = _probe(recipe_name)[0]
    known = " ".join(f"{{{slot}}}" for slot in sorted(filled))
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(text)
            if name is not None
        ]
    except ValueError as exc:  # "{a" or a lone "}"
        raise catalogue_error(path, key, f"malformed placeholder in {text!r} ({exc})") from None
    for name, spec, conversion in fields:
        if name not in filled:
            raise catalogue_error(
                path,
                key,
                f"unknown placeholder {{{name}}} in {text!r}; recipe {recipe_name} fills {known}",
            )
        if spec or conversion:
            raise catalogue_error(
                path,
                key,
                f"placeholder {{{name}}} in {text!r} takes no format: recipes write their values "
                "as they should appear",
            )


SKILLS: dict[str, Skill] = load_catalogue()
