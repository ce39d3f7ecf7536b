"""The initial population: who is trained on what, so cross-over has something to combine.

Member 0 is a generalist trained on every skill; the others are specialists, each trained
on one group of skills (as LoraHub composes task adapters). Seeds and ranks differ so the
population starts diverse; `population_diversity` in the cycle's record shows how much.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from evolora.settings import Settings


@dataclass(frozen=True)
class MemberSpec:
    """How one initial member is trained."""

    id: str
    skills: list[str]
    seed: int
    rank: int
    role: str  # "generalist" or "specialist"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def skill_groups(skills: list[str], n_groups: int) -> list[list[str]]:
    """`skills` dealt into `n_groups` contiguous groups of near-equal size."""
    n_groups = max(1, min(n_groups, len(skills)))
    size, extra = divmod(len(skills), n_groups)
    groups, start = [], 0
    for index in range(n_groups):
        end = start + size + (1 if index < extra else 0)
        groups.append(skills[start:end])
        start = end
    return groups


def seed_population(settings: Settings) -> list[MemberSpec]:
    """One generalist, then specialists over skill groups, with distinct seeds."""
    skills = list(settings.data.skills)
    size = settings.evolution.population_size
    rank = settings.train.rank
    specs = [MemberSpec("g0-m0", skills, settings.train.seed, rank, "generalist")]
    groups = skill_groups(skills, size - 1)
    for index in range(1, size):
        group = groups[(index - 1) % len(groups)]
        specs.append(MemberSpec(f"g0-m{index}", group, settings.train.seed + index, rank,
                                "specialist"))
    return specs


def rows_for_skills(rows: Any, skills: list[str]) -> Any:
    """The training rows of the given skills (a `datasets.Dataset` filter)."""
    wanted = set(skills)
    return rows.filter(lambda row: row["skill"] in wanted)
