"""Calculator recipes: arithmetic, percentages and compound growth (one or two steps)."""

from __future__ import annotations

import random
from dataclasses import replace

from agent.tools import exchange_value
from tasks.data.recipes.plans import (
    PlannedCall,
    Problem,
    Recipe,
    as_number,
    as_text,
    calculator_call,
)

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
        call = calculator_call(f"Compute {expression}.", expression, value)
        return Problem({"a": str(a), "b": str(b)}, (call,))

    return recipe


def _sum_then_multiply(rng: random.Random) -> Problem:
    a, b, c = rng.randint(10, 200), rng.randint(10, 200), rng.randint(2, 12)
    total = a + b
    return Problem(
        {"a": str(a), "b": str(b), "c": str(c)},
        (
            calculator_call(f"Add {a} and {b}, then multiply by {c}.", f"{a} + {b}", total),
            calculator_call(f"Now multiply by {c}.", f"{total} * {c}", total * c),
        ),
    )


def _subtract_then_divide(rng: random.Random) -> Problem:
    a = rng.randint(100, 999)
    b, c = rng.randint(1, a - 1), rng.randint(2, 9)
    rest = a - b
    return Problem(
        {"a": str(a), "b": str(b), "c": str(c)},
        (
            calculator_call(f"Subtract {b} from {a}, then divide by {c}.", f"{a} - {b}", rest),
            calculator_call(f"Now divide by {c}.", f"{rest} / {c}", rest / c),
        ),
    )


def _average_of_three(rng: random.Random) -> Problem:
    a, b, c = (rng.randint(1, 300) for _ in range(3))
    total = a + b + c
    return Problem(
        {"a": str(a), "b": str(b), "c": str(c)},
        (
            calculator_call("Add the three numbers, then divide by 3.", f"{a} + {b} + {c}", total),
            calculator_call("Now divide the sum by 3.", f"{total} / 3", total / 3),
        ),
    )


def _groups_minus(rng: random.Random) -> Problem:
    n, a = rng.randint(2, 30), rng.randint(2, 50)
    b = rng.randint(1, n * a - 1)
    total = n * a
    return Problem(
        {"n": str(n), "a": str(a), "b": str(b)},
        (
            calculator_call(f"Multiply {n} by {a}, then subtract {b}.", f"{n} * {a}", total),
            calculator_call(f"Now subtract {b}.", f"{total} - {b}", total - b),
        ),
    )


# ---------------------------------------------------------------------------- percent

_PERCENTS = (5, 10, 12.5, 15, 20, 25, 30, 35, 40, 45, 50, 60, 75, 80, 8, 3, 2.5, 18, 65)


def _percent_of(rng: random.Random) -> Problem:
    p, x = rng.choice(_PERCENTS), rng.randint(2, 400) * 5
    expression = f"{as_text(p)} * {x} / 100"
    return Problem(
        {"p": as_text(p), "x": str(x)},
        (
            calculator_call(
                f"{as_text(p)}% of {x} is {as_text(p)} * {x} / 100.", expression, p * x / 100
            ),
        ),
    )


def _percent_change(rng: random.Random) -> Problem:
    x = rng.randint(20, 500)
    y = rng.choice([v for v in range(10, 1000) if v != x])
    return Problem(
        {"x": str(x), "y": str(y)},
        (
            calculator_call(
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
        (
            calculator_call(
                f"Divide {a} by {b} and multiply by 100.", f"{a} / {b} * 100", a / b * 100
            ),
        ),
    )


def _discount_then_tax(rng: random.Random) -> Problem:
    price, p, t = rng.randint(10, 500), rng.choice(_PERCENTS[:12]), rng.randint(3, 20)
    reduced = as_text(price * (1 - p / 100))
    return Problem(
        {"price": str(price), "p": as_text(p), "t": str(t)},
        (
            calculator_call(
                f"Take {as_text(p)}% off, then add {t}% tax.",
                f"{price} * (1 - {as_text(p)} / 100)",
                price * (1 - p / 100),
            ),
            calculator_call(
                f"Now add {t}% tax.",
                f"{reduced} * (1 + {t} / 100)",
                as_number(reduced) * (1 + t / 100),
            ),
        ),
    )


def _two_increases(rng: random.Random) -> Problem:
    x, p, q = rng.randint(50, 2000), rng.randint(2, 30), rng.randint(2, 30)
    first = as_text(x * (1 + p / 100))
    return Problem(
        {"x": str(x), "p": str(p), "q": str(q)},
        (
            calculator_call(
                f"Increase {x} by {p}%, then by {q}%.", f"{x} * (1 + {p} / 100)", x * (1 + p / 100)
            ),
            calculator_call(
                f"Now increase that by {q}%.",
                f"{first} * (1 + {q} / 100)",
                as_number(first) * (1 + q / 100),
            ),
        ),
    )


def _percent_plus(rng: random.Random) -> Problem:
    p, x, y = rng.choice(_PERCENTS), rng.randint(2, 400) * 5, rng.randint(1, 500)
    part = as_text(p * x / 100)
    return Problem(
        {"p": as_text(p), "x": str(x), "y": str(y)},
        (
            calculator_call(
                f"Find {as_text(p)}% of {x}, then add {y}.",
                f"{as_text(p)} * {x} / 100",
                p * x / 100,
            ),
            calculator_call(f"Now add {y}.", f"{part} + {y}", as_number(part) + y),
        ),
    )


# ---------------------------------------------------------------------------- compound


def _grow(
    rng: random.Random, sign: str, thought: str = "Apply the yearly rate for each year."
) -> tuple[dict[str, str], PlannedCall]:
    principal, rate, years = rng.randint(2, 200) * 50, rng.randint(1, 12), rng.randint(2, 10)
    factor = 1 + rate / 100 if sign == "+" else 1 - rate / 100
    expression = f"{principal} * (1 {sign} {rate} / 100) ** {years}"
    call = calculator_call(thought, expression, principal * factor**years)
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
            calculator_call(
                "Subtract the starting amount.",
                f"{balance} - {slots['P']}",
                as_number(balance) - int(slots["P"]),
            ),
        ),
    )


def _balance_abroad(rng: random.Random) -> Problem:
    slots, call = _grow(rng, "+")
    target = rng.choice(["EUR", "GBP", "CHF", "CAD"])
    call = replace(call, thought=f"Apply the yearly rate, then convert to {target}.")
    value = exchange_value(as_number(call.observation), "USD", target)
    exchange = PlannedCall(
        f"Convert to {target}.",
        "currency",
        f"{call.observation} USD to {target}",
        f"{as_text(value)} {target}",
    )
    return Problem({**slots, "cur": target}, (call, exchange))


_add, _sub, _mul, _div = (_arith_easy(op) for op in "+-*/")

# The name a catalogue file gives each recipe.
NUMBER_RECIPES: dict[str, Recipe] = {
    "add": _add,
    "sub": _sub,
    "mul": _mul,
    "div": _div,
    "sum_then_multiply": _sum_then_multiply,
    "subtract_then_divide": _subtract_then_divide,
    "average_of_three": _average_of_three,
    "groups_minus": _groups_minus,
    "percent_of": _percent_of,
    "percent_change": _percent_change,
    "percent_ratio": _percent_ratio,
    "discount_then_tax": _discount_then_tax,
    "two_increases": _two_increases,
    "percent_plus": _percent_plus,
    "compound_growth": _compound_growth,
    "compound_decay": _compound_decay,
    "interest_earned": _interest_earned,
    "balance_abroad": _balance_abroad,
}
