"""Skill generators: question templates and the program that plans and answers each problem.

A skill has, per level ("easy": one tool call, "hard": two chained calls), a TRAIN pool and
a disjoint TEST pool of question wordings, so the frozen test set asks in words the model
never trained on. A template's recipe draws numbers from a seeded `random.Random` and
computes every step's expected observation itself; `tasks.data.examples` renders the trace and checks
it against the real tools.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Literal

from agent.react_format import format_number
from agent.tools import CURRENCY_RATES, WEEKDAYS, convert_value, exchange_value

Level = Literal["easy", "hard"]
Pool = Literal["train", "test"]
LEVELS: tuple[Level, ...] = ("easy", "hard")
FINAL_THOUGHT = "I have the answer."


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


@dataclass(frozen=True)
class Template:
    text: str
    recipe: Recipe


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    templates: dict[tuple[Pool, Level], tuple[Template, ...]]


def _n(value: float | int) -> str:
    return format_number(value)


def _num(text: str) -> float | int:
    # Read a printed observation back exactly as the calculator's parser would.
    return float(text) if "." in text else int(text)


def _calc(thought: str, expression: str, value: float | int) -> PlannedCall:
    return PlannedCall(thought, "calculator", expression, _n(value))


# ---------------------------------------------------------------------------- arithmetic


def _arith_easy(op: str) -> Recipe:
    def recipe(rng: random.Random) -> Problem:
        if op == "+":
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            value: float | int = a + b
        elif op == "-":
            a = rng.randint(100, 999)
            b = rng.randint(1, a - 1)
            value = a - b
        elif op == "*":
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            value = a * b
        else:
            b = rng.randint(2, 25)
            a = b * rng.randint(2, 60) if rng.random() < 0.5 else rng.randint(10, 999)
            value = a / b
        expression = f"{a} {op} {b}"
        call = _calc(f"Compute {expression}.", expression, value)
        return Problem({"a": str(a), "b": str(b)}, (call,))

    return recipe


def _sum_then_multiply(rng: random.Random) -> Problem:
    a, b, c = rng.randint(10, 200), rng.randint(10, 200), rng.randint(2, 12)
    total = a + b
    return Problem(
        {"a": str(a), "b": str(b), "c": str(c)},
        (
            _calc(f"Add {a} and {b}, then multiply by {c}.", f"{a} + {b}", total),
            _calc(f"Now multiply by {c}.", f"{total} * {c}", total * c),
        ),
    )


def _subtract_then_divide(rng: random.Random) -> Problem:
    a = rng.randint(100, 999)
    b, c = rng.randint(1, a - 1), rng.randint(2, 9)
    rest = a - b
    return Problem(
        {"a": str(a), "b": str(b), "c": str(c)},
        (
            _calc(f"Subtract {b} from {a}, then divide by {c}.", f"{a} - {b}", rest),
            _calc(f"Now divide by {c}.", f"{rest} / {c}", rest / c),
        ),
    )


def _average_of_three(rng: random.Random) -> Problem:
    a, b, c = (rng.randint(1, 300) for _ in range(3))
    total = a + b + c
    return Problem(
        {"a": str(a), "b": str(b), "c": str(c)},
        (
            _calc("Add the three numbers, then divide by 3.", f"{a} + {b} + {c}", total),
            _calc("Now divide the sum by 3.", f"{total} / 3", total / 3),
        ),
    )


def _groups_minus(rng: random.Random) -> Problem:
    n, a = rng.randint(2, 30), rng.randint(2, 50)
    b = rng.randint(1, n * a - 1)
    total = n * a
    return Problem(
        {"n": str(n), "a": str(a), "b": str(b)},
        (
            _calc(f"Multiply {n} by {a}, then subtract {b}.", f"{n} * {a}", total),
            _calc(f"Now subtract {b}.", f"{total} - {b}", total - b),
        ),
    )


# ---------------------------------------------------------------------------- percent

_PERCENTS = (5, 10, 12.5, 15, 20, 25, 30, 35, 40, 45, 50, 60, 75, 80, 8, 3, 2.5, 18, 65)


def _percent_of(rng: random.Random) -> Problem:
    p, x = rng.choice(_PERCENTS), rng.randint(2, 400) * 5
    expression = f"{_n(p)} * {x} / 100"
    return Problem(
        {"p": _n(p), "x": str(x)},
        (_calc(f"{_n(p)}% of {x} is {_n(p)} * {x} / 100.", expression, p * x / 100),),
    )


def _percent_change(rng: random.Random) -> Problem:
    x = rng.randint(20, 500)
    y = rng.choice([v for v in range(10, 1000) if v != x])
    return Problem(
        {"x": str(x), "y": str(y)},
        (
            _calc(
                "Change divided by the start, times 100.",
                f"({y} - {x}) / {x} * 100",
                (y - x) / x * 100,
            ),
        ),
    )


def _percent_ratio(rng: random.Random) -> Problem:
    b = rng.randint(20, 800)
    a = rng.randint(1, b)
    return Problem(
        {"a": str(a), "b": str(b)},
        (_calc(f"Divide {a} by {b} and multiply by 100.", f"{a} / {b} * 100", a / b * 100),),
    )


def _discount_then_tax(rng: random.Random) -> Problem:
    price, p, t = rng.randint(10, 500), rng.choice(_PERCENTS[:12]), rng.randint(3, 20)
    reduced = _n(price * (1 - p / 100))
    return Problem(
        {"price": str(price), "p": _n(p), "t": str(t)},
        (
            _calc(
                f"Take {_n(p)}% off, then add {t}% tax.",
                f"{price} * (1 - {_n(p)} / 100)",
                price * (1 - p / 100),
            ),
            _calc(
                f"Now add {t}% tax.", f"{reduced} * (1 + {t} / 100)", _num(reduced) * (1 + t / 100)
            ),
        ),
    )


def _two_increases(rng: random.Random) -> Problem:
    x, p, q = rng.randint(50, 2000), rng.randint(2, 30), rng.randint(2, 30)
    first = _n(x * (1 + p / 100))
    return Problem(
        {"x": str(x), "p": str(p), "q": str(q)},
        (
            _calc(
                f"Increase {x} by {p}%, then by {q}%.", f"{x} * (1 + {p} / 100)", x * (1 + p / 100)
            ),
            _calc(
                f"Now increase that by {q}%.",
                f"{first} * (1 + {q} / 100)",
                _num(first) * (1 + q / 100),
            ),
        ),
    )


def _percent_plus(rng: random.Random) -> Problem:
    p, x, y = rng.choice(_PERCENTS), rng.randint(2, 400) * 5, rng.randint(1, 500)
    part = _n(p * x / 100)
    return Problem(
        {"p": _n(p), "x": str(x), "y": str(y)},
        (
            _calc(f"Find {_n(p)}% of {x}, then add {y}.", f"{_n(p)} * {x} / 100", p * x / 100),
            _calc(f"Now add {y}.", f"{part} + {y}", _num(part) + y),
        ),
    )


# ---------------------------------------------------------------------------- compound


def _grow(
    rng: random.Random, sign: str, thought: str = "Apply the yearly rate for each year."
) -> tuple[dict[str, str], PlannedCall]:
    principal, rate, years = rng.randint(2, 200) * 50, rng.randint(1, 12), rng.randint(2, 10)
    factor = 1 + rate / 100 if sign == "+" else 1 - rate / 100
    expression = f"{principal} * (1 {sign} {rate} / 100) ** {years}"
    call = _calc(thought, expression, principal * factor**years)
    return {"P": str(principal), "r": str(rate), "n": str(years)}, call


def _compound_growth(rng: random.Random) -> Problem:
    slots, call = _grow(rng, "+")
    return Problem(slots, (call,))


def _compound_decay(rng: random.Random) -> Problem:
    slots, call = _grow(rng, "-")
    return Problem(slots, (call,))


def _interest_earned(rng: random.Random) -> Problem:
    slots, call = _grow(rng, "+", "Apply the yearly rate, then subtract the starting amount.")
    balance = call.observation
    return Problem(
        slots,
        (
            call,
            _calc(
                "Subtract the starting amount.",
                f"{balance} - {slots['P']}",
                _num(balance) - int(slots["P"]),
            ),
        ),
    )


def _balance_abroad(rng: random.Random) -> Problem:
    slots, call = _grow(rng, "+")
    target = rng.choice(["EUR", "GBP", "CHF", "CAD"])
    call = replace(call, thought=f"Apply the yearly rate, then convert to {target}.")
    value = exchange_value(_num(call.observation), "USD", target)
    exchange = PlannedCall(
        f"Convert to {target}.",
        "currency",
        f"{call.observation} USD to {target}",
        f"{_n(value)} {target}",
    )
    return Problem({**slots, "cur": target}, (call, exchange))


# ---------------------------------------------------------------------------- units

_UNIT_WORDS = {
    "mm": "millimeters",
    "cm": "centimeters",
    "m": "meters",
    "km": "kilometers",
    "in": "inches",
    "ft": "feet",
    "yd": "yards",
    "mi": "miles",
    "g": "grams",
    "kg": "kilograms",
    "oz": "ounces",
    "lb": "pounds",
    "ml": "milliliters",
    "l": "liters",
    "cup": "cups",
    "gal": "gallons",
    "min": "minutes",
    "h": "hours",
    "day": "days",
    "week": "weeks",
    "C": "degrees Celsius",
    "F": "degrees Fahrenheit",
}
_SINGULAR = {"inches": "inch", "feet": "foot", "days": "day", "weeks": "week", "hours": "hour"}
_DIMENSIONS = {
    "length": ("cm", "m", "km", "in", "ft", "yd", "mi"),
    "mass": ("g", "kg", "oz", "lb"),
    "volume": ("ml", "l", "cup", "gal"),
    "time": ("min", "h", "day", "week"),
    "temperature": ("C", "F"),
}


def _singular(word: str) -> str:
    return _SINGULAR.get(word, word[:-1] if word.endswith("s") else word)


def _unit_pair(rng: random.Random, dimensions: tuple[str, ...]) -> tuple[str, str]:
    return tuple(rng.sample(_DIMENSIONS[rng.choice(dimensions)], 2))  # type: ignore[return-value]


def _convert_call(value: float | int, source: str, target: str, thought: str) -> PlannedCall:
    result = _n(convert_value(float(value), source, target))
    argument = f"{_n(value)} {source} to {target}"
    return PlannedCall(thought, "convert", argument, f"{result} {target}")


def _convert_units(rng: random.Random) -> Problem:
    source, target = _unit_pair(rng, tuple(_DIMENSIONS))
    if source in ("C", "F"):
        value: float = rng.randint(-30, 110)
    else:
        value = rng.randint(1, 400) / rng.choice([1, 2])
    call = _convert_call(value, source, target, f"Convert {source} to {target}.")
    return Problem(
        {"value": _n(value), "src": _UNIT_WORDS[source], "dst": _UNIT_WORDS[target]}, (call,)
    )


# Goods sold by each dimension, so a question never prices rope by the cup.
_GOODS = {
    "length": ("rope", "cloth", "cable", "ribbon"),
    "mass": ("flour", "cheese", "coffee beans", "rice"),
    "volume": ("juice", "olive oil", "paint", "milk"),
}


def _price_per_unit(rng: random.Random) -> Problem:
    dimension = rng.choice(tuple(_GOODS))
    priced, asked = rng.sample(_DIMENSIONS[dimension], 2)
    item = rng.choice(_GOODS[dimension])
    price, quantity = rng.randint(1, 40) / rng.choice([1, 2]), rng.randint(2, 60)
    call = _convert_call(
        quantity,
        asked,
        priced,
        f"Convert {asked} to {priced}, then multiply by the price {_n(price)}.",
    )
    amount = call.observation.split()[0]
    return Problem(
        {
            "item": item,
            "price": _n(price),
            "per": _singular(_UNIT_WORDS[priced]),
            "q": str(quantity),
            "units": _UNIT_WORDS[asked],
        },
        (
            call,
            _calc(
                f"Multiply by the price {_n(price)}.",
                f"{amount} * {_n(price)}",
                _num(amount) * price,
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
            _calc(
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
        (call, _calc(f"Multiply {days} days by {rate}.", f"{days} * {rate}", days * rate)),
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

_CURRENCY_WORDS = {
    "USD": "US dollars",
    "EUR": "euros",
    "GBP": "British pounds",
    "JPY": "yen",
    "CHF": "Swiss francs",
    "CAD": "Canadian dollars",
    "AUD": "Australian dollars",
    "INR": "Indian rupees",
}


def _currency_pair(rng: random.Random) -> tuple[str, str, str, str]:
    source, target = rng.sample(sorted(CURRENCY_RATES), 2)
    # Codes or words in the question; the tool call always uses codes.
    shown = [code if rng.random() < 0.5 else _CURRENCY_WORDS[code] for code in (source, target)]
    return source, target, shown[0], shown[1]


def _exchange_call(amount: float | int, source: str, target: str, thought: str) -> PlannedCall:
    value = exchange_value(float(amount), source, target)
    return PlannedCall(
        thought, "currency", f"{_n(amount)} {source} to {target}", f"{_n(value)} {target}"
    )


def _exchange(rng: random.Random) -> Problem:
    source, target, shown_source, shown_target = _currency_pair(rng)
    amount = rng.randint(1, 2000) / rng.choice([1, 1, 4])
    call = _exchange_call(amount, source, target, f"Convert {source} to {target}.")
    return Problem({"x": _n(amount), "A": shown_source, "B": shown_target}, (call,))


def _items_abroad(rng: random.Random) -> Problem:
    source, target, shown_source, shown_target = _currency_pair(rng)
    count, price = rng.randint(2, 12), rng.randint(2, 400) / rng.choice([1, 2])
    total = count * price
    return Problem(
        {"k": str(count), "x": _n(price), "A": shown_source, "B": shown_target},
        (
            _calc(
                f"Multiply {count} by {_n(price)}, then convert {source} to {target}.",
                f"{count} * {_n(price)}",
                total,
            ),
            _exchange_call(_num(_n(total)), source, target, f"Convert {source} to {target}."),
        ),
    )


def _exchange_with_fee(rng: random.Random) -> Problem:
    source, target, shown_source, shown_target = _currency_pair(rng)
    amount, fee = rng.randint(10, 2000), rng.choice([1, 1.5, 2, 2.5, 3, 4, 5])
    call = _exchange_call(
        amount, source, target, f"Convert {source} to {target}, then add the {_n(fee)}% fee."
    )
    converted = call.observation.split()[0]
    return Problem(
        {"x": str(amount), "A": shown_source, "B": shown_target, "p": _n(fee)},
        (
            call,
            _calc(
                f"Now add the {_n(fee)}% fee.",
                f"{converted} * (1 + {_n(fee)} / 100)",
                _num(converted) * (1 + fee / 100),
            ),
        ),
    )


# ---------------------------------------------------------------------------- the skills


_add, _sub, _mul, _div = (_arith_easy(op) for op in "+-*/")
_after, _before = _date_shift("+"), _date_shift("-")

# skill -> (wording pool, level) -> [(question template, recipe)]. Test wordings never appear
# in the train pool: the frozen test set measures whether the model generalizes past them.
TEMPLATES: dict[str, dict[tuple[Pool, Level], list[tuple[str, Recipe]]]] = {
    "arithmetic": {
        ("train", "easy"): [
            ("What is {a} plus {b}?", _add),
            ("Add {a} and {b}.", _add),
            ("What is {a} minus {b}?", _sub),
            ("Subtract {b} from {a}.", _sub),
            ("What is {a} times {b}?", _mul),
            ("Multiply {a} by {b}.", _mul),
            ("What is {a} divided by {b}?", _div),
            ("Divide {a} by {b}.", _div),
            ("Compute {a} + {b}.", _add),
            ("What do you get when you add {b} to {a}?", _add),
            ("What is the total of {a} and {b}?", _add),
            ("Increase {a} by {b}. What is the result?", _add),
            ("Compute {a} - {b}.", _sub),
            ("What is {a} less {b}?", _sub),
            ("How much is left if you remove {b} from {a}?", _sub),
            ("What is the difference between {a} and {b}?", _sub),
            ("Calculate {a} * {b}.", _mul),
            ("What is {a} multiplied by {b}?", _mul),
            ("Multiply {b} and {a} together. What is their product?", _mul),
            (
                "There are {a} bags with {b} marbles in each. How many marbles are there in total?",
                _mul,
            ),
            ("Calculate {a} / {b}.", _div),
            ("What is the quotient when {a} is divided by {b}?", _div),
            ("Split {a} into {b} equal parts. How big is each part?", _div),
            (
                "{a} liters of water are poured evenly into {b} jugs. How much goes in each jug?",
                _div,
            ),
        ],
        ("test", "easy"): [
            ("Find the sum of {a} and {b}.", _add),
            ("How much is {a} take away {b}?", _sub),
            ("Compute the product of {a} and {b}.", _mul),
            ("If {a} is shared equally among {b} people, how much does each get?", _div),
        ],
        ("train", "hard"): [
            ("Add {a} and {b}, then multiply the result by {c}.", _sum_then_multiply),
            ("Take {a}, subtract {b}, and divide what is left by {c}.", _subtract_then_divide),
            ("What is the average of {a}, {b} and {c}?", _average_of_three),
            (
                "There are {n} boxes with {a} apples each. {b} apples are eaten. How "
                "many apples are left?",
                _groups_minus,
            ),
            ("Compute ({a} + {b}) * {c}.", _sum_then_multiply),
            ("Multiply {c} by the total of {a} plus {b}.", _sum_then_multiply),
            (
                "{c} friends each pay {a} dollars plus {b} dollars. How much do they pay "
                "altogether?",
                _sum_then_multiply,
            ),
            ("What is {a} minus {b}, divided by {c}?", _subtract_then_divide),
            ("Compute ({a} - {b}) / {c}.", _subtract_then_divide),
            (
                "A tank holds {a} liters. After {b} liters leak out, the rest is split evenly "
                "into {c} barrels. How much goes in each barrel?",
                _subtract_then_divide,
            ),
            ("Compute the arithmetic mean of {a}, {b} and {c}.", _average_of_three),
            ("Three test scores are {a}, {b} and {c}. What is their average?", _average_of_three),
            ("Add {a}, {b} and {c}, then divide by 3.", _average_of_three),
            (
                "{n} packs hold {a} pens each. After {b} pens are given away, how many pens "
                "remain?",
                _groups_minus,
            ),
            ("Multiply {n} by {a}, then subtract {b}.", _groups_minus),
            ("What is {n} times {a}, minus {b}?", _groups_minus),
        ],
        ("test", "hard"): [
            (
                "Sum {a} with {b} and multiply that total by {c}. What do you get?",
                _sum_then_multiply,
            ),
            ("Find the mean of the numbers {a}, {b} and {c}.", _average_of_three),
            (
                "A shelf has {n} rows of {a} books and {b} books are sold. How many remain?",
                _groups_minus,
            ),
        ],
    },
    "percent": {
        ("train", "easy"): [
            ("What is {p}% of {x}?", _percent_of),
            ("Calculate {p} percent of {x}.", _percent_of),
            ("What is the percent change from {x} to {y}?", _percent_change),
            ("{a} is what percent of {b}?", _percent_ratio),
            ("Find {p}% of {x}.", _percent_of),
            ("Of {x}, what is {p}%?", _percent_of),
            (
                "A budget of {x} dollars puts {p}% toward rent. How many dollars is that?",
                _percent_of,
            ),
            ("Work out {p} percent of the number {x}.", _percent_of),
            ("A price goes from {x} to {y}. What is the percentage change?", _percent_change),
            ("Find the percent change when {x} becomes {y}.", _percent_change),
            ("Starting at {x} and ending at {y}, what is the change in percent?", _percent_change),
            ("Express {a} as a percentage of {b}.", _percent_ratio),
            ("What percent is {a} out of {b}?", _percent_ratio),
            ("{a} out of {b} students passed the exam. What percent passed?", _percent_ratio),
            ("Find what percent {a} is of {b}.", _percent_ratio),
        ],
        ("test", "easy"): [
            ("How much is {p} percent of {x}?", _percent_of),
            ("By what percentage does a value move going from {x} to {y}?", _percent_change),
            ("What percentage of {b} is {a}?", _percent_ratio),
        ],
        ("train", "hard"): [
            (
                "A ${price} item is {p}% off, then {t}% tax is added. What is the final price?",
                _discount_then_tax,
            ),
            (
                "A price of {x} rises by {p}% and then by another {q}%. What is it now?",
                _two_increases,
            ),
            ("Take {p}% of {x} and add {y}.", _percent_plus),
            ("Take {p}% off ${price}, then add {t}% tax. What is the total?", _discount_then_tax),
            (
                "A jacket listed at ${price} is discounted {p}% and then taxed at {t}%. Find the "
                "price paid.",
                _discount_then_tax,
            ),
            ("${price} minus {p}%, plus {t}% tax: what is the final amount?", _discount_then_tax),
            ("Increase {x} by {p}%, then increase the result by {q}%.", _two_increases),
            (
                "A salary of {x} is raised by {p}%, and later by {q}%. What is the new salary?",
                _two_increases,
            ),
            ("What is {x} after a {p}% rise followed by a {q}% rise?", _two_increases),
            ("Find {p}% of {x}, then add {y} to it.", _percent_plus),
            ("What is {y} more than {p}% of {x}?", _percent_plus),
            ("Compute {p} percent of {x} plus {y}.", _percent_plus),
            (
                "A ${price} lamp is marked down {p}% and then {t}% tax is charged. What is the "
                "final cost?",
                _discount_then_tax,
            ),
            ("Discount ${price} by {p}% and add {t}% tax on the result.", _discount_then_tax),
            (
                "{x} grows by {p}% and then by another {q}%. What is the final value?",
                _two_increases,
            ),
            ("Raise {x} by {p}% and then raise the new value by {q}%.", _two_increases),
            ("Calculate {p}% of {x} and then add {y}.", _percent_plus),
        ],
        ("test", "hard"): [
            (
                "After a {p}% discount and {t}% sales tax, what does a ${price} coat cost?",
                _discount_then_tax,
            ),
            (
                "Rent of {x} goes up {p}% one year and {q}% the next. What is the rent now?",
                _two_increases,
            ),
            ("What number do you get by adding {y} to {p} percent of {x}?", _percent_plus),
        ],
    },
    "compound": {
        ("train", "easy"): [
            (
                "${P} is invested at {r}% a year, compounded yearly. What is the "
                "balance after {n} years?",
                _compound_growth,
            ),
            (
                "A town of {P} people grows {r}% per year. What is its size after {n} years?",
                _compound_growth,
            ),
            (
                "A ${P} car loses {r}% of its value every year. What is it worth after {n} years?",
                _compound_decay,
            ),
            (
                "Find the value of ${P} after {n} years at {r}% annual interest, compounded "
                "yearly.",
                _compound_growth,
            ),
            ("Compound ${P} at {r}% per year for {n} years. What is the result?", _compound_growth),
            (
                "A colony of {P} bacteria grows by {r}% each year. How many are there after {n} "
                "years?",
                _compound_growth,
            ),
            (
                "{n} years of {r}% yearly growth, starting from {P}: what is the final value?",
                _compound_growth,
            ),
            (
                "A ${P} laptop loses {r}% of its value each year. How much is it worth in {n} "
                "years?",
                _compound_decay,
            ),
            (
                "A population of {P} shrinks by {r}% every year. What is it after {n} years?",
                _compound_decay,
            ),
            ("What is ${P} worth after {n} years if it falls {r}% per year?", _compound_decay),
            ("Decrease {P} by {r}% a year, compounded, for {n} years.", _compound_decay),
        ],
        ("test", "easy"): [
            (
                "What will ${P} become in {n} years at {r}% interest compounded once a year?",
                _compound_growth,
            ),
            (
                "A machine bought for ${P} depreciates {r}% annually. Find its value in {n} years.",
                _compound_decay,
            ),
        ],
        ("train", "hard"): [
            (
                "How much interest does ${P} earn in {n} years at {r}% compounded annually?",
                _interest_earned,
            ),
            (
                "{P} USD earns {r}% a year, compounded yearly. What is it in {cur} "
                "after {n} years?",
                _balance_abroad,
            ),
            (
                "${P} is deposited at {r}% interest compounded yearly. How much interest is "
                "earned after {n} years?",
                _interest_earned,
            ),
            (
                "Over {n} years at {r}% compounded yearly, how much does a ${P} deposit gain?",
                _interest_earned,
            ),
            (
                "Compute the compound interest on ${P} at {r}% a year for {n} years.",
                _interest_earned,
            ),
            (
                "A deposit of {P} USD grows {r}% a year, compounded, for {n} years. Convert the "
                "final balance to {cur}.",
                _balance_abroad,
            ),
            (
                "How much is {P} USD in {cur} after {n} years of {r}% yearly compound growth?",
                _balance_abroad,
            ),
            (
                "Invest {P} USD at {r}% compounded annually for {n} years, then give the balance "
                "in {cur}.",
                _balance_abroad,
            ),
            (
                "A ${P} deposit earns {r}% a year, compounded yearly, for {n} years. How much did "
                "it gain?",
                _interest_earned,
            ),
            (
                "Find the interest earned on ${P} at {r}% per year compounded annually over {n} "
                "years.",
                _interest_earned,
            ),
            (
                "${P} grows at {r}% a year for {n} years, compounded. By how much does it rise?",
                _interest_earned,
            ),
            (
                "How much more than ${P} is the balance after {n} years at {r}% compounded yearly?",
                _interest_earned,
            ),
            (
                "{P} USD is invested at {r}% a year, compounded, for {n} years. What is the "
                "balance in {cur}?",
                _balance_abroad,
            ),
            (
                "After {n} years at {r}% compounded yearly, what is a {P} USD deposit worth in "
                "{cur}?",
                _balance_abroad,
            ),
            (
                "A {P} USD account grows {r}% each year for {n} years. How much is that in {cur}?",
                _balance_abroad,
            ),
            (
                "Grow {P} USD by {r}% a year for {n} years and convert the result to {cur}.",
                _balance_abroad,
            ),
        ],
        ("test", "hard"): [
            (
                "What is the gain on ${P} left for {n} years at {r}% yearly compound interest?",
                _interest_earned,
            ),
            (
                "Savings of {P} USD grow {r}% per year for {n} years. Give the final "
                "amount in {cur}.",
                _balance_abroad,
            ),
        ],
    },
    "units": {
        ("train", "easy"): [
            ("Convert {value} {src} to {dst}.", _convert_units),
            ("How many {dst} are in {value} {src}?", _convert_units),
            ("{value} {src} is how many {dst}?", _convert_units),
            ("What is {value} {src} in {dst}?", _convert_units),
            ("Change {value} {src} into {dst}.", _convert_units),
            ("I have {value} {src}. How many {dst} is that?", _convert_units),
            ("How much is {value} {src} in {dst}?", _convert_units),
            ("Give {value} {src} as {dst}.", _convert_units),
            ("Rewrite {value} {src} using {dst}.", _convert_units),
            ("If something measures {value} {src}, what is that in {dst}?", _convert_units),
            ("Turn {value} {src} into {dst}.", _convert_units),
        ],
        ("test", "easy"): [
            ("Express {value} {src} in {dst}.", _convert_units),
            ("What is {value} {src} when measured in {dst}?", _convert_units),
        ],
        ("train", "hard"): [
            (
                "The price of {item} is ${price} per {per}. How much do {q} {units} cost?",
                _price_per_unit,
            ),
            (
                "Add up {k} amounts of {v} {src} each. How many {dst} is the total?",
                _total_then_convert,
            ),
            (
                "How much do {q} {units} of {item} cost if one {per} costs ${price}?",
                _price_per_unit,
            ),
            (
                "You need {q} {units} of {item}, priced at ${price} per {per}. What is the total "
                "cost?",
                _price_per_unit,
            ),
            ("Buy {q} {units} of {item} at ${price} per {per}. What do you pay?", _price_per_unit),
            ("One {per} of {item} is ${price}. Find the cost of {q} {units}.", _price_per_unit),
            ("Multiply {v} {src} by {k} and give the answer in {dst}.", _total_then_convert),
            ("What is {k} times {v} {src}, in {dst}?", _total_then_convert),
            (
                "Take {k} portions of {v} {src} each and convert the total to {dst}.",
                _total_then_convert,
            ),
            (
                "Combine {k} equal amounts of {v} {src}. What does that come to in {dst}?",
                _total_then_convert,
            ),
            (
                "{k} containers each hold {v} {src}. What is the total in {dst}?",
                _total_then_convert,
            ),
            ("How many {dst} are {k} batches of {v} {src}?", _total_then_convert),
            (
                "There are {k} pieces of {v} {src} each. What is their total in {dst}?",
                _total_then_convert,
            ),
            ("{k} times {v} {src} equals how many {dst}?", _total_then_convert),
            ("What do {k} sets of {v} {src} add up to, in {dst}?", _total_then_convert),
            ("Work out {k} x {v} {src} and write the total in {dst}.", _total_then_convert),
            (
                "If {item} sells for ${price} per {per}, what would {q} {units} cost?",
                _price_per_unit,
            ),
            (
                "Find the price of {q} {units} of {item} when each {per} costs ${price}.",
                _price_per_unit,
            ),
            (
                "What is the cost of {q} {units} of {item} at a rate of ${price} per {per}?",
                _price_per_unit,
            ),
            ("A shop sells {item} at ${price} a {per}. What do {q} {units} cost?", _price_per_unit),
            (
                "Each {per} of {item} is priced at ${price}. How much would you pay for {q} "
                "{units}?",
                _price_per_unit,
            ),
        ],
        ("test", "hard"): [
            (
                "At ${price} for each {per} of {item}, what do {q} {units} cost?",
                _price_per_unit,
            ),
            (
                "What is {k} lots of {v} {src}, expressed in {dst}?",
                _total_then_convert,
            ),
        ],
    },
    "dates": {
        ("train", "easy"): [
            ("What date is {n} days after {d}?", _after),
            ("Add {n} days to {d}.", _after),
            ("What was the date {n} days before {d}?", _before),
            ("How many days are there between {d1} and {d2}?", _days_between),
            ("What day of the week is {d}?", _weekday),
            ("What is the date {n} days from {d}?", _after),
            ("Starting from {d}, count forward {n} days. What is the date?", _after),
            ("{d} plus {n} days is which date?", _after),
            ("Subtract {n} days from {d}.", _before),
            ("What date is {n} days earlier than {d}?", _before),
            ("Go back {n} days from {d}. What is the date?", _before),
            ("How many days separate {d1} and {d2}?", _days_between),
            ("Find the number of days from {d1} until {d2}.", _days_between),
            ("A trip starts on {d1} and ends on {d2}. How many days long is it?", _days_between),
            ("Which day of the week was {d}?", _weekday),
            ("Tell me the weekday of {d}.", _weekday),
            ("Find the day of the week for {d}.", _weekday),
        ],
        ("test", "easy"): [
            ("Which date comes {n} days later than {d}?", _after),
            ("Count the days from {d1} to {d2}.", _days_between),
            ("On which weekday does {d} fall?", _weekday),
        ],
        ("train", "hard"): [
            (
                "A hotel room costs ${rate} per night. What is the bill for a stay "
                "from {d1} to {d2}?",
                _daily_cost,
            ),
            ("What weekday is it {n} days after {d}?", _weekday_after),
            ("Parking costs ${rate} per day. What is the charge from {d1} to {d2}?", _daily_cost),
            ("At ${rate} a night, how much is a hotel stay between {d1} and {d2}?", _daily_cost),
            (
                "A storage unit rents for ${rate} daily. What is the rent from {d1} until {d2}?",
                _daily_cost,
            ),
            ("Which weekday falls {n} days after {d}?", _weekday_after),
            ("Add {n} days to {d}. What day of the week is that?", _weekday_after),
            ("If today is {d}, what day of the week is it in {n} days?", _weekday_after),
            ("What day of the week will it be {n} days after {d}?", _weekday_after),
            ("{n} days from {d}, what weekday is it?", _weekday_after),
            (
                "A project starts on {d} and lasts {n} days. On which weekday does it end?",
                _weekday_after,
            ),
            (
                "Count {n} days forward from {d}. Which day of the week do you land on?",
                _weekday_after,
            ),
            ("Name the weekday that is {n} days past {d}.", _weekday_after),
            (
                "A parcel sent on {d} arrives {n} days later. On what weekday does it arrive?",
                _weekday_after,
            ),
            ("A car rental is ${rate} per day. What does it cost from {d1} to {d2}?", _daily_cost),
            (
                "A daily fee of ${rate} applies from {d1} until {d2}. What is the total fee?",
                _daily_cost,
            ),
            (
                "How much do you pay for a boat at ${rate} per day, from {d1} to {d2}?",
                _daily_cost,
            ),
            (
                "Between {d1} and {d2}, a subscription charges ${rate} per day. What is the total?",
                _daily_cost,
            ),
            ("A nurse earns ${rate} a day. How much is earned from {d1} to {d2}?", _daily_cost),
        ],
        ("test", "hard"): [
            ("Renting a bike is ${rate} a day. How much for the period {d1} to {d2}?", _daily_cost),
            ("Starting on {d}, which day of the week will it be {n} days later?", _weekday_after),
        ],
    },
    "currency": {
        ("train", "easy"): [
            ("Convert {x} {A} to {B}.", _exchange),
            ("How many {B} is {x} {A}?", _exchange),
            ("What is {x} {A} in {B}?", _exchange),
            ("What does {x} {A} come to in {B}?", _exchange),
            ("Change {x} {A} to {B}.", _exchange),
            ("I have {x} {A}. How much is that in {B}?", _exchange),
            ("How much is {x} {A} worth in {B}?", _exchange),
            ("Turn {x} {A} into {B}.", _exchange),
            ("{x} {A} converted to {B} is how much?", _exchange),
            ("Using the exchange rate, convert {x} {A} into {B}.", _exchange),
        ],
        ("test", "easy"): [
            ("Exchange {x} {A} into {B}. How much do you get?", _exchange),
            ("{x} {A} equals how many {B}?", _exchange),
        ],
        ("train", "hard"): [
            ("{k} tickets cost {x} {A} each. What is the total in {B}?", _items_abroad),
            ("Convert {x} {A} to {B} and add a {p}% fee. How much in {B}?", _exchange_with_fee),
            ("A book costs {x} {A}. How much do {k} books cost in {B}?", _items_abroad),
            ("Buy {k} shirts at {x} {A} each and pay in {B}. What is the total?", _items_abroad),
            ("What is {k} times {x} {A}, converted to {B}?", _items_abroad),
            ("{k} meals at {x} {A} apiece: what is the bill in {B}?", _items_abroad),
            (
                "A bank changes {x} {A} to {B} and charges {p}% on top. What is the total in {B}?",
                _exchange_with_fee,
            ),
            (
                "How much in {B} does it cost to convert {x} {A} with a {p}% fee added?",
                _exchange_with_fee,
            ),
            ("Convert {x} {A} into {B}, then add a {p}% service charge.", _exchange_with_fee),
            ("{k} hats cost {x} {A} each. How much is that altogether in {B}?", _items_abroad),
            ("What do {k} tickets at {x} {A} each cost in {B}?", _items_abroad),
            ("Pay for {k} rooms at {x} {A} per room. What is the total in {B}?", _items_abroad),
            (
                "Exchanging {x} {A} to {B} has a {p}% fee. What is the total in {B}?",
                _exchange_with_fee,
            ),
            (
                "A {p}% fee is added when converting {x} {A} to {B}. How much is that in {B}?",
                _exchange_with_fee,
            ),
        ],
        ("test", "hard"): [
            ("You buy {k} items priced at {x} {A} apiece. How much is that in {B}?", _items_abroad),
            (
                "Changing {x} {A} into {B} costs a {p}% commission on top. What do you pay in {B}?",
                _exchange_with_fee,
            ),
        ],
    },
}

# A hand-written template ties its setup to its ask: "Starting from {d}, count forward {n}
# days. What is the date?" teaches that "starting from" means a date shift, and a question that
# starts alike but asks for the weekday is then shifted and answered with a date (the frozen
# test set caught exactly that). Crossing each setup with each ask breaks the tie: only the ask
# tells the plans apart, so the model has to read it. Train pool only; the test pool's
# wordings stay unseen (tests/test_skills.py checks that no composed wording is a test one).
# skill -> [(setups, [(ask, level, recipe)])]
_COMPOSED: dict[str, list[tuple[tuple[str, ...], tuple[tuple[str, Level, Recipe], ...]]]] = {
    "dates": [
        (
            (
                "Start from {d} and count {n} days forward.",
                "Take the date {d} and move {n} days ahead.",
                "Today is {d}. Think of the day {n} days from now.",
                "A trip begins on {d} and lasts {n} days.",
                "Go {n} days past {d}.",
            ),
            (
                ("What is the date?", "easy", _after),
                ("Which date is that?", "easy", _after),
                ("What day of the week is it then?", "hard", _weekday_after),
                ("Which weekday is that?", "hard", _weekday_after),
            ),
        ),
        (
            (
                "A rental runs from {d1} to {d2}.",
                "Someone stays from {d1} until {d2}.",
                "A job lasts from {d1} to {d2}.",
            ),
            (
                ("How many days is that?", "easy", _days_between),
                ("Count the days it covers.", "easy", _days_between),
                ("At ${rate} a day, what is the total?", "hard", _daily_cost),
                ("It is paid ${rate} per day. How much in all?", "hard", _daily_cost),
            ),
        ),
        (
            (
                "Hiring a van is ${rate} a day.",
                "A locker costs ${rate} per day.",
                "A dog sitter charges ${rate} a day.",
            ),
            (
                ("What is owed from {d1} to {d2}?", "hard", _daily_cost),
                ("What do you pay for {d1} until {d2}?", "hard", _daily_cost),
            ),
        ),
    ],
    "compound": [
        (
            (
                "{P} USD is invested for {n} years at {r}% a year, compounded.",
                "A deposit of {P} USD earns {r}% per year, compounded yearly, for {n} years.",
                "{P} USD grows by {r}% every year for {n} years.",
                "An account holds {P} USD and gains {r}% each year, compounded, for {n} years.",
            ),
            (
                ("What is the balance at the end?", "easy", _compound_growth),
                ("How much is there after the last year?", "easy", _compound_growth),
                ("What is the end balance in {cur}?", "hard", _balance_abroad),
                ("How much is that in {cur}?", "hard", _balance_abroad),
                ("How much interest does it earn?", "hard", _interest_earned),
                ("By how much does it grow in total?", "hard", _interest_earned),
            ),
        ),
    ],
    "percent": [
        (
            (
                "Take {p}% of {x}.",
                "Work out {p} percent of {x}.",
                "Start with {p}% of the number {x}.",
            ),
            (
                ("What is the result?", "easy", _percent_of),
                ("What number is that?", "easy", _percent_of),
                ("Then add {y}. What is the result?", "hard", _percent_plus),
                ("What is that plus {y}?", "hard", _percent_plus),
            ),
        ),
        (
            (
                "A ${price} chair gets a {p}% discount,",
                "With {p}% off, a ${price} bag is reduced,",
                "A {p}% discount applies to a ${price} lamp,",
            ),
            (
                ("and then {t}% tax is added. What is paid?", "hard", _discount_then_tax),
                ("then {t}% tax goes on top. What is the final price?", "hard",
                 _discount_then_tax),
            ),
        ),
    ],
}
for _skill, _groups in _COMPOSED.items():
    for _setups, _asks in _groups:
        for _setup in _setups:
            for _ask, _level, _recipe in _asks:
                TEMPLATES[_skill][("train", _level)].append((f"{_setup} {_ask}", _recipe))

_DESCRIPTIONS = {
    "arithmetic": "one or two calculator steps",
    "percent": "percentages, changes, discounts and tax",
    "compound": "compound interest, growth and decay",
    "units": "unit conversions, alone or with a price or a total",
    "dates": "date shifts, day counts, weekdays, daily rates",
    "currency": "money at fixed exchange rates",
}

SKILLS: dict[str, Skill] = {
    name: Skill(
        name,
        _DESCRIPTIONS[name],
        {key: tuple(Template(*pair) for pair in pairs) for key, pairs in pools.items()},
    )
    for name, pools in TEMPLATES.items()
}
