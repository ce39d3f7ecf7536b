"""Reading the skill catalogue's YAML files (`tasks/data/catalogue/`) and the words they define.

The catalogue is data a user reads and extends without touching Python: `skills.yaml` names
the skills, each `<skill>.yaml` holds that skill's question templates, and `units.yaml` and
`currency.yaml` also hold the words questions use for units, goods and currencies. Every
problem found is a `CatalogueError` naming the file and the key, so a typo in a template
fails at import with its address instead of producing wrong data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.tools import CURRENCY_RATES, UNIT_FACTORS

CATALOGUE_DIR = Path(__file__).resolve().parent / "catalogue"


class CatalogueError(ValueError):
    """A catalogue file is missing, unreadable or malformed; the message names file and key."""


def catalogue_error(path: Path, key: str, problem: str) -> CatalogueError:
    where = f"{path}: {key}" if key else str(path)
    return CatalogueError(f"{where}: {problem}")


def read_catalogue_file(path: Path) -> dict[str, Any]:
    """The top-level mapping of one catalogue file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise catalogue_error(path, "", f"cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise catalogue_error(path, "", f"is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise catalogue_error(path, "", "the top level must be a mapping")
    return data


def string_map(path: Path, key: str, value: Any) -> dict[str, str]:
    """`value` checked to be a mapping of non-empty strings to non-empty strings."""
    if not isinstance(value, Mapping) or not value:
        raise catalogue_error(path, key, "must be a non-empty mapping")
    for name, text in value.items():
        if not isinstance(name, str) or not isinstance(text, str) or not text.strip():
            raise catalogue_error(path, f"{key}.{name}", "must map a name to non-empty text")
    return dict(value)


def string_lists(path: Path, key: str, value: Any) -> dict[str, tuple[str, ...]]:
    """`value` checked to be a mapping of names to non-empty lists of strings."""
    if not isinstance(value, Mapping) or not value:
        raise catalogue_error(path, key, "must be a non-empty mapping")
    lists: dict[str, tuple[str, ...]] = {}
    for name, items in value.items():
        if not isinstance(items, list) or not items:
            raise catalogue_error(path, f"{key}.{name}", "must be a non-empty list")
        if not all(isinstance(item, str) and item.strip() for item in items):
            raise catalogue_error(path, f"{key}.{name}", "must list non-empty strings")
        lists[str(name)] = tuple(items)
    return lists


def words_of(path: Path) -> Mapping[str, Any]:
    """The `words` section of a skill file."""
    words = read_catalogue_file(path).get("words")
    if not isinstance(words, Mapping):
        raise catalogue_error(path, "words", "is missing or not a mapping")
    return words


@dataclass(frozen=True)
class Vocabulary:
    """The words the unit and currency recipes put into questions."""

    unit_words: dict[str, str]  # unit code (as the convert tool knows it) -> plural words
    singular: dict[str, str]  # plural -> singular where dropping the final "s" is wrong
    dimensions: dict[str, tuple[str, ...]]  # dimension -> the units questions draw from
    goods: dict[str, tuple[str, ...]]  # dimension -> goods sold by it
    currency_words: dict[str, str]  # currency code -> words


def load_vocabulary(directory: Path = CATALOGUE_DIR) -> Vocabulary:
    """The vocabulary of `units.yaml` and `currency.yaml`, checked against the tools."""
    units_path, currency_path = directory / "units.yaml", directory / "currency.yaml"
    units = words_of(units_path)
    unit_words = string_map(units_path, "words.units", units.get("units"))
    for code in unit_words:
        if code not in UNIT_FACTORS:
            raise catalogue_error(
                units_path,
                f"words.units.{code}",
                f"the convert tool knows no unit {code!r}; known: {', '.join(UNIT_FACTORS)}",
            )
    dimensions = string_lists(units_path, "words.dimensions", units.get("dimensions"))
    for dimension, codes in dimensions.items():
        key = f"words.dimensions.{dimension}"
        if len(codes) < 2:
            raise catalogue_error(
                units_path, key, "needs two units at least (one converts to another)"
            )
        missing = [code for code in codes if code not in unit_words]
        if missing:
            raise catalogue_error(
                units_path, key, f"units {missing} have no words under words.units"
            )
        if len({UNIT_FACTORS[code][0] for code in codes}) != 1:
            raise catalogue_error(
                units_path, key, "mixes units the convert tool cannot convert into each other"
            )
    goods = string_lists(units_path, "words.goods", units.get("goods"))
    for dimension in goods:
        if dimension not in dimensions:
            raise catalogue_error(
                units_path,
                f"words.goods.{dimension}",
                f"is no dimension under words.dimensions ({', '.join(dimensions)})",
            )
    singular = string_map(units_path, "words.singular", units.get("singular"))

    currency_words = string_map(
        currency_path, "words.currencies", words_of(currency_path).get("currencies")
    )
    missing = sorted(set(CURRENCY_RATES) - set(currency_words))
    if missing:
        raise catalogue_error(
            currency_path, "words.currencies", f"the currency tool's codes {missing} have no words"
        )
    return Vocabulary(unit_words, singular, dimensions, goods, currency_words)
