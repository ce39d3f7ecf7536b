"""Paired comparisons of two candidates scored on the same problems, with 95% intervals.

At 60 problems one question is 1.7 points and two runs of one config have differed by 7
questions: two accuracies read side by side are mostly noise. What is informative is how
many problems one candidate solves that the other does not (the discordant pairs), so every
comparison a person reads is made here, problem by problem:

    compare_paired(champion_outcomes, challenger_outcomes)
    -> +0.050 [+0.008, +0.092] (15 won, 3 lost of 240)

The interval is Bonett and Price's adjusted Wald interval for a difference of paired
proportions (2012): one pseudo-count added to each discordant cell, which keeps it honest
when only a few problems differ (the plain Wald interval has zero width at zero discordant
pairs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

Z_95 = 1.959964
OVERALL_GROUP = "overall"
# The levels generated problem ids carry (`tasks.data.skills.LEVELS`, kept apart so this
# module stays free of the data layer).
GROUP_LEVELS = ("easy", "hard")


@dataclass(frozen=True)
class PairedComparison:
    """Candidate B against candidate A on the same `n` problems."""

    label: str
    n: int
    a_correct: int
    b_correct: int
    # Problems B solves and A does not, and the other way round.
    won: int
    lost: int
    delta: float
    low: float
    high: float

    @property
    def significantly_better(self) -> bool:
        return self.low > 0.0

    @property
    def significantly_worse(self) -> bool:
        return self.high < 0.0

    def describe(self) -> str:
        """`units: +0.050 [-0.021, +0.121] (4 won, 2 lost of 40)`."""
        name = "" if self.label == OVERALL_GROUP else f"{self.label}: "
        return (f"{name}{self.delta:+.3f} [{self.low:+.3f}, {self.high:+.3f}] "
                f"({self.won} won, {self.lost} lost of {self.n})")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare_paired(a: Mapping[str, bool], b: Mapping[str, bool],
                   label: str = OVERALL_GROUP, ids: Iterable[str] | None = None
                   ) -> PairedComparison:
    """B against A on the problems both were scored on (or on `ids`, which both must have).

    Raises ValueError when they share no problem: candidates scored on different test sets
    cannot be compared pairwise.
    """
    shared = sorted(set(a) & set(b)) if ids is None else list(ids)
    missing = [i for i in shared if i not in a or i not in b]
    if missing:
        raise ValueError(f"{len(missing)} problem(s) of {label!r} were not scored for both "
                         f"candidates (e.g. {missing[0]}); score both on the same test set")
    if not shared:
        raise ValueError(f"no problem of {label!r} was scored for both candidates; score "
                         "both on the same test set")
    n = len(shared)
    won = sum(bool(b[i]) and not a[i] for i in shared)
    lost = sum(bool(a[i]) and not b[i] for i in shared)
    p_won, p_lost = (won + 1) / (n + 2), (lost + 1) / (n + 2)
    centre = p_won - p_lost
    spread = Z_95 * math.sqrt(max(p_won + p_lost - centre ** 2, 0.0) / (n + 2))
    return PairedComparison(
        label=label, n=n, a_correct=sum(bool(a[i]) for i in shared),
        b_correct=sum(bool(b[i]) for i in shared), won=won, lost=lost,
        delta=(won - lost) / n, low=max(-1.0, centre - spread), high=min(1.0, centre + spread))


def is_cell(label: str) -> bool:
    """Whether a group label is a skill x level cell (`units_hard`), not a skill or level."""
    skill, _, level = label.rpartition("_")
    return bool(skill) and level in GROUP_LEVELS


def problem_groups(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Problem ids by the groups scores are reported in: overall, each level, each skill,
    each skill x level (labels as in the metric keys: `hard`, `units`, `units_hard`)."""
    groups: dict[str, list[str]] = {OVERALL_GROUP: []}
    for row in rows:
        problem = str(row["id"])
        for label in (OVERALL_GROUP, row["level"], row["skill"],
                      f"{row['skill']}_{row['level']}"):
            groups.setdefault(str(label), []).append(problem)
    return groups


def compare_by_group(a: Mapping[str, bool], b: Mapping[str, bool],
                     groups: Mapping[str, list[str]]) -> dict[str, PairedComparison]:
    """`compare_paired` for every group whose problems both candidates were scored on."""
    return {label: compare_paired(a, b, label, ids) for label, ids in groups.items()
            if ids and all(i in a and i in b for i in ids)}


def groups_from_ids(ids: Iterable[str]) -> dict[str, list[str]]:
    """`problem_groups` for problem ids alone: generated ids read `<split>-<skill>-<level>-
    <digest>` (`tasks.data.generate.example_row`); ids of another form join `overall` only."""
    rows = []
    groups: dict[str, list[str]] = {OVERALL_GROUP: []}
    for problem in ids:
        parts = problem.split("-")
        if len(parts) == 4 and parts[2] in GROUP_LEVELS:
            rows.append({"id": problem, "skill": parts[1], "level": parts[2]})
        else:
            groups[OVERALL_GROUP].append(problem)
    for label, members in problem_groups(rows).items():
        groups.setdefault(label, []).extend(members)
    return groups
