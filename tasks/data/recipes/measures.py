"""Recipes with the convert, date and currency tools, alone or chained with the calculator.

The words for units, goods and currencies come from the catalogue (`units.yaml`,
`currency.yaml`); the draws (which unit, which good, which currency) follow their order there.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import date, timedelta

from agent.tools import CURRENCY_RATES, WEEKDAYS, convert_value, exchange_value
from tasks.data.catalogue_files import load_vocabulary
from tasks.data.recipes.plans import (
    PlannedCall,
    Problem,
    Recipe,
    as_number,
    as_text,
    calculator_call,
)

_WORDS = load_vocabulary()
_UNIT_WORDS = _WORDS.unit_words
_SINGULAR = _WORDS.singular
_DIMENSIONS = _WORDS.dimensions
# Goods sold by each dimension, so a question never prices rope by the cup.
_GOODS = _WORDS.goods
_CURRENCY_WORDS = _WORDS.currency_words

# ---------------------------------------------------------------------------- units


def _singular(word: str) -> str:
    return _SINGULAR.get(word, word[:-1] if word.endswith("s") else word)


def _unit_pair(rng: random.Random, dimensions: tuple[str, ...]) -> tuple[str, str]:
    return tuple(rng.sample(_DIMENSIONS[rng.choice(dimensions)], 2))  # type: ignore[return-value]


def _convert_call(value: float | int, source: str, target: str, thought: str) -> PlannedCall:
    result = as_text(convert_value(float(value), source, target))
    argument = f"{as_text(value)} {source} to {target}"
    return PlannedCall(thought, "convert", argument, f"{result} {target}")


def _convert_units(rng: random.Random) -> Problem:
    source, target = _unit_pair(rng, tuple(_DIMENSIONS))
    if source in ("C", "F"):
        value: float = rng.randint(-30, 110)
    else:
        value = rng.randint(1, 400) / rng.choice([1, 2])
    call = _convert_call(value, source, target, f"Convert {source} to {target}.")
    return Problem(
        {"value": as_text(value), "src": _UNIT_WORDS[source], "dst": _UNIT_WORDS[target]}, (call,)
    )


def _price_per_unit(rng: random.Random) -> Problem:
    dimension = rng.choice(tuple(_GOODS))
    priced, asked = rng.sample(_DIMENSIONS[dimension], 2)
    item = rng.choice(_GOODS[dimension])
    price, quantity = rng.randint(1, 40) / rng.choice([1, 2]), rng.randint(2, 60)
    call = _convert_call(
        quantity,
        asked,
        priced,
        f"Convert {asked} to {priced}, then multiply by the price {as_text(price)}.",
    )
    amount = call.observation.split()[0]
    return Problem(
        {
            "item": item,
            "price": as_text(price),
            "per": _singular(_UNIT_WORDS[priced]),
            "q": str(quantity),
            "units": _UNIT_WORDS[asked],
        },
        (
            call,
            calculator_call(
                f"Multiply by the price {as_text(price)}.",
                f"{amount} * {as_text(price)}",
                as_number(amount) * price,
            ),
        ),
    )


def _total_then_convert(rng: random.Random) -> Problem:
    source, target = _unit_pair(rng, ("length", "mass", "volume", "time"))
    count, each = rng.randint(2, 20), rng.randint(1, 90)
    total = count * each
    return Problem(
        {"k": str(count), "v": str(each), "src": _UNIT_WORDS[source], "dst": _UNIT_WORDS[target]},
        (
            calculator_call(
                f"Multiply {count} by {each}, then convert {source} to {target}.",
                f"{count} * {each}",
                total,
            ),
            _convert_call(total, source, target, f"Convert {source} to {target}."),
        ),
    )


# ---------------------------------------------------------------------------- dates


def _random_date(rng: random.Random) -> date:
    return date(2018, 1, 1) + timedelta(days=rng.randrange(0, 4000))


def _show(rng: random.Random, day: date) -> str:
    # Half the questions write dates in words: the model learns to pass ISO to the tool.
    return day.isoformat() if rng.random() < 0.5 else f"{day:%B} {day.day}, {day.year}"


def _date_shift(sign: str) -> Recipe:
    def recipe(rng: random.Random) -> Problem:
        start, days = _random_date(rng), rng.randint(2, 400)
        end = start + timedelta(days=days if sign == "+" else -days)
        call = PlannedCall(
            f"Shift the date by {days} days.",
            "date",
            f"{start.isoformat()} {sign} {days} days",
            end.isoformat(),
        )
        return Problem({"d": _show(rng, start), "n": str(days)}, (call,))

    return recipe


def _between_call(rng: random.Random) -> tuple[dict[str, str], PlannedCall, int]:
    first = _random_date(rng)
    days = rng.randint(1, 60) if rng.random() < 0.5 else rng.randint(61, 500)
    second = first + timedelta(days=days)
    call = PlannedCall(
        "Count the days between the dates.",
        "date",
        f"days between {first.isoformat()} and {second.isoformat()}",
        str(days),
    )
    return {"d1": _show(rng, first), "d2": _show(rng, second)}, call, days


def _days_between(rng: random.Random) -> Problem:
    slots, call, _ = _between_call(rng)
    return Problem(slots, (call,))


def _weekday_call(day: date) -> PlannedCall:
    return PlannedCall(
        "Find the weekday.", "date", f"weekday {day.isoformat()}", WEEKDAYS[day.weekday()]
    )


def _weekday(rng: random.Random) -> Problem:
    day = _random_date(rng)
    return Problem({"d": _show(rng, day)}, (_weekday_call(day),))


def _daily_cost(rng: random.Random) -> Problem:
    slots, call, days = _between_call(rng)
    rate = rng.randint(15, 300)
    call = replace(call, thought=f"Count the days, then multiply by {rate}.")
    return Problem(
        {**slots, "rate": str(rate)},
        (
            call,
            calculator_call(f"Multiply {days} days by {rate}.", f"{days} * {rate}", days * rate),
        ),
    )


def _weekday_after(rng: random.Random) -> Problem:
    start, days = _random_date(rng), rng.randint(2, 400)
    end = start + timedelta(days=days)
    shift = PlannedCall(
        f"Add {days} days, then find the weekday.",
        "date",
        f"{start.isoformat()} + {days} days",
        end.isoformat(),
    )
    return Problem({"d": _show(rng, start), "n": str(days)}, (shift, _weekday_call(end)))


# ---------------------------------------------------------------------------- currency


def _currency_pair(rng: random.Random) -> tuple[str, str, str, str]:
    source, target = rng.sample(sorted(CURRENCY_RATES), 2)
    # Codes or words in the question; the tool call always uses codes.
    shown = [code if rng.random() < 0.5 else _CURRENCY_WORDS[code] for code in (source, target)]
    return source, target, shown[0], shown[1]


def _exchange_call(amount: float | int, source: str, target: str, thought: str) -> PlannedCall:
    value = exchange_value(float(amount), source, target)
    return PlannedCall(
        thought, "currency", f"{as_text(amount)} {source} to {target}", f"{as_text(value)} {target}"
    )


def _exchange(rng: random.Random) -> Problem:
    source, target, shown_source, shown_target = _currency_pair(rng)
    amount = rng.randint(1, 2000) / rng.choice([1, 1, 4])
    call = _exchange_call(amount, source, target, f"Convert {source} to {target}.")
    return Problem({"x": as_text(amount), "A": shown_source, "B": shown_target}, (call,))


def _items_abroad(rng: random.Random) -> Problem:
    source, target, shown_source, shown_target = _currency_pair(rng)
    count, price = rng.randint(2, 12), rng.randint(2, 400) / rng.choice([1, 2])
    total = count * price
    return Problem(
        {"k": str(count), "x": as_text(price), "A": shown_source, "B": shown_target},
        (
            calculator_call(
                f"Multiply {count} by {as_text(price)}, then convert {source} to {target}.",
                f"{count} * {as_text(price)}",
                total,
            ),
            _exchange_call(
                as_number(as_text(total)), source, target, f"Convert {source} to {target}."
            ),
        ),
    )


def _exchange_with_fee(rng: random.Random) -> Problem:
    source, target, shown_source, shown_target = _currency_pair(rng)
    amount, fee = rng.randint(10, 2000), rng.choice([1, 1.5, 2, 2.5, 3, 4, 5])
    call = _exchange_call(
        amount, source, target, f"Convert {source} to {target}, then add the {as_text(fee)}% fee."
    )
    converted = call.observation.split()[0]
    return Problem(
        {"x": str(amount), "A": shown_source, "B": shown_target, "p": as_text(fee)},
        (
            call,
            calculator_call(
                f"Now add the {as_text(fee)}% fee.",
                f"{converted} * (1 + {as_text(fee)} / 100)",
                as_number(converted) * (1 + fee / 100),
            ),
        ),
    )


_after, _before = _date_shift("+"), _date_shift("-")

# The name a catalogue file gives each recipe.
MEASURE_RECIPES: dict[str, Recipe] = {
    "convert_units": _convert_units,
    "price_per_unit": _price_per_unit,
    "total_then_convert": _total_then_convert,
    "after": _after,
    "before": _before,
    "days_between": _days_between,
    "weekday": _weekday,
    "daily_cost": _daily_cost,
    "weekday_after": _weekday_after,
    "exchange": _exchange,
    "items_abroad": _items_abroad,
    "exchange_with_fee": _exchange_with_fee,
}
