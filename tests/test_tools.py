"""The agent's tools: safe calculator, known conversions and dates, errors as observations."""

from __future__ import annotations

import time

import pytest

from agent.tools import ToolError, calculate, convert, currency, date_tool, default_tools, run_tool


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("12 * 7", "84"),
        ("(3 + 4) * -2", "-14"),
        ("7 / 2", "3.5"),
        ("10 / 3", "3.33"),
        ("17 // 5", "3"),
        ("17 % 5", "2"),
        ("2 ** 10", "1024"),
        ("2^3", "8"),
        ("1,200 * 2", "2400"),
        ("0.1 + 0.2", "0.3"),
        ("1000 * (1 + 5 / 100) ** 3", "1157.63"),
    ],
)
def test_calculator_computes(expression: str, result: str) -> None:
    assert calculate(expression) == result


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "function call"),
        ("os.system('ls')", "not allowed"),
        ("x + 1", "the name 'x'"),
        ("().__class__", "not allowed"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("[1, 2]", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("1 / 0", "division by zero"),
        ("10 ** 100", "larger than"),
        ("9 ** 9 ** 9", "larger than"),
        ("99999999 * 99999999", "larger than"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 +", "cannot evaluate"),
        ("", "empty"),
        ("1+" * 150 + "1", "longer than"),
    ],
)
def test_calculator_rejects(expression: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ToolError, match=message):
        calculate(expression)
    assert time.perf_counter() - started < 1.0  # huge powers are refused, not computed


@pytest.mark.parametrize(
    ("argument", "result"),
    [
        ("12 km to mi", "7.46 mi"),
        ("1 mi to km", "1.61 km"),
        ("100 C to F", "212 F"),
        ("32 fahrenheit to celsius", "0 C"),
        ("0 C to K", "273.15 K"),
        ("3 kg to lb", "6.61 lb"),
        ("1 gallon in liters", "3.79 l"),
        ("90 minutes to hours", "1.5 h"),
        ("2 weeks to days", "14 day"),
        ("12 inches to feet", "1 ft"),
    ],
)
def test_convert_known_values(argument: str, result: str) -> None:
    assert convert(argument) == result


@pytest.mark.parametrize(
    ("argument", "message"),
    [("12 km to kg", "cannot convert"), ("12 parsecs to km", "unknown unit"), ("km", "expected")],
)
def test_convert_rejects(argument: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        convert(argument)


@pytest.mark.parametrize(
    ("argument", "result"),
    [
        ("2024-01-31 + 45 days", "2024-03-16"),
        ("2024-03-01 - 1 days", "2024-02-29"),
        ("2024-01-01 + 2 weeks", "2024-01-15"),
        ("days between 2024-01-01 and 2024-03-01", "60"),
        ("days between 2024-03-01 and 2024-01-01", "60"),
        ("weekday 2024-07-04", "Thursday"),
        ("weekday of 2000-01-01", "Saturday"),
    ],
)
def test_date_known_values(argument: str, result: str) -> None:
    assert date_tool(argument) == result


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("2024-02-30 + 1 days", "not a valid date"),
        ("tomorrow", "expected one of"),
        ("2024-01-01 + 999999 days", "offset larger"),
    ],
)
def test_date_rejects(argument: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        date_tool(argument)


def test_currency_uses_fixed_rates() -> None:
    assert currency("20 USD to EUR") == "18.4 EUR"
    assert currency("18.4 eur to usd") == "20 USD"
    assert currency("100 euros to yen") == "16304.35 JPY"
    with pytest.raises(ToolError, match="unknown currency"):
        currency("5 BTC to USD")


def test_run_tool_never_raises() -> None:
    tools = default_tools()
    assert run_tool(tools, "Calculator ", "12 * 7") == "84"
    assert run_tool(tools, "calculator", "__import__('os')").startswith("Error: a function call")
    assert run_tool(tools, "search", "cats").startswith("Error: unknown tool 'search'")
    assert run_tool(tools, "convert", "nonsense").startswith("Error: expected")
    assert set(tools) == {"calculator", "convert", "date", "currency"}
