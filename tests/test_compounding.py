"""What makes nights compound: paired comparisons, the paired gate, the champion's own
attempts and the night's training mix. Pure or on real generated rows; no model needed
except a scripted one for the attempts (the loop, tools and verification are the real ones).
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.react_format import render_action, render_final
from agent.tools import default_tools
from evolora.settings import DataSettings
from tasks.data.generate import generate_examples
from tasks.data.skills import LEVELS
from tasks.harvest.mix import compose_mix, mix_metrics
from tasks.harvest.self_attempts import (
    FALLBACK_SOURCE,
    SELF_SOURCE,
    attempt_pool,
    attempt_problems,
    yield_metrics,
)
from tasks.paired import (
    GROUP_LEVELS,
    compare_by_group,
    compare_paired,
    groups_from_ids,
    is_cell,
    problem_groups,
)
from tasks.registry import gate

# --- paired comparisons -------------------------------------------------------------------


def outcomes(bits: str, prefix: str = "p") -> dict[str, bool]:
    return {f"{prefix}{i:03d}": bit == "1" for i, bit in enumerate(bits)}


def test_paired_difference_counts_discordant_problems_and_brackets_the_difference() -> None:
    a = outcomes("1" * 50 + "0" * 50)
    b = outcomes("1" * 45 + "0" * 5 + "1" * 20 + "0" * 30)  # lost 5, won 20
    c = compare_paired(a, b)
    assert (c.n, c.a_correct, c.b_correct, c.won, c.lost) == (100, 50, 65, 20, 5)
    assert c.delta == pytest.approx(0.15)
    assert c.low < 0.15 < c.high and c.significantly_better and not c.significantly_worse
    assert c.describe().startswith("+0.150 [+0.0") and c.describe().endswith(
        "(20 won, 5 lost of 100)")


def test_identical_candidates_are_not_significantly_different_even_with_no_discord() -> None:
    a = outcomes("10" * 20)
    c = compare_paired(a, dict(a))
    assert c.delta == 0.0 and c.low < 0.0 < c.high  # never a zero-width interval
    assert not c.significantly_better and not c.significantly_worse


def test_a_few_discordant_problems_are_noise_many_are_not() -> None:
    base = outcomes("0" * 40)
    assert not compare_paired(base, outcomes("1" * 2 + "0" * 38)).significantly_better
    assert compare_paired(base, outcomes("1" * 12 + "0" * 28)).significantly_better


def test_candidates_on_different_problems_cannot_be_paired() -> None:
    with pytest.raises(ValueError, match="same test set"):
        compare_paired(outcomes("1", "x"), outcomes("1", "y"))
    with pytest.raises(ValueError, match="not scored for both"):
        compare_paired(outcomes("11"), outcomes("1"), ids=["p000", "p001"])


def test_groups_follow_the_problem_ids_skill_and_level() -> None:
    ids = ["test-units-easy-aa", "test-units-hard-bb", "test-dates-hard-cc", "odd-id"]
    groups = groups_from_ids(ids)
    assert groups["overall"] == ["odd-id", "test-units-easy-aa", "test-units-hard-bb",
                                 "test-dates-hard-cc"] or set(groups["overall"]) == set(ids)
    assert groups["hard"] == ["test-units-hard-bb", "test-dates-hard-cc"]
    assert groups["units"] == ["test-units-easy-aa", "test-units-hard-bb"]
    assert groups["dates_hard"] == ["test-dates-hard-cc"]
    rows = [{"id": i, "skill": i.split("-")[1], "level": i.split("-")[2]} for i in ids[:3]]
    assert problem_groups(rows)["units_easy"] == ["test-units-easy-aa"]


# --- the paired gate ----------------------------------------------------------------------


def _ids(skill: str, level: str, n: int) -> list[str]:
    return [f"test-{skill}-{level}-{i:04d}" for i in range(n)]


def _gate(champion: dict[str, bool], challenger: dict[str, bool]) -> Any:
    paired = compare_by_group(champion, challenger, groups_from_ids(champion))
    metrics = {"test_accuracy": sum(challenger.values()) / len(challenger)}
    champion_metrics = {"test_accuracy": sum(champion.values()) / len(champion)}
    return gate(metrics, champion_metrics, margin=0.0, tolerance=0.0, challenger="v2",
                champion="v1", paired=paired)


def test_the_paired_gate_promotes_a_better_challenger_and_says_by_how_much() -> None:
    ids = _ids("units", "easy", 40) + _ids("dates", "hard", 40)
    champion = {i: n % 2 == 0 for n, i in enumerate(ids)}
    challenger = {i: True for i in ids}
    decision = _gate(champion, challenger)
    assert decision.promote
    assert decision.reasons[0].startswith("test_accuracy 80/80 vs champion 40/80: +0.500 [")
    assert "no skill or level significantly worse" in decision.reasons[0]
    assert decision.deltas["test_accuracy_units"] == pytest.approx(0.5)


def test_the_paired_gate_refuses_a_skill_significantly_worse_even_when_overall_rises() -> None:
    units, dates = _ids("units", "easy", 40), _ids("dates", "hard", 40)
    champion = {**dict.fromkeys(units, True), **dict.fromkeys(dates, False)}
    # Dates gained 40, units lost 15: better overall, units significantly worse.
    challenger = {**{i: n >= 15 for n, i in enumerate(units)}, **dict.fromkeys(dates, True)}
    decision = _gate(champion, challenger)
    assert not decision.promote
    worse = [r for r in decision.reasons if "significantly worse" in r]
    assert any(r.startswith("units: -0.375 [") for r in worse), decision.reasons
    # A drop of two problems in one skill is noise: not a refusal.
    challenger = {**{i: n >= 2 for n, i in enumerate(units)}, **dict.fromkeys(dates, True)}
    assert _gate(champion, challenger).promote


def test_a_cell_worse_alone_is_reported_but_only_a_skill_or_level_refuses() -> None:
    assert GROUP_LEVELS == LEVELS and is_cell("units_hard") and not is_cell("units")
    units_easy, units_hard = _ids("units", "easy", 20), _ids("units", "hard", 20)
    dates_easy = _ids("dates", "easy", 40)
    champion = {**dict.fromkeys(units_easy, True), **dict.fromkeys(units_hard, False),
                **{i: n >= 10 for n, i in enumerate(dates_easy)}}
    # units_easy loses 8 of 20 (significant in its cell); units gains 12 of its hard cell
    # and the easy level gains 10 on dates: neither the skill nor the level is worse.
    challenger = {**{i: n >= 8 for n, i in enumerate(units_easy)},
                  **dict.fromkeys(units_hard, True), **dict.fromkeys(dates_easy, True)}
    decision = _gate(champion, challenger)
    assert decision.promote, decision.reasons
    [note] = [r for r in decision.reasons if r.startswith("units_easy: ")]
    assert "not gated, its skill is" in note and "(0 won, 8 lost of 20)" in note

    # The same cell loss with nothing gained in the skill: units itself is worse, refused.
    challenger.update(dict.fromkeys(units_hard, False))
    decision = _gate(champion, challenger)
    assert not decision.promote
    assert any(r.startswith("units: ") and "significantly worse" in r for r in decision.reasons)


def test_the_paired_gate_refuses_a_worse_challenger_overall() -> None:
    ids = _ids("units", "easy", 40)
    decision = _gate({i: True for i in ids}, {i: n > 0 for n, i in enumerate(ids)})
    assert not decision.promote
    assert "is below the margin of +0.000" in decision.reasons[0]


# --- the champion's own attempts ---------------------------------------------------------


class ScriptedEngine:
    """An engine whose replies come from a function of the prompt (what the champion
    would write); it records the temperatures it was asked for."""

    engine_name = "scripted"

    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.temperatures: list[float] = []

    def chat_prompt(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        return f"<q>{messages[-1]['content']}</q>{assistant_prefix}"

    def generate(self, prompts: list[str], max_new_tokens: int = 96,
                 stop: list[str] | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, adapter: str | None = None) -> list[str]:
        self.temperatures.append(temperature)
        return [self.reply(prompt) for prompt in prompts]


def _pool(per_skill: int = 2) -> list[dict[str, Any]]:
    data = DataSettings(skills=["units", "arithmetic"], self_problems_per_skill=per_skill)
    return attempt_pool(data, seed=3, held_out=[], tools=default_tools())


def test_the_pool_is_fresh_training_wording_problems_of_every_skill() -> None:
    pool = _pool(3)
    assert sorted({r["skill"] for r in pool}) == ["arithmetic", "units"]
    assert len(pool) == 6 and all(r["id"].startswith("train-") for r in pool)
    again = attempt_pool(DataSettings(skills=["units", "arithmetic"],
                                      self_problems_per_skill=3),
                         seed=3, held_out=[pool[0]["question"]], tools=default_tools())
    assert pool[0]["question"] not in {r["question"] for r in again}


def test_verified_attempts_become_rows_and_failed_problems_keep_the_program_trace() -> None:
    pool = _pool()
    units = {r["question"]: r for r in pool if r["skill"] == "units"}

    def reply(prompt: str) -> str:
        question = prompt[3:prompt.index("</q>")]
        row = units.get(question)
        if row is None:  # the arithmetic problems: a confident wrong answer
            return render_final("I know it.", "12345")
        call = row["tool_calls"][0]
        if "Observation:" not in prompt:
            return render_action("My own way.", call["tool"], call["argument"]).rstrip()
        return render_final("Got it.", row["answer"])

    engine = ScriptedEngine(reply)
    rows, report = attempt_problems(engine, "champ", pool, attempts=3, temperature=0.8,
                                    max_new_tokens=32, tools=default_tools(), champion="champ")
    assert set(engine.temperatures) == {0.8}
    assert report.attempts == 3 * len(pool)
    by_source = {r["question"]: r["source"] for r in rows}
    easy_units = [q for q, r in units.items() if r["level"] == "easy"]
    for question in easy_units:  # one call: the champion's own trace, its own thought
        assert by_source[question] == SELF_SOURCE
        own = next(r for r in rows if r["question"] == question)
        assert "My own way." in own["messages"][-1]["content"]
    arithmetic = [r["question"] for r in pool if r["skill"] == "arithmetic"]
    assert all(by_source[q] == FALLBACK_SOURCE for q in arithmetic)
    assert report.solved.get("arithmetic_easy", 0) == 0
    assert report.yield_of("units_easy") == 1.0
    metrics = yield_metrics(report)
    assert metrics["self_rows"] == report.self_rows and metrics["self_attempts"] == 12
    assert metrics["self_yield_arithmetic_easy"] == 0.0


def test_an_attempt_whose_observation_was_invented_is_not_a_row() -> None:
    pool = [r for r in _pool(1) if r["skill"] == "units"]
    row = pool[0]
    call = row["tool_calls"][0]

    def reply(prompt: str) -> str:
        # The right answer, but with no tool call behind it: nothing to verify.
        return render_final("Trust me.", row["answer"])

    rows, report = attempt_problems(ScriptedEngine(reply), "c", pool, attempts=2,
                                    temperature=0.7, max_new_tokens=32, tools=default_tools(),
                                    champion="c")
    assert report.self_rows == 0 and rows[0]["source"] == FALLBACK_SOURCE
    assert call["tool"] in rows[0]["messages"][-1]["content"]  # the program's trace


# --- the mix ------------------------------------------------------------------------------


def _rows(skill: str, n: int, seed: int, source: str = "synthetic") -> list[dict[str, Any]]:
    rows, _ = generate_examples(skill, n, split="train", seed=seed, hard_fraction=0.5)
    return [{**r, "source": source} for r in rows]


def test_each_source_keeps_to_its_share_and_templates_fill_the_rest() -> None:
    template = _rows("units", 40, 1)
    harvested = _rows("dates", 30, 2, "harvested")
    pool = _rows("percent", 30, 3, "self")
    replay = _rows("currency", 30, 4)
    data = DataSettings(self_max_share=0.25, harvest_max_share=0.1, replay_share=0.2)
    rows, report = compose_mix(template + harvested, pool, replay, data, seed=0)
    assert report.rows == len(rows) == 40  # the night's size: its template rows
    assert report.by_source == {"self": 10, "harvested": 4, "replay": 8, "template": 18}
    assert report.capped == {"self": 20, "harvested": 26, "replay": 22, "template": 22}
    assert report.shares["self"] == 0.25
    assert set(report.diversity) == {"distinct_2", "distinct_3", "distinct_questions",
                                     "distinct_traces", "cell_evenness"}
    assert 0 < report.diversity["cell_evenness"] <= 1
    assert mix_metrics(report)["mix_rows_replay"] == 8.0
    # Same inputs, same mix.
    assert compose_mix(template + harvested, pool, replay, data, seed=0)[0] == rows


def test_replay_and_pool_rows_never_repeat_tonights_questions() -> None:
    template = _rows("units", 20, 1)
    data = DataSettings(self_max_share=0.3, replay_share=0.3)
    rows, report = compose_mix(template, template[:5], template[5:10], data, seed=1)
    assert report.by_source["self"] == 0 and report.by_source["replay"] == 0
    assert len({r["question"] for r in rows}) == len(rows)


def test_shares_that_leave_no_room_for_templates_are_a_config_error() -> None:
    with pytest.raises(ValueError, match="must add up to less than 1"):
        DataSettings(self_max_share=0.5, harvest_max_share=0.3, replay_share=0.2)
