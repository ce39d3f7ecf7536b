"""Safe, deterministic tools the agent calls: calculator, unit and currency conversion, dates.

Every tool takes one text argument and returns a short text observation. A bad argument
raises `ToolError` whose message shows the expected form; `run_tool` turns any failure into
an "Error: ..." observation so the agent loop never crashes on a tool.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from agent.react_format import format_number, parse_number


class ToolError(ValueError):
    """A tool argument that cannot be used; the message says what form is expected."""


@dataclass(frozen=True)
class Tool:
    """A named tool: `run(argument) -> observation`."""

    name: str
    description: str
    run: Callable[[str], str]


# ---------------------------------------------------------------------------- calculator

MAX_MAGNITUDE = 1e15  # beyond this results are not "everyday" numbers and floats lose cents
MAX_EXPONENT = 100
MAX_EXPRESSION_CHARS = 200

_BINARY_OPS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CALCULATOR_FORM = "an arithmetic expression like 12 * (3 + 4) / 2"


def calculate(expression: str) -> str:
    """Evaluate + - * / // % ** and parentheses on numbers; anything else is a ToolError."""
    text = expression.strip().rstrip("=").strip()
    if not text:
        raise ToolError(f"empty expression; expected {_CALCULATOR_FORM}")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    # Friendly spellings models produce; "^" would otherwise be Python's XOR.
    text = text.replace("\u00d7", "*").replace("÷", "/").replace("^", "**")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,200 -> 1200
    try:
        tree = ast.parse(text, mode="eval")
        value = _evaluate(tree.body)
    except ToolError:
        raise
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except (SyntaxError, RecursionError, MemoryError, OverflowError, ValueError) as exc:
        raise ToolError(
            f"cannot evaluate {text!r} ({type(exc).__name__}); expected {_CALCULATOR_FORM}"
        ) from None
    return format_number(value)


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"only numbers are allowed, got {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _evaluate(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left = _evaluate(node.left)
        right = _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        result = _BINARY_OPS[type(node.op)](left, right)
        if isinstance(result, complex):
            raise ToolError("the result is not a real number")
        return _checked(result)
    what = type(node).__name__
    if isinstance(node, ast.Name):
        what = f"the name {node.id!r}"
    elif isinstance(node, ast.Call):
        what = "a function call"
    elif isinstance(node, ast.Attribute):
        what = "an attribute"
    raise ToolError(f"{what} is not allowed; expected {_CALCULATOR_FORM}")


def _check_power(base: float, exponent: float) -> None:
    # Checked before computing: 9 ** 9 ** 9 would otherwise hang on a huge integer.
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent {format_number(exponent)} is larger than {MAX_EXPONENT}")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > 15:
        raise ToolError(f"result is larger than {MAX_MAGNITUDE:.0e}")


def _checked(value: float | int) -> float | int:
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise ToolError(f"result is larger than {MAX_MAGNITUDE:.0e}")
    return value


# ---------------------------------------------------------------------------- units

# Factor of each unit to its dimension's base unit (m, kg, l, s). Temperatures are special.
UNIT_FACTORS: dict[str, tuple[str, float]] = {
    "mm": ("length", 0.001),
    "cm": ("length", 0.01),
    "m": ("length", 1.0),
    "km": ("length", 1000.0),
    "in": ("length", 0.0254),
    "ft": ("length", 0.3048),
    "yd": ("length", 0.9144),
    "mi": ("length", 1609.344),
    "mg": ("mass", 1e-6),
    "g": ("mass", 0.001),
    "kg": ("mass", 1.0),
    "t": ("mass", 1000.0),
    "oz": ("mass", 0.028349523125),
    "lb": ("mass", 0.45359237),
    "ml": ("volume", 0.001),
    "l": ("volume", 1.0),
    "cup": ("volume", 0.2365882365),
    "qt": ("volume", 0.946352946),
    "gal": ("volume", 3.785411784),
    "s": ("time", 1.0),
    "min": ("time", 60.0),
    "h": ("time", 3600.0),
    "day": ("time", 86400.0),
    "week": ("time", 604800.0),
    "C": ("temperature", 1.0),
    "F": ("temperature", 1.0),
    "K": ("temperature", 1.0),
}

UNIT_ALIASES: dict[str, str] = {
    **{unit.lower(): unit for unit in UNIT_FACTORS},
    "millimeter": "mm",
    "millimeters": "mm",
    "millimetre": "mm",
    "millimetres": "mm",
    "centimeter": "cm",
    "centimeters": "cm",
    "centimetre": "cm",
    "centimetres": "cm",
    "meter": "m",
    "meters": "m",
    "metre": "m",
    "metres": "m",
    "kilometer": "km",
    "kilometers": "km",
    "kilometre": "km",
    "kilometres": "km",
    "inch": "in",
    "inches": "in",
    "foot": "ft",
    "feet": "ft",
    "yard": "yd",
    "yards": "yd",
    "mile": "mi",
    "miles": "mi",
    "milligram": "mg",
    "milligrams": "mg",
    "gram": "g",
    "grams": "g",
    "kilogram": "kg",
    "kilograms": "kg",
    "tonne": "t",
    "tonnes": "t",
    "ounce": "oz",
    "ounces": "oz",
    "pound": "lb",
    "pounds": "lb",
    "lbs": "lb",
    "milliliter": "ml",
    "milliliters": "ml",
    "millilitre": "ml",
    "millilitres": "ml",
    "liter": "l",
    "liters": "l",
    "litre": "l",
    "litres": "l",
    "cups": "cup",
    "quart": "qt",
    "quarts": "qt",
    "gallon": "gal",
    "gallons": "gal",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "minute": "min",
    "minutes": "min",
    "hr": "h",
    "hour": "h",
    "hours": "h",
    "days": "day",
    "weeks": "week",
    "celsius": "C",
    "°c": "C",
    "degrees celsius": "C",
    "degc": "C",
    "fahrenheit": "F",
    "°f": "F",
    "degrees fahrenheit": "F",
    "degf": "F",
    "kelvin": "K",
}

_CONVERT_FORM = "a value, a unit, 'to', a unit, like 12 km to mi"
_CONVERT_RE = re.compile(r"^\s*(-?[\d.,]+)\s*(.+?)\s+(?:to|in|into)\s+(.+?)\s*$", re.IGNORECASE)


def canonical_unit(name: str) -> str | None:
    """The unit symbol (e.g. "mi") for any accepted spelling ("miles"), or None."""
    return UNIT_ALIASES.get(" ".join(name.strip().lower().rstrip(".").split()))


def convert_value(value: float, source: str, target: str) -> float:
    """`value` in unit `source` expressed in unit `target` (canonical symbols)."""
    dimension, factor = UNIT_FACTORS[source]
    target_dimension, target_factor = UNIT_FACTORS[target]
    if dimension != target_dimension:
        raise ToolError(f"cannot convert {source} ({dimension}) to {target} ({target_dimension})")
    if dimension == "temperature":
        kelvin = {"C": value + 273.15, "F": (value - 32) * 5 / 9 + 273.15, "K": value}[source]
        return {"C": kelvin - 273.15, "F": (kelvin - 273.15) * 9 / 5 + 32, "K": kelvin}[target]
    return value * factor / target_factor


def convert(argument: str) -> str:
    """Convert units: "12 km to mi" -> "7.46 mi"."""
    match = _CONVERT_RE.match(argument)
    if not match:
        raise ToolError(f"expected {_CONVERT_FORM}")
    number = parse_number(match.group(1))
    if number is None:
        raise ToolError(f"{match.group(1)!r} is not a number; expected {_CONVERT_FORM}")
    source, target = canonical_unit(match.group(2)), canonical_unit(match.group(3))
    for raw, unit in ((match.group(2), source), (match.group(3), target)):
        if unit is None:
            known = ", ".join(UNIT_FACTORS)
            raise ToolError(f"unknown unit {raw!r}; known units: {known}")
    assert source is not None and target is not None
    result = convert_value(float(number), source, target)
    return f"{format_number(_checked(result))} {target}"


# ---------------------------------------------------------------------------- currency

# Fixed, made-up-but-plausible rates per 1 USD: deterministic, so answers can be verified.
CURRENCY_RATES: dict[str, float] = {
    "USD": 1.0,
    "EUR": 0.92,
    "GBP": 0.79,
    "JPY": 150.0,
    "CHF": 0.88,
    "CAD": 1.36,
    "AUD": 1.52,
    "INR": 83.0,
}
CURRENCY_ALIASES: dict[str, str] = {
    **{code.lower(): code for code in CURRENCY_RATES},
    "$": "USD",
    "dollar": "USD",
    "dollars": "USD",
    "us dollars": "USD",
    "euro": "EUR",
    "euros": "EUR",
    "€": "EUR",
    "pound sterling": "GBP",
    "british pounds": "GBP",
    "£": "GBP",
    "yen": "JPY",
    "japanese yen": "JPY",
    "swiss francs": "CHF",
    "francs": "CHF",
    "canadian dollars": "CAD",
    "australian dollars": "AUD",
    "rupees": "INR",
    "indian rupees": "INR",
}
_CURRENCY_FORM = "an amount, a currency code, 'to', a code, like 20 USD to EUR"


def exchange_value(amount: float, source: str, target: str) -> float:
    """`amount` of currency `source` in currency `target` at the fixed rates."""
    return amount / CURRENCY_RATES[source] * CURRENCY_RATES[target]


def currency(argument: str) -> str:
    """Convert money at fixed rates: "20 USD to EUR" -> "18.4 EUR"."""
    match = _CONVERT_RE.match(argument)
    if not match:
        raise ToolError(f"expected {_CURRENCY_FORM}")
    number = parse_number(match.group(1))
    if number is None:
        raise ToolError(f"{match.group(1)!r} is not a number; expected {_CURRENCY_FORM}")
    codes = []
    for raw in (match.group(2), match.group(3)):
        code = CURRENCY_ALIASES.get(" ".join(raw.strip().lower().split()))
        if code is None:
            raise ToolError(f"unknown currency {raw!r}; known: {', '.join(CURRENCY_RATES)}")
        codes.append(code)
    result = exchange_value(float(number), codes[0], codes[1])
    return f"{format_number(_checked(result))} {codes[1]}"


# ---------------------------------------------------------------------------- dates

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MAX_DAY_OFFSET = 100_000
_DATE = r"(\d{4}-\d{1,2}-\d{1,2})"
_SHIFT_RE = re.compile(rf"^{_DATE}\s*([+-])\s*(\d+)\s*(days?|weeks?)$", re.IGNORECASE)
_BETWEEN_RE = re.compile(rf"^days?\s+between\s+{_DATE}\s+and\s+{_DATE}$", re.IGNORECASE)
_WEEKDAY_RE = re.compile(rf"^(?:weekday|day of week)\s+(?:of\s+)?{_DATE}$", re.IGNORECASE)
_DATE_FORMS = (
    "one of: 2024-01-31 + 45 days | 2024-01-31 - 2 weeks | "
    "days between 2024-01-01 and 2024-03-01 | weekday 2024-07-04"
)


def _iso(text: str) -> date:
    try:
        year, month, day = (int(part) for part in text.split("-"))
        return date(year, month, day)
    except ValueError:
        raise ToolError(f"{text!r} is not a valid date (YYYY-MM-DD)") from None


def date_tool(argument: str) -> str:
    """Date arithmetic: shift by days/weeks, days between two dates, weekday of a date."""
    text = " ".join(argument.strip().rstrip("?.").split())
    if match := _SHIFT_RE.match(text):
        start, sign, amount, unit = match.groups()
        days = int(amount) * (7 if unit.lower().startswith("week") else 1)
        if days > MAX_DAY_OFFSET:
            raise ToolError(f"offset larger than {MAX_DAY_OFFSET} days")
        try:
            shifted = _iso(start) + timedelta(days=days if sign == "+" else -days)
        except OverflowError:
            raise ToolError("the date is out of range") from None
        return shifted.isoformat()
    if match := _BETWEEN_RE.match(text):
        first, second = _iso(match.group(1)), _iso(match.group(2))
        return str(abs((second - first).days))
    if match := _WEEKDAY_RE.match(text):
        return WEEKDAYS[_iso(match.group(1)).weekday()]
    raise ToolError(f"expected {_DATE_FORMS}")


# ---------------------------------------------------------------------------- registry


def default_tools() -> dict[str, Tool]:
    """The tools every agent gets, by name."""
    tools = [
        Tool("calculator", "Arithmetic: + - * / // % ** and parentheses. 12 * (3 + 4)", calculate),
        Tool("convert", "Units of length, mass, volume, temperature, time. 12 km to mi", convert),
        Tool("date", f"Dates, {_DATE_FORMS}", date_tool),
        Tool("currency", "Money at fixed rates. 20 USD to EUR", currency),
    ]
    return {tool.name: tool for tool in tools}


def run_tool(tools: dict[str, Tool], name: str, argument: str) -> str:
    """The tool's observation; an "Error: ..." observation instead of raising."""
    tool = tools.get(name.strip().lower())
    if tool is None:
        return f"Error: unknown tool {name!r}; use one of: {', '.join(sorted(tools))}"
    try:
        return tool.run(argument)
    except ToolError as exc:
        return f"Error: {exc}"
    except Exception as exc:  # a tool bug must not kill the agent loop
        return f"Error: {type(exc).__name__}: {exc}"
