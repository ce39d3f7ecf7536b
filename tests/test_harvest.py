"""Harvest: real traces in a real SQLite store become verified rows, formatted as synthetic ones."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.react_format import SYSTEM_PROMPT
from agent.tools import default_tools, run_tool
from evolora.settings import DataSettings
from storage.store import Store
from tasks.data import dataset_hash, validate_row, verify_example
from tasks.harvest.traces import HARVEST_SOURCE, harvest_traces, mix_with_synthetic

TOOLS = default_tools()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'evolora.db'}")
    yield store
    store.close()


def step(tool: str, argument: str, thought: str = "I should use a tool.",
         observation: str | None = None) -> dict[str, str]:
    """One recorded agent step; the observation is what the real tool says unless given."""
    seen = run_tool(TOOLS, tool, argument) if observation is None else observation
    return {"thought": thought, "tool": tool, "argument": argument, "observation": seen}


def record(store: Store, question: str, steps: list[dict[str, str]], answer: str | None,
           *, user: str = "alice", error: str | None = None,
           feedback: int | None = None) -> str:
    trace_id = store.record_trace(user_id=user, session_id=None, question=question,
                                  steps=steps, final_answer=answer, error=error,
                                  adapter_version="7")
    if feedback is not None:
        store.set_feedback(user, trace_id, feedback)
    return trace_id


def seed_traces(store: Store) -> dict[str, str]:
    ids = {
        "calc": record(store, "What is 12 * 7?", [step("calculator", "12 * 7")], "84"),
        "convert_liked": record(store, "How far is 12 km in miles?",
                                [step("convert", "12 km to mi")], "7.46 mi", feedback=1),
        "two_steps": record(store, "Three tickets at 20 USD each, how much in EUR?",
                            [step("calculator", "3 * 20"), step("currency", "60 USD to EUR")],
                            "55.2 EUR", user="bob"),
        "disliked": record(store, "What is 9 * 9?", [step("calculator", "9 * 9")], "81",
                           feedback=-1),
        "failed": record(store, "What is 5 / 0?", [step("calculator", "5 / 0")], None,
                         error="step limit reached without a Final Answer"),
        "tampered": record(store, "What is 100 - 58?",
                           [step("calculator", "100 - 58", observation="40")], "40"),
        "no_tools": record(store, "What is my dog's name?", [], "Rex", feedback=1),
        "duplicate": record(store, "what is 12 * 7", [step("calculator", "12 * 7")], "84"),
    }
    return ids


def test_successful_and_liked_traces_become_valid_verified_rows(store: Store) -> None:
    ids = seed_traces(store)
    rows, report = harvest_traces(store, since=None, max_rows=100, tools=TOOLS)

    by_question = {row["question"]: row for row in rows}
    # Of two duplicates the newer one is kept.
    assert set(by_question) == {"what is 12 * 7", "How far is 12 km in miles?",
                                "Three tickets at 20 USD each, how much in EUR?"}
    for row in rows:
        assert validate_row(row) == []
        assert verify_example(row, TOOLS) is None
        assert set(row) == {"id", "skill", "level", "question", "answer", "messages",
                            "tool_calls", "source"}
        assert row["source"] == HARVEST_SOURCE
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][0]["content"] == SYSTEM_PROMPT
    two = by_question["Three tickets at 20 USD each, how much in EUR?"]
    assert (two["level"], two["skill"], two["answer"]) == ("hard", "currency", "55.2")
    assert "Observation: 60\n" in two["messages"][-1]["content"]
    assert by_question["what is 12 * 7"]["level"] == "easy"
    assert by_question["How far is 12 km in miles?"]["skill"] == "units"

    # The thumbs-up trace is kept first; every other trace is accounted for by reason.
    assert rows[0]["question"] == "How far is 12 km in miles?"
    assert report["traces"] == 8 and report["kept"] == 3 and report["kept_positive"] == 1
    assert report["dropped"] == {"negative feedback": 1, "failed": 1,
                                 "observation mismatch": 1,
                                 "no tool calls (unverifiable)": 1, "exact duplicate": 1}
    assert ids["convert_liked"] in report["trace_ids"]
    assert ids["tampered"] not in report["trace_ids"]
    assert report["kept_by_level"] == {"easy": 2, "hard": 1}
    assert dataset_hash(rows) == dataset_hash(harvest_traces(store, since=None, max_rows=100,
                                                             tools=TOOLS)[0])


def test_since_cap_and_held_out(store: Store) -> None:
    seed_traces(store)
    rows, report = harvest_traces(store, since=None, max_rows=2, tools=TOOLS)
    assert len(rows) == 2 and report["dropped"]["over max_rows"] == 1
    assert rows[0]["question"] == "How far is 12 km in miles?"  # liked ones survive the cap

    held, held_report = harvest_traces(store, since=None, max_rows=100, tools=TOOLS,
                                       held_out=["What is 12 * 7?"])
    assert "What is 12 * 7?" not in {row["question"] for row in held}
    assert held_report["dropped"]["overlaps a held-out split"] == 2  # and its duplicate

    watermark = report["watermark"]
    assert harvest_traces(store, since=watermark, max_rows=100, tools=TOOLS)[0] == []
    later = record(store, "Convert 5 kg to lb.", [step("convert", "5 kg to lb")], "11.02 lb")
    new_rows, new_report = harvest_traces(store, since=watermark, max_rows=100, tools=TOOLS)
    assert [row["question"] for row in new_rows] == ["Convert 5 kg to lb."]
    assert new_report["trace_ids"] == [later]


def test_tool_errors_and_unverifiable_answers_are_dropped(store: Store) -> None:
    record(store, "Divide 5 by 0.", [step("calculator", "5 / 0")], "infinity")
    record(store, "What is 6 * 7?", [step("calculator", "6 * 7")], "about forty")
    record(store, "Weird step", [{"tool": "calculator"}], "1")  # type: ignore[list-item]
    rows, report = harvest_traces(store, since=None, max_rows=10, tools=TOOLS)
    assert rows == []
    assert report["dropped"] == {"tool error": 1, "ungrounded answer": 1,
                                 "malformed steps": 1}


def test_mix_caps_the_harvested_share() -> None:
    synthetic = [_row(f"synthetic question number {i} about apples") for i in range(8)]
    harvested = [_row(f"harvested question {i} on pears and plums") for i in range(10)]
    mixed = mix_with_synthetic(synthetic, harvested, max_share=0.2)
    assert mixed[:8] == synthetic and len(mixed) == 10  # 2 / 10 = 20%
    assert len(mix_with_synthetic(synthetic, harvested, max_share=0.0)) == 8
    assert len(mix_with_synthetic(synthetic, harvested, max_share=1.0)) == 18
    assert len(mix_with_synthetic(synthetic, harvested[:1], max_share=0.5)) == 9
    # A harvested row repeating a synthetic question does not enter the mix.
    copy = _row("synthetic question number 3 about apples")
    assert mix_with_synthetic(synthetic, [copy], max_share=0.5) == synthetic
    with pytest.raises(ValueError, match="max_share"):
        mix_with_synthetic(synthetic, harvested, max_share=1.5)


def _row(question: str) -> dict[str, Any]:
    return {"id": question, "skill": "arithmetic", "level": "easy", "question": question,
            "answer": "1", "messages": [{"role": "assistant", "content": "x"}],
            "tool_calls": [], "source": "synthetic"}


def test_a_poisoning_user_cannot_fill_the_harvest(store: Store) -> None:
    """One key floods the store with self-rated traces; the harvest takes at most
    max_per_user of them, and every user's best row comes before anyone's second, so the
    share the mix takes from the front is spread over the users."""
    user_of = {}
    for index in range(2, 32):  # 30 verified traces, each rated +1 by its own author
        trace = record(store, f"What is {index} * 7?", [step("calculator", f"{index} * 7")],
                       str(index * 7), user="mallory", feedback=1)
        user_of[trace] = "mallory"
    for user, start in (("alice", 100), ("bob", 200), ("carol", 300)):
        for index in range(start, start + 3):
            trace = record(store, f"How much is {index} + 1?",
                           [step("calculator", f"{index} + 1")], str(index + 1), user=user)
            user_of[trace] = user

    def users(rows: list[dict[str, Any]]) -> list[str]:
        return [user_of[row["id"].rsplit("-", 1)[1]] for row in rows]

    rows, report = harvest_traces(store, since=None, max_rows=100, tools=TOOLS,
                                  max_per_user=5)
    assert Counter(users(rows)) == {"mallory": 5, "alice": 3, "bob": 3, "carol": 3}
    assert report["dropped"]["over harvest_max_per_user"] == 25
    assert report["kept_users"] == 4
    assert sorted(users(rows)[:4]) == ["alice", "bob", "carol", "mallory"]  # one round each
    # The mix takes harvested rows from the front: 4 of them means one per user.
    synthetic = [_row(f"synthetic question number {i} about apples") for i in range(12)]
    mixed = mix_with_synthetic(synthetic, rows, max_share=0.25)
    assert sorted(users(mixed[12:])) == ["alice", "bob", "carol", "mallory"]

    # The operator's switch: an allow-list, or nobody.
    listed, listed_report = harvest_traces(store, since=None, max_rows=100, tools=TOOLS,
                                           users=["alice", "bob"])
    assert set(users(listed)) == {"alice", "bob"}
    assert listed_report["dropped"]["user not in data.harvest_users"] == 33
    none, none_report = harvest_traces(store, since=None, max_rows=100, tools=TOOLS,
                                       users="none")
    assert none == [] and none_report["dropped"] == {"user not in data.harvest_users": 39}
    everyone, _ = harvest_traces(store, since=None, max_rows=100, tools=TOOLS, users="all")
    # Without max_per_user the operator's default applies (50: all 30 here).
    assert Counter(users(everyone))["mallory"] == min(30, DataSettings().harvest_max_per_user)
    with pytest.raises(ValueError, match="max_per_user"):
        harvest_traces(store, since=None, max_rows=100, tools=TOOLS, max_per_user=0)
    with pytest.raises(ValueError, match="users must be"):
        harvest_traces(store, since=None, max_rows=100, tools=TOOLS, users="alice")
